"""CIFAR-10 and CIFAR-100 from torchvision's pickled batches, read by a restricted unpickler.

On disk: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` and ``<root>/cifar-100-python/{train,test}``
(as torchvision downloads them). Augmentation: random 32x32 crop of the image padded by 4, horizontal flip.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.core.registry import DATASETS
from bench.data.base import DataError, Dataset, make_tensor_dataset, not_found, root_hint, torchvision_download

logger = logging.getLogger(__name__)


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


def read_cifar_pickle(path: Path, label_key: bytes) -> tuple[Tensor, Tensor]:
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


@dataclass(frozen=True)
class _CifarSpec:
    """What tells the CIFAR variants apart (as torchvision's CIFAR100 overrides only such data)."""

    name: str
    folder: str  # under the data root
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_cls: str  # the torchvision.datasets class that downloads it


_CIFAR10 = _CifarSpec("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      b"labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10")
_CIFAR100 = _CifarSpec("cifar100", "cifar-100-python", ("train",), "test", b"fine_labels", 100,
                       (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100")


def _cifar(spec: _CifarSpec, root: Path | None, image_size: int | None, download: bool, validation: int) -> Dataset:
    """Load a CIFAR variant from ``<root>/<spec.folder>``, downloading it first when asked and missing."""
    directory = root / spec.folder if root is not None else None
    names = (*spec.train_files, spec.test_file)
    paths = [directory / f for f in names] if directory is not None else []

    def present() -> bool:
        return bool(paths) and all(p.is_file() for p in paths)

    if not present() and download:
        torchvision_download(spec.name, spec.torchvision_cls, root)
    if not present():
        raise not_found(
            spec.name,
            [p for p in paths if not p.is_file()],
            root_hint(f"{spec.folder}/ ({', '.join(names)})")
            + ", or add download=true to the dataset options (needs network)",
        )
    start = time.perf_counter()
    parts = [read_cifar_pickle(p, spec.label_key) for p in paths]
    train = (torch.cat([x for x, _ in parts[:-1]]), torch.cat([y for _, y in parts[:-1]]))
    dataset = make_tensor_dataset(spec.name, spec.num_classes, train, parts[-1], spec.mean, spec.std, image_size,
                                  augment=True, validation=validation)
    logger.info(
        "%s: %d train / %d test images from %s in %.2f s",
        spec.name,
        dataset.info.num_train,
        dataset.info.num_test,
        directory,
        time.perf_counter() - start,
    )
    return dataset


@DATASETS.register("cifar10")
def cifar10(
    *, root: Path | None, image_size: int | None = None, download: bool = False, validation: int = 0
) -> Dataset:
    """CIFAR-10, 50k/10k 32x32 colour images in 10 classes (<root>/cifar-10-batches-py); crop+flip augmentation."""
    return _cifar(_CIFAR10, root, image_size, download, validation)


@DATASETS.register("cifar100")
def cifar100(
    *, root: Path | None, image_size: int | None = None, download: bool = False, validation: int = 0
) -> Dataset:
    """CIFAR-100, 50k/10k 32x32 colour images in 100 fine classes (<root>/cifar-100-python); crop+flip augmentation."""
    return _cifar(_CIFAR100, root, image_size, download, validation)
