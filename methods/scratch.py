"""Scratch (Liu et al. 2019, "Rethinking the Value of Network Pruning"): train the pruned architecture anew.

The baseline of TPP's Table 1 and the "Why so confusing" paper: the architecture L1 pruning finds, with its
inherited weights thrown away, freshly initialised and trained with the *dense* recipe. Scratch-E trains as many
epochs as the dense model did; Scratch-B trains for the dense model's FLOPs budget (epochs × FLOPs_dense /
FLOPs_pruned, the step schedule's milestones stretched by the same factor), as Liu et al. define them.

Registered as ``scratch``, it selects like ``l1`` (so plain ``scratch`` is what the papers' tables list). After
another selector (``random + scratch``) it re-trains that selector's architecture instead: in a chain only the
first selecting component chooses the channels. A Scratch run's ``acc_pruned`` and ``jsv_pruned`` describe the fresh
initialisation, since they are measured after ``after_slim``.

Learning rate: with ``lr: dense`` (the default, faithful) the retraining learning rate swept by the suite does
not apply, so a suite's Scratch numbers are identical across its ``retrain.lr`` values (each cell is a separate,
deterministic run of the same training). ``lr: swept`` keeps the dense recipe's length and schedule but starts at
the swept learning rate, which makes the LR axis mean "from scratch at this LR" (not in the papers).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench import (
    Method,
    Recipe,
    RunContext,
    derive_seed,
    field,
    filter_magnitude,
    register_method,
)

log = logging.getLogger(__name__)


@dataclass
class ScratchHparams:
    """How long and at which learning rate the pruned architecture is trained, and how it is initialised."""

    budget: Literal["E", "B"] = field("E", doc="E: the dense recipe's epochs; B: its FLOPs budget "
                                               "(epochs × FLOPs_dense / FLOPs_pruned)")
    lr: Literal["dense", "swept"] = field("dense", doc="dense: the dense recipe's learning rate (the papers); "
                                                       "swept: the suite's retraining LR with the dense schedule")
    max_factor: float | None = field(
        None, low=1, keyed_at_default=False,
        doc="Scratch-B: cap on the stretch factor FLOPs_dense / FLOPs_pruned, e.g. 2 (null: none; whether Liu et al. "
            "cap it, e.g. on ImageNet, is UNCERTAIN: the paper was not available)")
    conv_init: Literal["reset", "kaiming_fan_in", "kaiming_fan_out"] = field(
        "kaiming_fan_in", doc="conv weights after reset_parameters(): kept (PyTorch default), or Kaiming-normal "
                              "(ReLU gain) by fan-in, as this harness's CIFAR ResNets and VGGs are initialised, "
                              "or by fan-out, as torchvision's ResNets are")


@torch.no_grad()
def reinitialize_(model: nn.Module, seed: int, conv_init: str = "reset") -> None:
    """Re-draw every parameter and buffer of ``model`` with each module's ``reset_parameters()`` (BN included).

    The draws come from ``seed`` alone (the global RNG state is left as it was); ``conv_init`` then optionally
    re-draws conv weights Kaiming-normal (see ``ScratchHparams``).
    """
    devices = sorted({t.device.index or 0 for t in model.parameters() if t.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.Conv2d) and conv_init != "reset":
                mode = "fan_in" if conv_init == "kaiming_fan_in" else "fan_out"
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")


def budget_recipe(dense: Recipe, factor: float, steps_per_epoch: int) -> Recipe:
    """The dense recipe stretched to ``factor`` times its optimizer steps (Scratch-B), milestones stretched alike."""
    max_steps = max(1, math.floor(dense.epochs * steps_per_epoch * factor + 0.5))
    epochs = math.ceil(max_steps / steps_per_epoch)
    milestones = [math.floor(m * factor + 0.5) for m in dense.schedule.milestones]
    schedule = dataclasses.replace(dense.schedule, milestones=milestones)
    return dataclasses.replace(dense, epochs=epochs, max_steps=max_steps, schedule=schedule)


@register_method("scratch")
class Scratch(Method):
    """L1's architecture (or the chained selector's), re-initialised and trained with the dense recipe."""

    Hparams = ScratchHparams
    description = "Liu et al. 2019: the L1-pruned architecture trained from a fresh init with the dense recipe"

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
        """L1's criterion (Li et al. 2017): each filter's mean |w|."""
        modules = dict(model.named_modules())
        return {name: filter_magnitude(modules[name]) for name in ctx.target.layers}

    def after_slim(self, model: nn.Module, ctx: RunContext) -> None:
        reinitialize_(model, derive_seed(ctx.seed, "scratch"), self.hparams.conv_init)

    def retrain_recipe(self, recipe: Recipe, ctx: RunContext) -> Recipe:
        dense = ctx.dense_recipe
        if self.hparams.lr == "swept":
            dense = dataclasses.replace(dense, lr=recipe.lr)
        if self.hparams.budget == "E":
            return dense
        ratio = ctx.flops["dense"] / ctx.flops["pruned"]  # the runner measured both models of this run
        factor = ratio if self.hparams.max_factor is None else min(ratio, self.hparams.max_factor)
        stretched = budget_recipe(dense, factor, ctx.data.steps_per_epoch(dense.batch_size))
        log.info("scratch-B: FLOPs ratio %.3f (budget factor %.3f), %d steps (%d epochs) instead of %d epochs", ratio,
                 factor, stretched.max_steps, stretched.epochs, dense.epochs)
        return stretched
