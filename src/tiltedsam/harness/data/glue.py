"""GLUE (Wang et al., 2018) from its official TSV files in a local folder, and each task's official metric.

Nothing is downloaded: ``data_dir`` is the folder ``download_glue_data.py`` / the GLUE website produce,
with one sub-folder per task (``CoLA``, ``SST-2``, ``MRPC``, ``QQP``, ``STS-B``, ``MNLI``, ``QNLI``, ``RTE``,
``WNLI``; the task's own folder may also be given directly). Layouts read (tab-separated, no quoting):

==========  ==========================================  =======================  =====================
task        files                                       text columns             label column / values
==========  ==========================================  =======================  =====================
CoLA        train.tsv, dev.tsv (**no header**)          4th column               2nd column: 0, 1
SST-2       train.tsv, dev.tsv                          sentence                 label: 0, 1
MRPC        train.tsv, dev.tsv                          #1 String, #2 String     Quality: 0, 1
QQP         train.tsv, dev.tsv                          question1, question2     is_duplicate: 0, 1
STS-B       train.tsv, dev.tsv                          sentence1, sentence2     score: float in [0, 5]
MNLI        train.tsv, dev_matched.tsv,                 sentence1, sentence2     gold_label: contradiction,
            dev_mismatched.tsv                                                   entailment, neutral
QNLI        train.tsv, dev.tsv                          question, sentence       label: entailment,
                                                                                 not_entailment
RTE         train.tsv, dev.tsv                          sentence1, sentence2     label: as QNLI
WNLI        train.tsv, dev.tsv                          sentence1, sentence2     label: 0, 1
==========  ==========================================  =======================  =====================

The official test files carry no labels, so the labelled ``dev`` split serves as the test set (the usual
practice for GLUE dev-set results) and validation is carved from ``train``. QQP's train file has a few
malformed rows (wrong number of fields); they are skipped and counted.

Official metrics (:func:`glue_metric`): Matthews correlation for CoLA; Pearson and Spearman correlation
for STS-B; F1 (positive class 1) and accuracy for MRPC and QQP; accuracy for SST-2, MNLI (matched and
mismatched dev sets, reported separately), QNLI, RTE and WNLI.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .splits import DataSplits, InMemoryDataset, _reject_options, _Request, _require_data_dir

__all__ = ["GLUE_TASKS", "GlueTask", "GlueSplit", "read_glue", "glue_metric", "matthews_corrcoef",
           "binary_f1", "pearson", "spearman"]


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on disk and scored."""

    folder: str
    text_columns: tuple[str | int, ...]  # header names, or positions for header-less files
    label_column: str | int
    labels: tuple[str, ...] | None  # class names in label-index order; None: regression
    metric: str  # "mcc" | "accuracy" | "f1_accuracy" | "pearson_spearman"
    header: bool = True
    dev_files: tuple[str, ...] = ("dev.tsv",)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", (3,), 1, ("0", "1"), "mcc", header=False),
    "sst2": GlueTask("SST-2", ("sentence",), "label", ("0", "1"), "accuracy"),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1_accuracy"),
    "qqp": GlueTask("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), "f1_accuracy"),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), "score", None, "pearson_spearman"),
    "mnli": GlueTask("MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
                     "accuracy", dev_files=("dev_matched.tsv", "dev_mismatched.tsv")),
    "qnli": GlueTask("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), "accuracy"),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), "accuracy"),
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), "accuracy"),
}


@dataclass
class GlueSplit:
    """One TSV file of a task: texts (one tuple of 1 or 2 strings per example) and labels.

    ``labels`` is ``int64`` class indices, or ``float32`` scores for STS-B. ``skipped`` counts malformed rows.
    """

    examples: list[tuple[str, ...]]
    labels: torch.Tensor
    skipped: int = 0


def _task(task: str) -> GlueTask:
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[task]


def _task_folder(data_dir: Path, spec: GlueTask) -> Path:
    for folder in (data_dir / spec.folder, data_dir):
        if (folder / "train.tsv").is_file():
            return folder
    raise ValueError(f"data_dir {str(data_dir)!r} holds no {spec.folder}/train.tsv (nor train.tsv itself); "
                     f"expected the official GLUE layout with one folder per task")


from .hostile import read_tsv_rows  # noqa: E402


def _read_tsv(path: Path, spec: GlueTask) -> GlueSplit:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = read_tsv_rows(handle, path)  # a field over csv's limit, bad bytes: one line naming the file
    if not rows:
        raise ValueError(f"{path} is empty")
    if spec.header:
        header, rows = rows[0], rows[1:]
        wanted = [*spec.text_columns, spec.label_column]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {missing}; found {header}")
        # MNLI's header has label1..label5 before gold_label: the named column is the last of that name
        positions = [len(header) - 1 - header[::-1].index(c) for c in wanted]
        width = len(header)
    else:
        positions = [int(c) for c in (*spec.text_columns, spec.label_column)]
        width = len(rows[0])
    examples: list[tuple[str, ...]] = []
    labels: list[Any] = []
    skipped = 0
    for row in rows:
        if len(row) != width:
            skipped += 1
            continue
        *texts, label = (row[p] for p in positions)
        if spec.is_regression:
            try:
                value = float(label)
            except ValueError:
                skipped += 1
                continue
            labels.append(value)
        else:
            if label not in spec.labels:
                raise ValueError(f"{path}: label {label!r} is not one of {list(spec.labels)}")
            labels.append(spec.labels.index(label))
        examples.append(tuple(texts))
    if not examples:
        raise ValueError(f"{path} holds no readable example ({skipped} malformed rows)")
    dtype = torch.float32 if spec.is_regression else torch.long
    return GlueSplit(examples, torch.tensor(labels, dtype=dtype), skipped)


