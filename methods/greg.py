"""GReg-1, neural pruning via growing regularisation (Wang, Qin, Zhang & Fu, ICLR 2021), following the official code
(MingSun-Tse/Regularization-Pruning, ``--method IncReg``).

The filters to prune are picked once, on the dense model, by mean |w| per layer (as ``l1``). A phase then trains with
an L2 penalty on those filters only, applied as grad += λ·w after backward, whose strength λ grows by δ every K_u
iterations (the update at iteration t = 0 included) until λ reaches the ceiling or every layer's running magnitude
ratio (mean |w| of kept / of pruned filters, an exponential average with momentum 0.9) reaches ``stop_ratio``; λ is
then held for K_s "stabilize" iterations, and the harness removes the filters and retrains.

Deviations: the phase has a fixed length, that of growth to the ceiling plus K_s, because the shared training loop has
no early exit; when the magnitude-ratio criterion stops the growth earlier, λ is held (stabilized) for the rest of the
phase instead of the code's K_s iterations. Growth stops at λ = ceiling (the code's test is λ > ceiling, one δ more).
The penalty covers every pruned layer, conv or linear (the code's covers convs). TPP (``methods/tpp.py``) grows the
same L2 term; the two are kept separate here on purpose (TPP adds Gram and BatchNorm terms and zeroing).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bench import (
    BaseHooks,
    Method,
    Phase,
    Ramp,
    Recipe,
    RunContext,
    field,
    filter_magnitude,
    keep_from_scores,
    register_method,
)

log = logging.getLogger(__name__)


@dataclass
class GRegHparams:
    """The official code's constants with its CIFAR script defaults (ImageNet: update_interval 5, stabilize 40000)."""

    delta: float = field(1e-4, low=0, low_open=True, doc="δ: λ grows by this every update_interval iterations "
                                                         "(--reg_granularity_prune)")
    ceiling: float = field(1.0, low=0, low_open=True, doc="λ stops growing at this value (--reg_upper_limit)")
    update_interval: int = field(10, low=1, doc="K_u: iterations between λ updates (--update_reg_interval)")
    stabilize: int = field(10000, low=0, doc="K_s: iterations λ is held after growing (--stabilize_reg_interval)")
    stop_ratio: float = field(1000.0, low=1, doc="growth also stops once every layer's running ratio of mean |w| "
                                                 "(kept / pruned filters) reaches this (the code's fixed 1000)")
    lr: float = field(1e-3, low=0, low_open=True, doc="constant learning rate of the phase (--lr_prune)")
    momentum: float = field(0.9, low=0, high=1, high_open=True, doc="SGD momentum of the phase")
    weight_decay: float | None = field(None, low=0, doc="SGD weight decay of the phase, on top of the penalty; null: "
                                                        "the run's retraining weight decay (the code uses --wd)")


