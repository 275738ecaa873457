"""The dataset interface the harness trains on, and the in-memory tensor dataset the small sources share.

A ``Dataset`` gives seeded, resumable training epochs, the test split in a fixed order and probe inputs.
``TensorImageDataset`` holds a split whole as uint8 tensors, moved to the training device once and batched by
indexing a seeded permutation: no DataLoader and no per-sample Python work, so an epoch costs a few tensor ops per
batch. Every source of randomness in an epoch (order and augmentation) comes from a generator seeded with that
epoch's seed, so a resumed run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.errors import UserError

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
_RESIZE_CHUNK = 4096  # images resized per F.interpolate call, to bound peak memory at load


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
    num_val: int = 0  # training images held out as the validation split (option ``validation``); not in num_train


def concrete_device(device: torch.device | str) -> torch.device:
    """The device with its index filled in ("cuda" -> "cuda:0"), so equal devices compare and hash equal."""
    device = torch.device(device)
    if device.type == "cpu":
        return device
    return torch.empty(0, device=device).device


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


class Dataset(ABC):
    """A train/test split with seeded, resumable epochs; what the training loop and diagnostics consume.

    With a validation split (``info.num_val > 0``) the training split is what is left of the training images:
    ``train_batches``, ``probe`` and ``steps_per_epoch`` never see the held-out ones.
    """

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

    def validation_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The held-out validation split in a fixed order with the eval transform; empty when nothing is held out
        (a dataset that takes the ``validation`` option overrides this)."""
        return iter(())

    def train_shards(self, batch_size: int, epoch_seed: int, device: torch.device | str, rank: int, ranks: int
                     ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Data parallelism: this rank's contiguous slice (``tensor_split``) of each global batch of ``train_batches``,
        with the global batch's size. Here sliced after loading (cheap for tensor-resident data); a dataset that
        decodes files overrides it to load only the slice."""
        for x, y in self.train_batches(batch_size, epoch_seed, device):
            yield x.tensor_split(ranks)[rank], y.tensor_split(ranks)[rank], y.numel()

    def eval_shards(self, split: str, batch_size: int, device: torch.device | str, rank: int, ranks: int
                    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Data parallelism: every ``ranks``-th batch of the ``split`` ("test" or "validation"), from the
        ``rank``-th; the ranks' sums together cover the split once."""
        batches = self.validation_batches if split == "validation" else self.test_batches
        for i, batch in enumerate(batches(batch_size, device)):
            if i % ranks == rank:
                yield batch

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches in one training epoch (the last partial batch counts)."""
        check_batch_size(batch_size)
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
        validation: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.info = info
        self._train = train
        self._test = test
        self._validation = validation if validation is not None else (train[0][:0], train[1][:0])
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused op per batch.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self._crop_padding = crop_padding
        self._hflip = hflip
        self._on_device: dict[torch.device, dict[str, tuple[Tensor, Tensor]]] = {}

    def _tensors(self, device: torch.device) -> dict[str, tuple[Tensor, Tensor]]:
        """Each split's images and labels, and the normalisation constants ("norm"), on ``device``, copied once."""
        if device not in self._on_device:
            parts = {"train": self._train, "test": self._test, "validation": self._validation,
                     "norm": (self._scale, self._shift)}
            self._on_device[device] = {k: (a.to(device), b.to(device)) for k, (a, b) in parts.items()}
        return self._on_device[device]

    def _normalise(self, images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        return torch.addcmul(shift, images.float(), scale)

    def train_batches(
        self, batch_size: int, epoch_seed: int, device: torch.device | str
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled, augmented epoch; all random draws happen on CPU, so the batches do not depend on the device."""
        check_batch_size(batch_size)
        device = concrete_device(device)
        on_device = self._tensors(device)
        (x, y), (scale, shift) = on_device["train"], on_device["norm"]
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
        return self._in_order("test", batch_size, device)

    def validation_batches(self, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        """The held-out validation split in index order, normalised, no augmentation (empty when none is held out)."""
        return self._in_order("validation", batch_size, device)

    def _in_order(self, split: str, batch_size: int, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        check_batch_size(batch_size)
        on_device = self._tensors(concrete_device(device))
        (x, y), (scale, shift) = on_device[split], on_device["norm"]
        for start in range(0, x.shape[0], batch_size):
            yield self._normalise(x[start : start + batch_size], scale, shift), y[start : start + batch_size]

    def probe(self, n: int, seed: int) -> Tensor:
        """``n`` distinct training images chosen by ``seed``, normalised, on CPU."""
        self._check_probe_size(n)
        idx = torch.randperm(self.info.num_train, generator=torch.Generator().manual_seed(seed))[:n]
        return self._normalise(self._train[0][idx], self._scale, self._shift)


def resolve_data_root(cli_root: str | None, suite_root: str | None) -> Path | None:
    """The data root to use: the command-line flag, else the suite's setting, else ``$BENCH_DATA_ROOT``, else None."""
    for candidate in (cli_root, suite_root, os.environ.get(DATA_ROOT_ENV)):
        if candidate:
            return Path(candidate).expanduser()
    return None


def not_found(name: str, tried: Sequence[Path | str], hint: str) -> DataError:
    """The error for a dataset whose files are nowhere we looked."""
    where = "\n".join(f"  - {p}" for p in tried) if tried else "  (nothing: no data root was given)"
    return DataError(f"dataset '{name}': files not found. Looked in:\n{where}\nTo fix: {hint}")


def root_hint(layout: str) -> str:
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


def make_tensor_dataset(
    name: str,
    num_classes: int,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None,
    augment: bool = False,
    validation: int = 0,
) -> TensorImageDataset:
    """Validate, optionally resize, and wrap loaded uint8 splits, holding ``validation`` training images out."""
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
    held = None
    if validation:
        rest, out = validation_split(name, train[1], validation, num_classes)
        train, held = (train[0][rest], train[1][rest]), (train[0][out], train[1][out])
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        in_channels=train[0].shape[1],
        image_size=train[0].shape[-1],
        num_train=train[0].shape[0],
        num_test=test[0].shape[0],
        num_val=validation,
    )
    return TensorImageDataset(info, train, test, mean, std, crop_padding=4 if augment else 0, hflip=augment,
                              validation=held)


def validation_split(name: str, labels: Tensor, n: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """(rest, held out): sorted indices of the training images to train on and the ``n`` held out for validation.

    Class-stratified: class c gives the first ``round(n * share_c)`` of a seeded permutation of its images, rounded
    by largest remainder (ties to the lower class) so the total is exactly ``n``. The generator is seeded from the
    dataset's name and ``n`` alone, so every run of every method and seed holds out the same images.
    """
    total = labels.numel()
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < total:
        raise DataError(f"dataset.validation: {n!r} is not a number of training images to hold out; dataset '{name}' "
                        f"has {total} training images, so give an integer in 0..{total - 1}.")
    digest = hashlib.sha256(f"{name}/validation/{n}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    counts = torch.bincount(labels, minlength=num_classes)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    largest_remainders = torch.argsort(exact - quota, descending=True, stable=True)
    quota[largest_remainders[: n - int(quota.sum())]] += 1
    held = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        held.append(members[torch.randperm(len(members), generator=gen)[: int(quota[cls])]])
    out = torch.cat(held).sort().values
    keep = torch.ones(total, dtype=torch.bool)
    keep[out] = False
    return torch.nonzero(keep).flatten(), out


def torchvision_download(name: str, cls_name: str, root: Path | None) -> None:
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
