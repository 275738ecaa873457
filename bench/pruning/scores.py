"""Filter scores by weight magnitude: one parametrised scorer that L1, GReg, TPP and training from scratch share
(in the habit of Torch-Pruning's one ``GroupNormImportance``), so the mean |w| is written once."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def filter_weights(module: nn.Module) -> torch.Tensor:
    """A conv or linear weight as one row per output channel (N × rest)."""
    return module.weight.detach().flatten(1)


def filter_magnitude(module: nn.Module, p: int = 1, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Each output filter's |w|^p, averaged over the filter (the default: the mean |w|, Li et al.'s L1 norm divided
    by the filter size, as TPP's and GReg's codes score) or summed (the L1 or squared L2 norm)."""
    if p < 1:
        raise ValueError(f"filter_magnitude: p must be >= 1, not {p}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"filter_magnitude: reduction must be 'mean' or 'sum', not {reduction!r}")
    magnitude = filter_weights(module).abs()
    if p != 1:
        magnitude = magnitude.pow(p)
    return magnitude.mean(dim=1) if reduction == "mean" else magnitude.sum(dim=1)