@dataclass(frozen=True)
class GrowthSchedule(Ramp):
    """λ as a function of the iteration t (0-based) and of the update count at which growth stopped, if early.

    The code updates λ at every t with t mod K_u = 0, t = 0 included, so λ(t) = δ·(⌊t/K_u⌋ + 1) while growing; it
    reaches the ceiling at update u_max = ceil(ceiling/δ), at iteration (u_max − 1)·K_u, and removal follows K_s
    iterations later: the phase has (u_max − 1)·K_u + K_s + 1 steps.
    """

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the phase."""
        return (self.max_updates - 1) * self.update_interval + self.stabilize + 1

    def updates(self, step: int, stopped_at: int | None) -> int:
        """Updates applied by iteration ``step`` (inclusive), capped at the ceiling or the early stop."""
        cap = self.max_updates if stopped_at is None else stopped_at
        return min(step // self.update_interval + 1, cap)


class GrowingL2Hooks(BaseHooks):
    """grad += λ(t)·w on the picked filters; tracks the magnitude ratios that can stop the growth early.

    The ratios, the early stop and λ live on the model's device as tensors, so a step never waits for the device
    (no value is read back to the host); ``ratio_average`` and ``stopped_at`` read them when asked (checkpoints)."""

    def __init__(self, schedule: GrowthSchedule, stop_ratio: float, pruned: dict[str, Tensor]) -> None:
        self.schedule = schedule
        self.stop_ratio = stop_ratio
        self.pruned = pruned
        self._ratios: dict[str, Tensor] = {}    # float64 running ratios, on the device
        self._stop: Tensor | None = None        # int64: the update count at which growth stopped, 0 while growing
        self._saved: dict[str, Any] | None = None  # a loaded state, moved to the device when the model is seen
        self._model: nn.Module | None = None
        self._layers: list[tuple[nn.Module, Tensor, Tensor]] = []  # (layer, pruned, kept indices on its device)
        self._logged = False

    @property
    def ratio_average(self) -> dict[str, float]:
        """The running kept/pruned magnitude ratio of each layer (read from the device)."""
        if self._saved is not None:
            return dict(self._saved["ratio_average"])
        return {name: float(value) for name, value in self._ratios.items()}

    @property
    def stopped_at(self) -> int | None:
        """The update count at which every layer reached ``stop_ratio``, None while λ still grows."""
        if self._saved is not None:
            return self._saved["stopped_at"]
        return int(self._stop) or None if self._stop is not None else None

    def strength(self, step: int) -> float:
        """λ at iteration ``step``."""
        return self.schedule.delta * self.schedule.updates(step, self.stopped_at)

    def _bind(self, model: nn.Module) -> list[tuple[nn.Module, Tensor, Tensor]]:
        """Each pruned layer with its pruned and kept indices on its device (cached), and the state there."""
        if model is self._model:
            return self._layers
        self._layers = []
        for name, index in self.pruned.items():
            module = model.get_submodule(name)
            kept = torch.ones(module.weight.shape[0], dtype=torch.bool)
            kept[index.cpu()] = False
            device = module.weight.device
            self._layers.append((module, index.to(device), torch.nonzero(kept).flatten().to(device)))
        device = next(model.parameters()).device
        saved = self._saved or {"ratio_average": {}, "stopped_at": None}
        if self._saved is None and self._stop is not None:  # rebinding: keep the state, on the new device
            saved = {"ratio_average": self.ratio_average, "stopped_at": self.stopped_at}
        self._ratios = {name: torch.tensor(value, dtype=torch.float64, device=device)
                        for name, value in saved["ratio_average"].items()}
        self._stop = torch.tensor(saved["stopped_at"] or 0, dtype=torch.int64, device=device)
        self._saved, self._model = None, model
        return self._layers

    @torch.no_grad()
    def _update_ratios(self, step: int) -> None:
        """At an update iteration of the growth: the running kept/pruned magnitude ratios and the early stop (both
        frozen once growth has stopped), computed on the device."""
        growing = self._stop == 0
        for name, (module, pruned, kept) in zip(self.pruned, self._layers):
            magnitude = filter_magnitude(module)
            ratio = (magnitude.index_select(0, kept).mean() / magnitude.index_select(0, pruned).mean()).double()
            previous = self._ratios.get(name)
            updated = ratio if previous is None else 0.9 * previous + 0.1 * ratio
            self._ratios[name] = updated if previous is None else torch.where(growing, updated, previous)
        if self._ratios:
            reached = torch.stack([r >= self.stop_ratio for r in self._ratios.values()]).all()
            self._stop = torch.where(growing & reached, step // self.schedule.update_interval + 1, self._stop)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        layers = self._bind(model)
        if step % self.schedule.update_interval == 0 and step // self.schedule.update_interval < \
                self.schedule.max_updates:
            self._update_ratios(step)
        if not layers:
            return
        cap = torch.where(self._stop > 0, self._stop, self.schedule.max_updates)
        lam = self.schedule.delta * torch.clamp(cap, max=step // self.schedule.update_interval + 1).double()
        for module, pruned, _ in layers:
            weight = module.weight
            # grad[pruned] += λ·w[pruned], as index_add_(alpha=λ) computes it, with λ a device tensor
            grown = torch.addcmul(weight.grad.index_select(0, pruned), weight.index_select(0, pruned),
                                  lam.to(weight.dtype))
            weight.grad.index_copy_(0, pruned, grown)

    def state_dict(self) -> dict[str, Any]:
        state = {"ratio_average": self.ratio_average, "stopped_at": self.stopped_at}
        if state["stopped_at"] is not None and not self._logged:  # read once per epoch: no per-step wait for it
            self._logged = True
            log.info("greg: every layer's magnitude ratio reached %g at update %d (λ = %g); λ is held from there",
                     self.stop_ratio, state["stopped_at"], self.schedule.delta * state["stopped_at"])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved = {"ratio_average": dict(state["ratio_average"]), "stopped_at": state["stopped_at"]}
        self._logged = state["stopped_at"] is not None
        self._model = None


@register_method("greg")
class GReg(Method):
    """Pick by mean |w| (per layer by default), push the picked filters down with a growing L2, then remove them."""
    selftest_options = {"delta": 0.5, "update_interval": 1, "stabilize": 2}

    Hparams = GRegHparams
    description = "Wang et al. 2021 (GReg-1): growing L2 penalty on the mean-|w|-picked filters, then remove them"
    group_aware = True  # the growing L2 acts on every member of a picked group

    def __init__(self, hparams: GRegHparams) -> None:
        super().__init__(hparams)
        self._keep: dict[str, Tensor] | None = None

    def schedule(self) -> GrowthSchedule:
        """The growth schedule these hyperparameters define."""
        hp = self.hparams
        return GrowthSchedule(hp.delta, hp.ceiling, hp.update_interval, hp.stabilize)

    def phase_steps(self, dense: Recipe, retrain: Recipe, steps_per_epoch: Callable[[int], int]) -> tuple[int, int]:
        """The growth and stabilize iterations at the retraining batch size (an early stop holds λ, not the phase)."""
        return self.schedule().total_steps, retrain.batch_size

    def phase(self, model: nn.Module, ctx: RunContext) -> Phase:
        """Pick the filters on the dense model (recomputed identically on resume) and build the growth phase."""
        hp = self.hparams
        members = {m: filter_magnitude(model.get_submodule(m)) for m in ctx.target.members()}
        scores = self.group_scores(members, ctx.target)
        self._keep = keep_from_scores(scores, ctx.target)
        pruned = {}
        for name, index in ctx.target.member_indices(self._keep).items():
            kept = torch.zeros(members[name].numel(), dtype=torch.bool)
            kept[index] = True
            if not kept.all():
                pruned[name] = torch.nonzero(~kept).flatten()
        schedule = self.schedule()
        batch_size = ctx.retrain.batch_size
        recipe = Recipe(epochs=math.ceil(schedule.total_steps / ctx.data.steps_per_epoch(batch_size)), lr=hp.lr,
                        batch_size=batch_size, momentum=hp.momentum,
                        weight_decay=ctx.retrain.weight_decay if hp.weight_decay is None else hp.weight_decay,
                        max_steps=schedule.total_steps)
        log.info("greg: %d layers, %d filters regularised for %d steps", len(pruned),
                 sum(i.numel() for i in pruned.values()), schedule.total_steps)
        return Phase(recipe=recipe, hooks=[GrowingL2Hooks(schedule, hp.stop_ratio, pruned)])

    def select(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        """The filters picked at the start of the phase: GReg-1 never revisits its choice."""
        if self._keep is None:
            raise RuntimeError("greg: select() was called before phase(), which picks the filters")
        return self._keep
