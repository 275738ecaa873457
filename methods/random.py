"""Random filter pruning: the control with the same layers and counts as L1, filters chosen by a seeded draw."""
from __future__ import annotations

import torch
from torch import nn

from bench import Method, RunContext, register_method


@register_method("random")
class Random(Method):
    """Uniformly random scores from the run's selection generator (seeded by the run's seed)."""

    description = "random filters (seeded), same layers and counts as the magnitude methods: a control"

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        return {name: torch.rand(modules[name].weight.shape[0], generator=ctx.generator)
                for name in ctx.target.layers}
