"""Containers, seeded splits, symmetric label noise and the shared split -> standardise -> noise assembly.

Every loader of :mod:`tiltedsam.harness.data` ends in :func:`_assemble`, so the split, noise and
normalisation rules described in the package docstring live here once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..transforms import ImageTransform

DEFAULT_TEST_FRACTION = 0.2
# The validation split's noise is drawn from its own stream so that the training split's noise does not
# depend on the validation size: generator seed = noise_seed + VAL_NOISE_SEED_OFFSET.
VAL_NOISE_SEED_OFFSET = 1_000_003


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
# Helpers shared by the loaders
# --------------------------------------------------------------------------------------------------


def _reject_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"unknown option(s) for dataset {name!r}: {sorted(options)}")



def _package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def _require_data_dir(request: _Request) -> Path:
    if request.data_dir is None:
        raise ValueError(f"dataset {request.name!r} needs data_dir (a local folder; nothing is downloaded)")
    path = Path(request.data_dir).expanduser()
    if not path.exists():
        raise ValueError(f"data_dir {str(path)!r} does not exist")
    return path
