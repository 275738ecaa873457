"""ImageNet (ILSVRC-2012) as ImageFolder class trees, decoded and augmented by DataLoader workers.

On disk: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG``. Augmentation: RandomResizedCrop and a
horizontal flip, each sample's draws seeded from the epoch; evaluation: resize and centre crop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.core.registry import DATASETS
from bench.data.base import (
    DataError,
    Dataset,
    DatasetInfo,
    check_batch_size,
    concrete_device,
    not_found,
    root_hint,
    validation_split,
)

logger = logging.getLogger(__name__)


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


class _BatchList(torch.utils.data.Sampler):
    """A DataLoader batch sampler whose batches are set before each pass, so the loader (and its workers) persist."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def _chunks(keys: list[Any], size: int) -> list[list[Any]]:
    """``keys`` in consecutive batches of ``size`` (the last one partial)."""
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def _slice(batch: list[Any], rank: int, ranks: int) -> list[Any]:
    """The ``rank``-th of ``ranks`` contiguous pieces of ``batch``, sized as ``torch.tensor_split`` sizes them."""
    bounds = torch.arange(len(batch)).tensor_split(ranks)[rank]
    return batch[int(bounds[0]):int(bounds[-1]) + 1] if bounds.numel() else []


class ImageFolderDataset(Dataset):
    """ImageNet-style ``train/`` and ``val/`` class folders, decoded and augmented by DataLoader workers.

    ``rest`` and ``held`` index the training folder: the images trained on, and those held out for validation
    (seen through ``probe_view``'s eval transform); by default every image is trained on.
    """

    def __init__(
        self,
        info: DatasetInfo,
        train: _TransformedFolder,
        probe_view: _TransformedFolder,
        test: _TransformedFolder,
        num_workers: int,
        rest: list[int] | None = None,
        held: list[int] | None = None,
    ) -> None:
        self.info = info
        self._train = train
        self._probe_view = probe_view
        self._test = test
        self._num_workers = num_workers
        self._rest: Sequence[int] = rest if rest is not None else range(len(train))
        self._validation = torch.utils.data.Subset(probe_view, held or [])
        self._loaders: dict[tuple[int, str], tuple[torch.utils.data.DataLoader, _BatchList]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaders": {}}  # DataLoader workers stay with the process that started them

    def _loader(self, dataset: torch.utils.data.Dataset, device: torch.device, batches: list[list[Any]]
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``dataset`` keyed by ``batches`` (lists of indices or (index, seed) keys), on ``device``.

        One DataLoader per dataset and device, kept with its workers alive from pass to pass (persistent workers;
        its batch sampler is refilled before each pass), so an epoch does not pay for starting them again."""
        key = (id(dataset), device.type)
        if key not in self._loaders:
            sampler = _BatchList()
            # An own generator keeps the DataLoader from drawing its worker base seed from torch's global RNG.
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, num_workers=self._num_workers, pin_memory=device.type == "cuda",
                persistent_workers=self._num_workers > 0, generator=torch.Generator().manual_seed(0))
            self._loaders[key] = (loader, sampler)
        loader, sampler = self._loaders[key]
        sampler.batches = [b for b in batches if b]
        shape = (0, self.info.in_channels, self.info.image_size, self.info.image_size)
        loaded = iter(loader)
        for batch in batches:  # an empty slice (a rank past a short last batch) is made here, not loaded
            images, labels = next(loaded) if batch else (torch.zeros(shape), torch.zeros(0, dtype=torch.int64))
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def _epoch_keys(self, epoch_seed: int) -> list[tuple[int, int]]:
        """One epoch's (index, augmentation seed) keys in order, drawn from a generator seeded with ``epoch_seed``."""
        gen = torch.Generator().manual_seed(epoch_seed)
        n = self.info.num_train
        order = [self._rest[i] for i in torch.randperm(n, generator=gen).tolist()]
        seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
        return list(zip(order, seeds, strict=True))

    def train_batches(
        self, batch_size: int, epoch_seed: int, device: torch.device | str
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch: order and every sample's augmentation seed drawn from a generator seeded with ``epoch_seed``."""
        check_batch_size(batch_size)
        keys = self._epoch_keys(epoch_seed)
        return self._loader(self._train, concrete_device(device), _chunks(keys, batch_size))

    def train_shards(self, batch_size: int, epoch_seed: int, device: torch.device | str, rank: int, ranks: int
                     ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """This rank's slice of each global batch, decoding only its own images: the keys are sliced before loading
        (as ``tensor_split`` slices a loaded batch), so the ranks' slices together are the one-process batch."""
        check_batch_size(batch_size)
        chunks = _chunks(self._epoch_keys(epoch_seed), batch_size)
        mine = [_slice(chunk, rank, ranks) for chunk in chunks]
        for (images, labels), chunk in zip(self._loader(self._train, concrete_device(device), mine), chunks):
            yield images, labels, len(chunk)

    def test_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation folder in ImageFolder's (sorted) order with the eval transform."""
        return self.eval_shards("test", batch_size, device, 0, 1)

    def validation_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The training images held out (option ``validation``) in index order with the eval transform."""
        return self.eval_shards("validation", batch_size, device, 0, 1)

    def eval_shards(self, split: str, batch_size: int, device: torch.device | str, rank: int, ranks: int
                    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Every ``ranks``-th batch of the split from the ``rank``-th, decoding only those images."""
        check_batch_size(batch_size)
        dataset = self._validation if split == "validation" else self._test
        batches = _chunks(list(range(len(dataset))), batch_size)[rank::ranks]
        return self._loader(dataset, concrete_device(device), batches)

    def probe(self, n: int, seed: int) -> Tensor:
        """``n`` training images chosen by ``seed`` with the eval transform (resize + centre crop), on CPU."""
        self._check_probe_size(n)
        idx = torch.randperm(self.info.num_train, generator=torch.Generator().manual_seed(seed))[:n]
        return torch.stack([self._probe_view[self._rest[i]][0] for i in idx.tolist()])


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@DATASETS.register("imagenet")
def imagenet(
    *, root: Path | None, image_size: int | None = None, num_workers: int = 4, validation: int = 0
) -> Dataset:
    """ImageNet (ILSVRC-2012) as ImageFolder trees <root>/train and <root>/val; standard crop/flip augmentation.

    Training: RandomResizedCrop(image_size) + horizontal flip; evaluation: Resize(image_size * 256/224) +
    CenterCrop(image_size). ``image_size`` defaults to 224. ``validation`` holds out that many training images.
    """
    from torchvision import datasets, transforms

    size = 224 if image_size is None else image_size
    if size < 1 or num_workers < 0:
        raise DataError(f"dataset 'imagenet': need image_size >= 1 and num_workers >= 0, got {size}, {num_workers}")
    dirs = [root / "train", root / "val"] if root is not None else []
    if not dirs or not all(d.is_dir() for d in dirs):
        raise not_found(
            "imagenet",
            dirs,
            root_hint(
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
    rest, held = None, None
    if validation:
        labels = torch.tensor(train_folder.targets, dtype=torch.int64)
        rest_t, held_t = validation_split("imagenet", labels, validation, len(train_folder.classes))
        rest, held = rest_t.tolist(), held_t.tolist()
    num_train = len(train_folder) - validation
    info = DatasetInfo("imagenet", len(train_folder.classes), 3, size, num_train, len(val_folder), num_val=validation)
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
        rest,
        held,
    )
