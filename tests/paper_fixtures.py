"""Synthetic data in the real on-disk formats and tiny random-initialised Hugging Face model directories,
for the paper-preset and pretrained-model tests (nothing downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

GLUE_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI",
                "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
WORDS = "the cat sat on a mat dog ran fast slow red blue good bad film movie".split()


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """``cifar-100-python/{train,test,meta}`` pickles as the official archive holds them."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        data = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": list(rng.integers(0, 100, n)), b"coarse_labels": [0] * n,
                b"filenames": [b"x"] * n, b"batch_label": b"b"}
        (folder / name).write_bytes(pickle.dumps(data))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                                b"coarse_label_names": [b"k"] * 20}))
    return folder


def _png(path: Path, size: int, seed: int) -> None:
    from PIL import Image

    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_dtd(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    """DTD: ``images/<class>/*.jpg`` and ``labels/{train,val,test}1.txt``."""
    folder = root / "dtd"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in range(classes):
        for i in range(per_class):
            rel = f"class{c}/img{i}.png"
            _png(folder / "images" / rel, 20, c * 100 + i)
            lines[("train", "val", "test")[i % 3]].append(rel)
    (folder / "labels").mkdir()
    for split, rows in lines.items():
        (folder / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")
    return folder


def write_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 5) -> Path:
    """Tiny-ImageNet: ``train/<wnid>/images/*.JPEG`` and ``val/images`` + ``val_annotations.txt``."""
    folder = root / "tiny-imagenet-200"
    annotations = []
    for c in range(classes):
        wnid = f"n0{c}"
        for i in range(per_class):
            _png(folder / "train" / wnid / "images" / f"{wnid}_{i}.png", 16, c * 10 + i)
        name = f"val_{c}.png"
        _png(folder / "val" / "images" / name, 16, 999 + c)
        annotations.append(f"{name}\t{wnid}\t0\t0\t16\t16")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    (folder / "wnids.txt").write_text("\n".join(f"n0{c}" for c in range(classes)) + "\n")
    return folder


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8))))


def write_glue(root: Path, n: int = 24) -> Path:
    """Every GLUE task's train/dev TSVs in the official layout (CoLA without header; MNLI two dev sets)."""
    folder = root / "glue"
    rng = np.random.default_rng(0)
    for task, name in GLUE_FOLDERS.items():
        (folder / name).mkdir(parents=True)
        files = ["train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["train.tsv", "dev.tsv"]
        for file in files:
            rows = []
            for i in range(n):
                a, b, y = _sentence(rng), _sentence(rng), int(rng.integers(0, 2))
                if task == "cola":
                    rows.append(f"src\t{y}\t\t{a}")
                elif task == "sst2":
                    rows.append(f"{a}\t{y}")
                elif task == "mrpc":
                    rows.append(f"{y}\t{i}\t{i + 1}\t{a}\t{b}")
                elif task == "qqp":
                    rows.append(f"{i}\t{i}\t{i + 1}\t{a}\t{b}\t{y}")
                elif task == "stsb":
                    rows.append(f"g\tf\t2012\t{i}\t{rng.uniform(0, 5):.3f}\t{a}\t{b}")
                elif task == "mnli":
                    label = ("contradiction", "entailment", "neutral")[i % 3]
                    rows.append(f"{i}\t{a}\t{b}\t{label}")
                elif task in ("qnli", "rte"):
                    rows.append(f"{i}\t{a}\t{b}\t{('entailment', 'not_entailment')[y]}")
                else:
                    rows.append(f"{i}\t{a}\t{b}\t{y}")
            header = {"cola": None, "sst2": "sentence\tlabel", "mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                      "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                      "stsb": "genre\tfilename\tyear\tindex\tscore\tsentence1\tsentence2",
                      "mnli": "index\tsentence1\tsentence2\tgold_label", "qnli": "index\tquestion\tsentence\tlabel",
                      "rte": "index\tsentence1\tsentence2\tlabel", "wnli": "index\tsentence1\tsentence2\tlabel"}[task]
            text = ([header] if header else []) + rows
            (folder / name / file).write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder


def write_vit(root: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = root / "vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=24, num_labels=5)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


def write_resnet(root: Path) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification

    path = root / "resnet"
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=7)
    ResNetForImageClassification(config).save_pretrained(path)
    return path


def write_distilbert(root: Path) -> Path:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    path = root / "distilbert"
    path.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    DistilBertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    config = DistilBertConfig(vocab_size=len(vocab), dim=16, n_layers=1, n_heads=2, hidden_dim=24,
                              max_position_embeddings=64, pad_token_id=0)
    DistilBertForSequenceClassification(config).save_pretrained(path)
    return path