def read_glue(task: str, data_dir: str | os.PathLike) -> dict[str, GlueSplit]:
    """Read a GLUE task's labelled files: ``{"train": ..., "dev": ...}``; MNLI gives ``"dev_matched"``
    and ``"dev_mismatched"`` instead of ``"dev"``."""
    spec = _task(task)
    folder = _task_folder(Path(data_dir), spec)
    out = {"train": _read_tsv(folder / "train.tsv", spec)}
    for name in spec.dev_files:
        if not (folder / name).is_file():
            raise ValueError(f"{folder} lacks {name} (the labelled dev split of {spec.folder})")
        out[name.removesuffix(".tsv")] = _read_tsv(folder / name, spec)
    return out


# --------------------------------------------------------------------------------------------------
# Official metrics
# --------------------------------------------------------------------------------------------------


def _as_arrays(predictions: Sequence[float], labels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions, dtype=np.float64).reshape(-1), np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"predictions and labels must be non-empty and equally long, got {p.size} and {y.size}")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("predictions and labels must be finite")
    return p, y


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Binary Matthews correlation ``(TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))`` (CoLA's metric).

    0 when a factor of the denominator is 0 (all predictions or all labels in one class), as scikit-learn.
    """
    p, y = _as_arrays(predictions, labels)
    tp = float(np.sum((p == 1) & (y == 1)))
    tn = float(np.sum((p == 0) & (y == 0)))
    fp = float(np.sum((p == 1) & (y == 0)))
    fn = float(np.sum((p == 0) & (y == 1)))
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / math.sqrt(denominator)


def binary_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class 1: ``2 TP / (2 TP + FP + FN)`` (0 when there is no positive at all)."""
    p, y = _as_arrays(predictions, labels)
    tp = float(np.sum((p == 1) & (y == 1)))
    wrong = float(np.sum(p != y))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + wrong)


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation ``cov(p, y) / (σ_p σ_y)``; NaN when either is constant."""
    p, y = _as_arrays(predictions, labels)
    p, y = p - p.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(p, p)) * float(np.dot(y, y)))
    return float("nan") if denominator == 0 else float(np.dot(p, y)) / denominator


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman correlation: the Pearson correlation of the (tie-averaged) ranks."""
    p, y = _as_arrays(predictions, labels)
    return pearson(_ranks(p), _ranks(y))


