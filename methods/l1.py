"""L1-norm filter pruning (Li et al., ICLR 2017): drop the filters with the smallest mean absolute weight."""
from __future__ import annotations

import torch
from torch import nn

from bench import Method, RunContext, filter_magnitude, register_method


def mean_abs_weight(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    """Each output filter's mean |w| (Li et al.'s sum of |w| divided by the filter size, as TPP's code)."""
    modules = dict(model.named_modules())
    return {name: filter_magnitude(modules[name]) for name in layers}


@register_method("l1")
class L1(Method):
    """One-shot magnitude selection; the ranking is per layer, or global with ``prune.scope: global``."""
    selftest_baseline = True

    description = "Li et al. 2017: remove the filters with the smallest mean |w| (one shot), then retrain"
    group_aware = True

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
        return mean_abs_weight(model, ctx.target.members())
