"""Receding neuron importances, RNI (Suteu & Guo 2022), after the official code (xapharius/receding-neuron-importances).

Every BatchNorm2d is replaced, before dense training, by a sigmoid-bounded one (``SigmoidBatchNorm2d``: scale σ(w) in
(0, 1), no shift), whose scale is the channel's importance. Dense training adds

    λ · Σ_{all bounded-BN channels} u·(1 − log u),   u = σ(w + b)

whose gradient −log(u)·u·(1 − u) peaks at a moderately negative w (σ(w) ≈ 0.015 for b = 3) and vanishes for large w,
so unimportant channels recede to 0 while important ones are left alone. The BN scales train at 10× the learning rate
without weight decay. Pruning is one shot: keep the channels whose σ(w) lies strictly above the global p-quantile of
the pruned layers' scales, at least 3 per layer; the slimmed model keeps the bounded BN.

The paper's text (and its hyperparameters) was not available, only the code and its results notebook: the defaults
are the code README's (λ = 1e-4, b = 3); the notebook used λ = 1e-3, b = 3 for VGG-16 and λ = 1e-4, b = 0 for
ResNet-56. Retraining after removal uses the suite's retraining recipe with the same optimizer groups as the code's
fine-tuning (the BN scales at 10× the LR, no weight decay); ``retrain_groups: false`` gives them the suite's recipe.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import (
    BaseHooks,
    ConfigError,
    DenseVariant,
    Method,
    Recipe,
    RunContext,
    field,
    keep_above_quantile,
    register_method,
    scoped,
)

log = logging.getLogger(__name__)


class SigmoidBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose scale is σ(weight) ∈ (0, 1) and which has no shift; weight starts N(0, 1) (the code's SigBN).

    A subclass of nn.BatchNorm2d with its constructor, so ``bench.pruning`` traces it as a BatchNorm and slices it
    into a smaller module of the same type (the absent shift stays absent).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None) -> None:
        if not affine:
            raise ValueError("SigmoidBatchNorm2d needs affine=True: its scale parameter is the channel importance")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.bias = None

    def reset_parameters(self) -> None:
        """Running statistics reset; the scale parameter drawn from N(0, 1) as in the code."""
        self.reset_running_stats()
        nn.init.normal_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            torch.sigmoid(self.weight), None, use_batch_stats, factor, self.eps)


def bound_batchnorms_(model: nn.Module) -> int:
    """Replace every plain nn.BatchNorm2d of ``model`` by a fresh SigmoidBatchNorm2d; returns how many."""
    targets = [name for name, m in model.named_modules()
               if isinstance(m, nn.BatchNorm2d) and not isinstance(m, SigmoidBatchNorm2d)]
    for name in targets:
        old = model.get_submodule(name)
        ref = old.running_mean if old.running_mean is not None else old.weight
        new = SigmoidBatchNorm2d(old.num_features, old.eps, old.momentum, True, old.track_running_stats,
                                 device=ref.device, dtype=ref.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return len(targets)


def receding_penalty(w: Tensor, shift: float) -> Tensor:
    """Σ u·(1 − log u) with u = σ(w + shift); log u is computed as logsigmoid for stability."""
    z = w + shift
    return (torch.sigmoid(z) * (1.0 - F.logsigmoid(z))).sum()


class RecedingHooks(BaseHooks):
    """Dense-training hook: λ · receding_penalty over the scales of every bounded BatchNorm."""

    def __init__(self, lam: float, shift: float) -> None:
        self.lam, self.shift = lam, shift

    def penalty(self, model: nn.Module, step: int) -> Tensor | None:
        scales = [m.weight for m in model.modules() if isinstance(m, SigmoidBatchNorm2d)]
        return self.lam * receding_penalty(torch.cat(scales), self.shift) if scales else None


def bn_scale_groups(model: nn.Module, lr: float, factor: float) -> list[dict[str, Any]]:
    """RNI's optimizer groups: bounded-BN scales at ``factor`` x ``lr`` without weight decay; the rest as usual."""
    scales = [m.weight for m in model.modules() if isinstance(m, SigmoidBatchNorm2d)]
    ids = {id(p) for p in scales}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": scales, "lr": lr * factor, "weight_decay": 0.0}]