def glue_metric(task: str, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """The official metric(s) of ``task`` for predicted classes (or STS-B scores) against the labels.

    Returns ``{"mcc"}`` (CoLA), ``{"pearson", "spearman", "combined"}`` (STS-B; combined = their mean),
    ``{"f1", "accuracy", "combined"}`` (MRPC, QQP) or ``{"accuracy"}`` (the rest; for MNLI call it once
    per dev set, matched and mismatched).
    """
    spec = _task(task)
    p, y = _as_arrays(predictions, labels)
    if spec.metric == "mcc":
        return {"mcc": matthews_corrcoef(p, y)}
    if spec.metric == "pearson_spearman":
        r, rho = pearson(p, y), spearman(p, y)
        return {"pearson": r, "spearman": rho, "combined": (r + rho) / 2}
    accuracy = float(np.mean(p == y))
    if spec.metric == "f1_accuracy":
        f1 = binary_f1(p, y)
        return {"f1": f1, "accuracy": accuracy, "combined": (f1 + accuracy) / 2}
    return {"accuracy": accuracy}


# --------------------------------------------------------------------------------------------------
# Harness loader: data.name = "glue", data.options.task = ...
# --------------------------------------------------------------------------------------------------


def _load_glue(request: _Request, *, task: str | None = None, tokenizer: str = "minilm", seq_len: int = 128,
               mnli_dev: str = "matched", **options: Any) -> DataSplits:
    """``tokenizer``: ``"minilm"`` (the bundled WordPiece tokenizer) or a local Hugging Face model directory
    whose own tokenizer is used (the same directory as ``model.options.path``). STS-B is a regression
    task: float labels, ``info["regression"]``, one model output. MNLI's other dev set (mismatched when
    ``mnli_dev = "matched"``) is attached as ``extra_eval`` and scored beside the test set."""
    from .text import _assemble_wordpiece

    _reject_options(request.name, options)
    if task is None:
        raise ValueError(f"dataset 'glue' needs the option task (one of {sorted(GLUE_TASKS)}), e.g. "
                         "--set data.options.task=sst2")
    spec = _task(task)
    if mnli_dev not in ("matched", "mismatched"):
        raise ValueError(f"mnli_dev must be 'matched' or 'mismatched', got {mnli_dev!r}")
    if spec.is_regression and request.label_noise:
        raise ValueError(f"label_noise = {request.label_noise} is not defined for the regression task 'stsb'; use 0")
    if seq_len < 4:
        raise ValueError(f"seq_len must be >= 4 ([CLS], [SEP] and text), got {seq_len}")
    splits = read_glue(task, _require_data_dir(request))
    dev = splits[f"dev_{mnli_dev}"] if task == "mnli" else splits["dev"]
    extra_info = {"glue_task": task, "glue_metric": spec.metric,
                  "test_split": "dev" if task != "mnli" else f"dev_{mnli_dev}",
                  "skipped_rows": {"train": splits["train"].skipped, "dev": dev.skipped}}
    if tokenizer == "minilm" and not spec.is_regression:
        out = _assemble_wordpiece(
            request, splits["train"].examples, splits["train"].labels, num_classes=len(spec.labels),
            class_names=list(spec.labels), source=f"GLUE {spec.folder} TSV files in {request.data_dir}",
            seq_len=seq_len, test_examples=dev.examples, test_labels=dev.labels, extra_info=extra_info)
        encode = None
    else:
        out, encode = _assemble_tokenized(request, spec, splits["train"], dev, tokenizer, seq_len, extra_info)
    if task == "mnli":
        other = "mismatched" if mnli_dev == "matched" else "matched"
        extra = splits[f"dev_{other}"]
        if request.limit is not None:
            extra = GlueSplit(extra.examples[: request.limit], extra.labels[: request.limit])
        inputs = encode(extra.examples) if encode is not None else _minilm_encode(extra.examples, seq_len)
        out.extra_eval = {f"test_{other}": InMemoryDataset(inputs, extra.labels)}
    return out


def _minilm_encode(examples: list[tuple[str, ...]], seq_len: int) -> torch.Tensor:
    from .text import encode_wordpiece

    return encode_wordpiece(examples, seq_len)


def _assemble_tokenized(request: _Request, spec: GlueTask, train: GlueSplit, dev: GlueSplit, tokenizer: str,
                        seq_len: int, extra_info: dict[str, Any]) -> tuple[DataSplits, Any]:
    """Split on row positions (as every loader), encode each split with ``tokenizer`` (``"minilm"`` or a
    model directory), and for regression put the float scores back as labels."""
    from .splits import _assemble

    if tokenizer == "minilm":
        from ..minilm import load_minilm_tokenizer

        encoder, tokenizer_path = load_minilm_tokenizer(), None
    else:
        from ..pretrained import load_tokenizer

        encoder, tokenizer_path = load_tokenizer(tokenizer), str(tokenizer)

    def encode(examples: list[tuple[str, ...]]) -> torch.Tensor:
        if not examples:
            return torch.zeros(0, seq_len, dtype=torch.long)
        first = [e[0] for e in examples]
        second = [e[1] for e in examples] if len(examples[0]) > 1 else None
        encoded = encoder(first, second, padding="max_length", truncation=True, max_length=seq_len,
                          return_tensors="pt", return_token_type_ids=False, return_attention_mask=False)
        return encoded["input_ids"].to(torch.long)

    regression = spec.is_regression
    labels = torch.zeros(len(train.labels), dtype=torch.long) if regression else train.labels
    dev_labels = torch.zeros(len(dev.labels), dtype=torch.long) if regression else dev.labels
    splits = _assemble(
        request, pool_inputs=torch.arange(len(train.examples)).unsqueeze(1), pool_labels=labels,
        num_classes=2 if regression else len(spec.labels), class_names=["score"] if regression else list(spec.labels),
        source=f"GLUE {spec.folder} TSV files in {request.data_dir}", standardise=False,
        test_inputs=torch.arange(len(dev.examples)).unsqueeze(1), test_labels=dev_labels, extra_info=extra_info)
    for part in (splits.train, splits.val, splits.test):
        table = dev if part is splits.test else train
        rows = part.inputs.squeeze(1).tolist()
        part.inputs = encode([table.examples[r] for r in rows])
        if regression:  # float scores, kept as float (the container's labels are class indices otherwise)
            part.labels = part.clean_labels = table.labels[rows].to(torch.float32) if rows else torch.zeros(0)
    splits.input_shape = (seq_len,)
    pad = encoder.pad_token_id if encoder.pad_token_id is not None else 0
    splits.info.update({"input_dtype": "int64", "tokenizer": tokenizer_path or "minilm", "tokenizer_path": tokenizer_path,
                        "vocab_size": len(encoder), "seq_len": seq_len, "pad_index": int(pad),
                        "sep_index": encoder.sep_token_id, "regression": regression})
    if regression:
        splits.num_classes = 1
        splits.info["num_classes"] = 1
    return splits, encode
