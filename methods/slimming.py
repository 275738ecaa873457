"""Network Slimming (Liu et al., ICCV 2017), following Eric-mingjie/network-slimming.

Dense training adds λ·sign(γ) to the gradient of every BatchNorm scale γ (the subgradient of λ·Σ|γ|), which drives
unneeded channels' scales towards zero; then the channels with the smallest |γ| over the pruned layers' BatchNorms are
removed under one global threshold, and the network is retrained.

Deviations: the code removes the channels with |γ| <= the value at sorted index int(p·N), i.e. int(p·N) + 1 channels
for distinct scales; here exactly ceil(p·N) go (the harness's count for every global method), and every layer keeps at
least ``prune.min_keep`` (the code has no floor and can empty a layer). γ starts at the models' 1, not the code's 0.5,
and conv and linear weights are the harness models' initialisation (Kaiming fan-in; PyTorch's default for linear),
unless the suite sets ``pretrain.init: fan_out`` (γ 0.5, convs Kaiming fan-out, linear N(0, 0.01): the RNI code's
init, which its L1-slim and UCS baselines use; the RNI suites set it).
``cut: quantile`` gives the RNI code's version of this baseline ("L1-slim", and with ``lam: 0, scope: layerwise``
its "UCS"): keep |γ| strictly above the p-quantile (global or per layer), at least ``prune.min_keep`` per layer.
``lam: 0, divide_by: fan_in`` is the OrthoReg code's BN-scale baseline on VGG-13: |γ| divided by the conv's C_in·k·k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from bench import (
    BaseHooks,
    ConfigError,
    DenseVariant,
    Method,
    RunContext,
    field,
    keep_above_quantile,
    keep_from_scores,
    register_method,
    scoped,
)

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class SparsityHooks(BaseHooks):
    """grad(γ) += λ·sign(γ) for every BatchNorm scale, after backward (the code's ``updateBN``)."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        for module in model.modules():
            if isinstance(module, BATCHNORMS) and module.weight is not None and module.weight.grad is not None:
                module.weight.grad.add_(torch.sign(module.weight), alpha=self.lam)


@dataclass
class SlimmingHparams:
    """The code's sparsity strength and the selection scope."""

    lam: float = field(1e-4, low=0, doc="λ of the L1 penalty on BN scales (1e-4 VGG, 1e-5 ResNet-164/DenseNet-40); "
                                        "0: the shared dense model, no sparsity training")
    scope: Literal["global", "layerwise"] = field(
        "global", doc="global: one |γ| threshold over all pruned layers (the paper, whatever prune.scope says); "
                      "layerwise: each layer's prune.ratios value (with lam 0: RNI's 'UCS' baseline)")
    cut: Literal["count", "quantile"] = field(
        "count", keyed_at_default=False,
        doc="count: exactly ceil(p·n) channels go (the harness's rule); quantile: keep |γ| strictly above the "
            "p-quantile (the RNI code's rule for its L1-slim and UCS baselines)")
    divide_by: Literal["none", "fan_in"] = field(
        "none", keyed_at_default=False,
        doc="fan_in: rank |γ| divided by the pruned conv's fan-in C_in·k·k (the OrthoReg code's BN-scale baseline on "
            "VGG-13)")


@register_method("slimming")
class Slimming(Method):
    """Sparsity-trained dense model (its own cached variant), then a global cut on |γ|."""
    needs_convolutions = True

    Hparams = SlimmingHparams
    description = "Liu et al. 2017 (Network Slimming): L1 on BN scales in dense training, remove the smallest |γ|"
    group_limit = "it ranks each layer's channels by the scale of the BatchNorm right after it"

    def dense_variant(self) -> DenseVariant | None:
        if self.hparams.lam == 0:
            return None
        return DenseVariant(key={"slimming": {"lam": self.hparams.lam}}, hooks=[SparsityHooks(self.hparams.lam)])

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        """|γ| of the BatchNorm after each target layer (divided by the layer's fan-in with ``divide_by: fan_in``)."""
        scores = {}
        for name in ctx.target.layers:
            bn = ctx.batchnorm_of.get(name)
            module = model.get_submodule(bn) if bn is not None else None
            if module is None or getattr(module, "weight", None) is None:
                raise ConfigError(f"methods: slimming: pruned layer '{name}' is not followed by an affine BatchNorm, "
                                  "whose scale slimming ranks; remove it from prune.layers.")
            scores[name] = module.weight.detach().abs().float().cpu()
            if self.hparams.divide_by == "fan_in":
                scores[name] /= model.get_submodule(name).weight[0].numel()
        return scores

    def select(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        """The lowest |γ| go (``cut: count``) or those not above the p-quantile (``quantile``), under one global
        threshold or per layer (``scope``); prune.min_keep floors each layer except in a layerwise count cut."""
        own = scoped(ctx.target, self.hparams.scope, self.name)
        scores = self.scores(model, ctx)
        if self.hparams.cut == "quantile":
            return keep_above_quantile(scores, own, own.min_keep)
        return keep_from_scores(scores, own)