@dataclass
class RNIHparams:
    """The official code's constants; λ and b default to its README values."""

    lam: float = field(1e-4, low=0, doc="λ: weight of the receding regulariser (README 1e-4; notebook: VGG-16 1e-3, "
                                        "ResNet-56 1e-4)")
    shift: float = field(3.0, doc="b in u = σ(w + b): the regulariser pushes hardest at σ(w) ≈ 0.015 for b = 3 "
                                  "(≈ 0.23 for b = 0; notebook: ResNet-56 b = 0)")
    bn_lr_factor: float = field(10.0, low=0, low_open=True,
                                doc="learning-rate multiplier of the BN scales in dense training (no weight decay)")
    retrain_groups: bool = field(True, doc="fine-tune with the same optimizer groups as dense training (BN scales "
                                 "at bn_lr_factor x LR, no weight decay), as the released code does; false: the "
                                 "suite's single-group retraining optimizer, like every other method")
    min_channels: int = field(3, low=1, doc="channels every pruned layer keeps at least (the code's 3)")
    scope: Literal["global", "layerwise"] = field(
        "global", doc="global: one p-quantile over all pruned layers (RNI, whatever prune.scope says); layerwise: each "
                      "layer's own quantile at its prune.ratios value (the code's UCS rule)")


@register_method("rni")
class RNI(Method):
    """Dense training with bounded BatchNorms and the receding regulariser, then a one-shot σ(w) quantile cut."""
    needs_convolutions = True

    Hparams = RNIHparams
    description = "receding neuron importances (sigmoid-bounded BN)"
    group_limit = "it ranks each layer's channels by the bounded BatchNorm right after it"

    def dense_variant(self) -> DenseVariant:
        hp = self.hparams

        def prepare(model: nn.Module) -> nn.Module:
            if bound_batchnorms_(model) == 0:
                raise ConfigError("methods: rni: the model has no BatchNorm2d to bound; RNI needs a BatchNorm2d after "
                                  "every pruned conv (e.g. vgg16, resnet56).")
            return model

        def param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
            return bn_scale_groups(model, recipe.lr, hp.bn_lr_factor)

        key = {"rni": {"lam": hp.lam, "shift": hp.shift, "bn_lr_factor": hp.bn_lr_factor}}
        return DenseVariant(key=key, prepare=prepare, hooks=[RecedingHooks(hp.lam, hp.shift)],
                            param_groups=param_groups)

    def retrain_param_groups(self, model: nn.Module, recipe: Recipe, ctx: RunContext) -> list[dict[str, Any]] | None:
        """The code fine-tunes "with the same optimiser groups" as dense training (no regulariser)."""
        return bn_scale_groups(model, recipe.lr, self.hparams.bn_lr_factor) if self.hparams.retrain_groups else None

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        """σ(w) of the bounded BatchNorm after each target layer."""
        scores = {}
        for name in ctx.target.layers:
            bn = ctx.batchnorm_of.get(name)
            module = model.get_submodule(bn) if bn is not None else None
            if not isinstance(module, SigmoidBatchNorm2d):
                raise ConfigError(f"methods: rni: pruned layer '{name}' is not followed by a BatchNorm2d, whose "
                                  "bounded scale RNI ranks; remove it from prune.layers.")
            scores[name] = torch.sigmoid(module.weight.detach()).float().cpu()
        return scores

    def select(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        scores = self.scores(model, ctx)
        floor = max(self.hparams.min_channels, ctx.target.min_keep)
        keep = keep_above_quantile(scores, scoped(ctx.target, self.hparams.scope, self.name), floor)
        log.info("rni: the %s σ(w) quantile cut keeps %d of %d channels", self.hparams.scope,
                 sum(k.numel() for k in keep.values()), sum(s.numel() for s in scores.values()))
        return keep
