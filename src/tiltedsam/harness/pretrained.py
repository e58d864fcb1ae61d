"""Pretrained Hugging Face models from a local directory: ViT, ResNet (images), DistilBERT/BERT family (text).

``model.name = "pretrained"``, ``model.options.path = DIR``: ``DIR`` is what ``save_pretrained`` writes
(``config.json`` + ``model.safetensors``, or ``pytorch_model.bin``), as downloaded once by the user (e.g.
``huggingface-cli download google/vit-base-patch16-224 --local-dir DIR``). Nothing is downloaded here:
``transformers`` (the ``text`` extra, pure PyTorch) is told to stay offline and to run no code.

Refused with one :class:`ValueError` line, before any weight is read:

* a missing directory, no ``config.json``, a ``model_type`` outside :data:`SUPPORTED_MODEL_TYPES`, or a
  model for the other modality (a text model on images, or the reverse);
* a code payload: ``auto_map`` in ``config.json``/``tokenizer_config.json``/``preprocessor_config.json``,
  any ``.py`` file in the directory, or a ``.bin`` checkpoint that ``torch.load(weights_only=True)``
  cannot read (a pickle that needs code).

The classification head is replaced by a fresh one with the data set's classes (one output for a
regression task such as STS-B).

Images. The data pipeline delivers images standardised with the training split's statistics
(``data.info["normalization"]``); :class:`PretrainedImageClassifier` undoes that, resizes to the
checkpoint's resolution (``preprocessor_config.json``: ``size``; else ``config.image_size``; bilinear)
and normalises with the checkpoint's ``image_mean``/``image_std``, so the network sees inputs exactly as
in its pre-training. Text. The data are token ids written with the checkpoint's own tokenizer
(``data.options.tokenizer = DIR``, :mod:`.data.glue`); :class:`PretrainedTextClassifier` derives the
attention mask (``ids != pad_token_id``) and, for BERT-style models, the segment ids of a sentence pair
(0 up to and including the first ``[SEP]``, 1 after it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SUPPORTED_MODEL_TYPES", "check_model_dir", "build_pretrained", "load_tokenizer",
           "PretrainedImageClassifier", "PretrainedTextClassifier", "MAX_JSON_BYTES"]

#: model_type of config.json -> input kind
SUPPORTED_MODEL_TYPES = {"vit": "image", "resnet": "image", "deit": "image", "convnext": "image",
                         "distilbert": "text", "bert": "text", "roberta": "text", "albert": "text",
                         "electra": "text"}
#: types whose encoders take segment (token type) ids for sentence pairs
_SEGMENT_TYPES = {"bert", "albert", "electra"}
MAX_JSON_BYTES = 1 << 20
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_json(path: Path, where: str) -> dict[str, Any]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{where}: {path.name} is larger than {MAX_JSON_BYTES} bytes; not a model config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: {path.name} is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {path.name} must hold a JSON object")
    return data


def check_model_dir(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Check ``path`` is a code-free Hugging Face model directory of a supported type (and of input
    ``kind``, "image" or "text", when given); return its ``config.json``. Reads no weights."""
    if not path:
        raise ValueError("model.options.path is required: a local Hugging Face model directory "
                         "(config.json + model.safetensors); nothing is downloaded")
    root = Path(path).expanduser()
    where = f"model directory {str(root)!r}"
    if not root.is_dir():
        raise ValueError(f"{where} does not exist (download it first; see docs/reproduce.md)")
    if not (root / "config.json").is_file():
        raise ValueError(f"{where} has no config.json; expected a directory written by save_pretrained")
    scripts = sorted(p.name for p in root.rglob("*.py"))
    if scripts:
        raise ValueError(f"{where} holds Python code ({', '.join(scripts[:3])}); refusing a model that ships code")
    config = _read_json(root / "config.json", where)
    for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (root / name).is_file() and "auto_map" in _read_json(root / name, where):
            raise ValueError(f"{where}: {name} has 'auto_map' (custom code, trust_remote_code); refusing it")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported; allowed: "
                         f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    if kind is not None and SUPPORTED_MODEL_TYPES[model_type] != kind:
        raise ValueError(f"{where} is a {model_type} ({SUPPORTED_MODEL_TYPES[model_type]}) model, but the data "
                         f"are {kind} inputs")
    weights = [name for name in _WEIGHT_FILES if (root / name).is_file()]
    if not weights:
        raise ValueError(f"{where} has no weights (expected one of {', '.join(_WEIGHT_FILES)})")
    if not any(w.startswith("model.safetensors") for w in weights):
        for file in sorted(root.glob("pytorch_model*.bin")):
            try:
                torch.load(file, map_location="meta", weights_only=True, mmap=True)
            except Exception as exc:  # an UnpicklingError or any failure: it is not plain tensor data
                raise ValueError(f"{where}: {file.name} cannot be read as plain tensors with weights_only=True "
                                 f"({exc.__class__.__name__}); refusing a pickle that needs code") from None
    return config


