"""Random filter pruning: the control with the same layers (and, layerwise, counts) as L1, chosen by a seeded draw.

With ``prune.scope: layerwise`` each layer loses exactly its ratio's count, as every layerwise method does. Under
``prune.scope: global`` the random scores are ranked globally, so each layer loses about the global ratio (a uniform
ratio in expectation), not the per-layer counts a global method such as slimming or RNI arrived at: it controls for
"which filters", not for the learned layer widths.
"""
from __future__ import annotations

import torch
from torch import nn

from bench import Method, RunContext, register_method


@register_method("random")
class Random(Method):
    """Uniformly random scores from the run's selection generator (seeded by the run's seed)."""

    description = "random filters (seeded), same layers (and, layerwise, counts) as the magnitude methods: a control"
    group_aware = True

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        return {name: torch.rand(modules[name].weight.shape[0], generator=ctx.generator)
                for name in ctx.target.members()}
