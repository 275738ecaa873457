"""``synthetic``: seeded random images in learnable classes, for tests and smoke runs; needs no files.

Each class is a smooth random prototype plus per-sample noise; normalised with the training set's own statistics.
No augmentation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.registry import DATASETS
from bench.data.base import DataError, Dataset, make_tensor_dataset


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
    validation: int = 0,
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
    return make_tensor_dataset("synthetic", num_classes, train, test, mean, std, image_size, validation=validation)