def _transformers() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"  # never contact the hub, whatever the environment says
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers
    except ModuleNotFoundError as exc:  # pragma: no cover - the text extra is missing
        raise ValueError("model 'pretrained' needs transformers: pip install -e '.[text]'") from exc
    transformers.logging.set_verbosity_error()
    return transformers


def _load(auto_class: Any, root: Path, num_labels: int) -> nn.Module:
    return auto_class.from_pretrained(root, num_labels=num_labels, ignore_mismatched_sizes=True,
                                      local_files_only=True, trust_remote_code=False)


class PretrainedImageClassifier(nn.Module):
    """A Hugging Face image classifier fed the harness's standardised images (see the module docstring)."""

    def __init__(self, model: nn.Module, *, data_mean: list[float], data_std: list[float],
                 model_mean: list[float], model_std: list[float], size: int | None) -> None:
        super().__init__()
        self.model = model
        self.size = size
        for name, values in (("data_mean", data_mean), ("data_std", data_std),
                             ("model_mean", model_mean), ("model_std", model_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        pixels = images * self.data_std + self.data_mean  # back to [0, 1]
        if self.size is not None and tuple(pixels.shape[-2:]) != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(pixel_values=(pixels - self.model_mean) / self.model_std).logits


class PretrainedTextClassifier(nn.Module):
    """A Hugging Face sequence classifier fed right-padded token ids ``(batch, seq_len)``."""

    def __init__(self, model: nn.Module, *, pad_token_id: int, sep_token_id: int | None, segments: bool) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.sep_token_id = sep_token_id
        self.segments = segments and sep_token_id is not None

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_token_id).long()
        kwargs: dict[str, Tensor] = {"input_ids": ids, "attention_mask": mask}
        if self.segments:  # segment 1 starts after the first [SEP]
            is_sep = (ids == self.sep_token_id).long()
            kwargs["token_type_ids"] = ((is_sep.cumsum(1) - is_sep) > 0).long() * mask
        return self.model(**kwargs).logits


def _image_processor_settings(root: Path, config: dict[str, Any]) -> tuple[list[float], list[float], int | None]:
    processor = _read_json(root / "preprocessor_config.json", str(root)) \
        if (root / "preprocessor_config.json").is_file() else {}
    mean = processor.get("image_mean", [0.5, 0.5, 0.5] if config.get("model_type") == "vit" else [0.485, 0.456, 0.406])
    std = processor.get("image_std", [0.5, 0.5, 0.5] if config.get("model_type") == "vit" else [0.229, 0.224, 0.225])
    size = processor.get("size", config.get("image_size"))
    if isinstance(size, dict):  # {"height": 224, "width": 224} or {"shortest_edge": 224}
        size = size.get("height", size.get("shortest_edge"))
    if processor.get("do_resize") is False:
        size = None
    return [float(m) for m in mean], [float(s) for s in std], (int(size) if size else None)


def build_pretrained(data: Any, *, path: str = "") -> nn.Module:
    """The checkpoint in ``path`` with a fresh head for ``data``'s classes (one output for regression)."""
    kind = "text" if "vocab_size" in getattr(data, "info", {}) else "image"
    config = check_model_dir(path, kind)
    root = Path(path).expanduser()
    transformers = _transformers()
    num_labels = 1 if data.info.get("regression") else int(data.num_classes)
    if kind == "image":
        normalization = data.info.get("normalization") or {"mean": [0.0] * 3, "std": [1.0] * 3}
        model = _load(transformers.AutoModelForImageClassification, root, num_labels)
        mean, std, size = _image_processor_settings(root, config)
        if int(data.input_shape[0]) != len(mean):
            raise ValueError(f"model directory {str(root)!r} expects {len(mean)} channels, the data have "
                             f"{data.input_shape[0]}")
        return PretrainedImageClassifier(model, data_mean=list(normalization["mean"]), data_std=list(normalization["std"]),
                                         model_mean=mean, model_std=std, size=size)
    tokenizer_dir = data.info.get("tokenizer_path")
    if tokenizer_dir is not None and Path(tokenizer_dir).expanduser().resolve() != root.resolve():
        raise ValueError(f"the data were tokenised with {tokenizer_dir!r}, but the model is {str(root)!r}; "
                         "use the same directory for data.options.tokenizer and model.options.path")
    if int(data.info.get("vocab_size", 0)) > int(config.get("vocab_size", 0)):
        raise ValueError(f"model directory {str(root)!r} has a vocabulary of {config.get('vocab_size')} tokens, the "
                         f"data use {data.info.get('vocab_size')}; tokenise with this model's tokenizer")
    model = _load(transformers.AutoModelForSequenceClassification, root, num_labels)
    return PretrainedTextClassifier(model, pad_token_id=int(data.info.get("pad_index", config.get("pad_token_id") or 0)),
                                    sep_token_id=data.info.get("sep_index"),
                                    segments=config.get("model_type") in _SEGMENT_TYPES)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The checkpoint's own tokenizer from ``path`` (checked as :func:`check_model_dir`), offline."""
    check_model_dir(path, "text")
    transformers = _transformers()
    return transformers.AutoTokenizer.from_pretrained(Path(path).expanduser(), local_files_only=True,
                                                      trust_remote_code=False)
