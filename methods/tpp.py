"""TPP, trainability-preserving pruning (Wang & Fu, ICLR 2023), following the released code (MingSun-Tse/TPP).

The filters to prune are picked once, before any training, by mean |w| per layer (as ``l1``). A regularisation phase
then trains the dense model with three penalties on the picked filters only, all scaled by a strength r(t) that grows
by ``delta`` every ``update_interval`` iterations up to ``ceiling`` (the ramp), then stays there for ``stabilize``
iterations (during which the picked filters are hard-zeroed layer by layer, shallow to deep). The harness then
removes them physically and retrains. With r = r(t), the objective of the released code is

    CE + lambda_gram·r·Σ_l (1/N_l²)·‖G_l ⊙ (1 − m mᵀ)‖²_F + (r/2)·Σ_l Σ_{j pruned} (‖w_j‖² + b_j² + γ_j² + β_j²)

plus SGD weight decay on everything: G_l = W_l W_lᵀ is the filter Gram matrix (W_l: N_l × rest) and m the keep
indicator. The Gram term (paper Eq. 3, ``gram``) is a loss term; the BatchNorm term (paper Eq. 5, ``bn_reg``) and the
growing L2 on the pruned weights and biases (``weight_reg``) are added to the gradients after backward, as the code
does. Whether the paper's written objective contains the weight-L2 term is UNCERTAIN (the slides show only Eqs. 3
and 5); the released code applies it by default, so we do too.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench import (
    BaseHooks,
    ConfigError,
    Method,
    Phase,
    PruneTarget,
    Ramp,
    Recipe,
    RunContext,
    field,
    filter_magnitude,
    keep_from_scores,
    register_count_rule,
    register_method,
)

log = logging.getLogger(__name__)


@register_count_rule("tpp_code")
def tpp_code_count(n: int, ratio: float) -> int:
    """``prune.count_rule: tpp_code``: TPP's released code, min(ceil(ratio*n), int(0.995*n)) on the unrounded
    product (0.28 of 25 removes 8, because 0.28*25 = 7.000000000000001)."""
    return min(math.ceil(ratio * n), int(0.995 * n))

LAYER_TYPES = (nn.Conv2d, nn.Linear)  # the code's learnable layers that occur in our models (it also lists Conv1d, MHA)


@dataclass
class TPPHparams:
    """The released code's constants, with its CIFAR defaults (ImageNet: update_interval 5, stabilize 40000)."""

    lambda_gram: float = field(1000.0, low=0, doc="λ: weight of the Gram decorrelation term, times r (--lw_opp)")
    delta: float = field(1e-4, low=0, low_open=True,
                         doc="Δ: r grows by this every update_interval iterations (--reg_granularity_prune)")
    ceiling: float = field(1.0, low=0, low_open=True, doc="τ: the ramp ends when r >= τ (--reg_upper_limit)")
    update_interval: int = field(10, low=1, doc="K_u: iterations between r updates (--update_reg_interval; "
                                                "10 CIFAR, 5 ImageNet)")
    stabilize: int = field(10000, low=0, doc="K_s: iterations at full strength after the ramp, before removal "
                                             "(--stabilize_reg_interval; 10000 CIFAR, 40000 ImageNet); must be >= "
                                             "zero_out_interval × number of conv/linear layers")
    zero_out_interval: int = field(100, low=1, doc="layer k (forward order, all conv/linear layers) is zeroed after "
                                                   "every step once (k+1)·this iterations of stabilize have passed "
                                                   "(--zero_out_interval)")
    lr: float = field(1e-3, low=0, low_open=True, doc="constant learning rate of the phase (--lr_prune)")
    momentum: float = field(0.9, low=0, high=1, high_open=True, doc="SGD momentum of the phase (--momentum)")
    weight_decay: float | None = field(None, low=0, doc="SGD weight decay of the phase; null: the run's "
                                                        "retraining weight decay (the code uses --wd for both)")
    gram: bool = field(True, doc="the Gram decorrelation loss (paper Eq. 3; off = --lw_opp 0)")
    bn_reg: bool = field(True, doc="grad += r·γ_j, r·β_j on the pruned channels' BN (paper Eq. 5; off = --no_bn_reg)")
    weight_reg: bool = field(True, doc="grad += r·w_j, r·b_j on the pruned filters (GReg-1's growing L2; on in "
                                       "the code, not stated in the paper's slides; off = --no_weight_reg)")
    zero_bias: bool = field(True, doc="also zero a pruned filter's own bias when zeroing (the code zeroes only the "
                                      "weight and BN γ, β; a leftover bias of a BN-free layer such as the MLP's is "
                                      "then lost at removal, so false reproduces that small output change)")


@dataclass(frozen=True)
class StrengthSchedule(Ramp):
    """r(t) as a pure function of the iteration t (0-based, as ``fit`` counts): resumable without state.

    r = Δ·floor(t/K_u) until the first update with r >= τ, at t_s = ceil(τ/Δ)·K_u; then r stays at that value and
    the stabilize phase runs for K_s more iterations. The code's last iteration is t_s + K_s (it removes the
    filters after that step), so the phase has t_s + K_s + 1 steps.
    """

    @property
    def updates(self) -> int:
        """Updates until r >= τ (``Ramp.max_updates``)."""
        return self.max_updates

    @property
    def ramp_end(self) -> int:
        """t_s, the iteration at which r first reaches the ceiling and the stabilize phase starts."""
        return self.updates * self.update_interval

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole phase (ramp and stabilize)."""
        return self.ramp_end + self.stabilize + 1

    def strength(self, step: int) -> float:
        """r at iteration ``step``: the value set by the last update at or before it."""
        return self.delta * min(step // self.update_interval, self.updates)

    def stabilize_elapsed(self, step: int) -> int | None:
        """t − t_s during the stabilize phase, None during the ramp."""
        return step - self.ramp_end if step >= self.ramp_end else None


def decorrelation_mask(n: int, pruned: Tensor) -> Tensor:
    """The n × n mask 1 − m mᵀ: 1 where row or column is a pruned filter, 0 on kept-versus-kept entries."""
    keep = torch.ones(n)
    keep[pruned.cpu()] = 0.0
    return 1.0 - torch.outer(keep, keep)


def gram_penalty(weight: Tensor, mask: Tensor) -> Tensor:
    """(1/N²)·‖(W Wᵀ) ⊙ mask‖²_F for W = ``weight`` as N × rest: the code's MSE against a detached Gram matrix
    with pruned rows and columns zeroed (kept-versus-kept entries cancel). Gradient: (4/N²)·(G ⊙ mask)·W."""
    w = weight.flatten(1)
    return ((w @ w.t()) * mask).square().mean()


def forward_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the conv/linear layers in the order the forward pass first calls them (the code's layer index)."""
    names: list[str] = []
    handles = [module.register_forward_hook(lambda *_, name=name: names.append(name) if name not in names else None)
               for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return names


@dataclass(frozen=True)
class PrunedLayer:
    """One layer's picked filters: its name, its BatchNorm (if any), its forward index k and the pruned indices."""

    name: str
    batchnorm: str | None
    index: int
    pruned: Tensor  # LongTensor of pruned output channels, sorted


class TPPHooks(BaseHooks):
    """The phase's penalties and zeroing as ``fit`` hooks; every quantity is a function of the step (no state)."""

    def __init__(self, hparams: TPPHparams, schedule: StrengthSchedule, layers: list[PrunedLayer]) -> None:
        self.hparams = hparams
        self.schedule = schedule
        self.layers = layers
        self._model: nn.Module | None = None
        self._bound: list[tuple[PrunedLayer, nn.Module, nn.Module | None, Tensor, Tensor]] = []

    def _bind(self, model: nn.Module) -> list[tuple[PrunedLayer, nn.Module, nn.Module | None, Tensor, Tensor]]:
        """(layer, module, BatchNorm, pruned indices, Gram mask) per layer, on the model's device (cached)."""
        if model is not self._model:
            self._bound = []
            for layer in self.layers:
                module = model.get_submodule(layer.name)
                bn = model.get_submodule(layer.batchnorm) if layer.batchnorm else None
                device = module.weight.device
                mask = decorrelation_mask(module.weight.shape[0], layer.pruned).to(device, module.weight.dtype)
                self._bound.append((layer, module, bn, layer.pruned.to(device), mask))
            self._model = model
        return self._bound

    def penalty(self, model: nn.Module, step: int) -> Tensor | None:
        """λ·r·Σ_l gram_penalty: the Gram decorrelation term (none while r = 0, where it is exactly zero)."""
        r = self.schedule.strength(step)
        bound = self._bind(model)
        if not self.hparams.gram or r == 0 or not bound:
            return None
        total = torch.stack([gram_penalty(module.weight, mask) for _, module, _, _, mask in bound]).sum()
        return (self.hparams.lambda_gram * r) * total

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        """grad += r·param on the pruned filters' weights and biases and their BN scale and shift."""
        r = self.schedule.strength(step)
        if r == 0:
            return
        for _, module, bn, index, _ in self._bind(model):
            params = []
            if self.hparams.weight_reg:
                params += [module.weight, module.bias]
            if self.hparams.bn_reg and bn is not None:
                params += [bn.weight, bn.bias]
            for param in params:
                if param is not None:
                    param.grad.index_add_(0, index, param.index_select(0, index), alpha=r)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        """In stabilize, zero layer k's pruned filters and BN entries once t − t_s >= (k+1)·zero_out_interval."""
        elapsed = self.schedule.stabilize_elapsed(step)
        if elapsed is None:
            return
        for layer, module, bn, index, _ in self._bind(model):
            if elapsed < (layer.index + 1) * self.hparams.zero_out_interval:
                continue
            params = [module.weight, module.bias if self.hparams.zero_bias else None]
            if bn is not None:
                params += [bn.weight, bn.bias]
            for param in params:
                if param is not None:
                    param.index_fill_(0, index, 0.0)


@register_method("tpp")
class TPP(Method):
    """Pick by mean |w|, regularise the picked filters with a growing strength, zero them, then let them be removed."""
    # bench.py selftest's few-step phase (stabilize 22 >= resnet20's layers, one zeroed per step)
    selftest_options = {"delta": 0.5, "update_interval": 1, "stabilize": 22, "zero_out_interval": 1}

    Hparams = TPPHparams
    description = ("Wang & Fu 2023: decorrelate the picked filters (Gram) and shrink them and their BN with a growing "
                   "penalty, then remove them")
    group_aware = True  # the penalties and zeroing act on every member of a picked group

    def __init__(self, hparams: TPPHparams) -> None:
        super().__init__(hparams)
        self._keep: dict[str, Tensor] | None = None

    def schedule(self) -> StrengthSchedule:
        """The strength schedule these hyperparameters define."""
        hp = self.hparams
        return StrengthSchedule(hp.delta, hp.ceiling, hp.update_interval, hp.stabilize)

    def check(self, model: nn.Module, target: PruneTarget, input_shape: tuple[int, ...]) -> None:
        self._zeroing_order(model, input_shape)

    def _zeroing_order(self, model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
        """The conv/linear layers in forward order; the stabilize phase must give each its zero-out slot."""
        hp = self.hparams
        order = forward_order(model, input_shape)
        if hp.stabilize < hp.zero_out_interval * len(order):
            raise ConfigError(
                f"methods: tpp: stabilize = {hp.stabilize} is shorter than zero_out_interval × conv/linear layers = "
                f"{hp.zero_out_interval} × {len(order)} = {hp.zero_out_interval * len(order)}, so not every pruned "
                "layer would be zeroed before removal (the released code refuses this too). Raise 'stabilize' or "
                "lower 'zero_out_interval'.")
        return order

    def phase_steps(self, dense: Recipe, retrain: Recipe, steps_per_epoch: Callable[[int], int]) -> tuple[int, int]:
        """t_s + K_s + 1 steps at the retraining batch size."""
        return self.schedule().total_steps, retrain.batch_size

    def phase(self, model: nn.Module, ctx: RunContext) -> Phase:
        """Pick the filters on the dense model (recomputed identically on resume) and build the regularisation phase."""
        hp = self.hparams
        modules = dict(model.named_modules())
        scores = {name: filter_magnitude(modules[name]) for name in ctx.target.members()}
        self._keep = keep_from_scores(self.group_scores(scores, ctx.target), ctx.target)
        order = self._zeroing_order(model, ctx.input_shape)
        layers = []
        for name, index in ctx.target.member_indices(self._keep).items():
            n = modules[name].weight.shape[0]
            kept = torch.zeros(n, dtype=torch.bool)
            kept[index] = True
            pruned = torch.nonzero(~kept).flatten()
            if pruned.numel() == 0:
                continue  # a layer with nothing to prune gets no penalty, as in the code (pr = 0)
            bn = ctx.batchnorm_of.get(name)
            if bn is not None and not modules[bn].affine:
                raise ConfigError(f"methods: tpp: layer '{name}' is followed by BatchNorm '{bn}' without affine "
                                  "parameters, which TPP regularises and zeroes; use a model with affine BatchNorm.")
            layers.append(PrunedLayer(name, bn, order.index(name), pruned))
        schedule = self.schedule()
        weight_decay = ctx.retrain.weight_decay if hp.weight_decay is None else hp.weight_decay
        batch_size = ctx.retrain.batch_size
        recipe = Recipe(epochs=math.ceil(schedule.total_steps / ctx.data.steps_per_epoch(batch_size)), lr=hp.lr,
                        batch_size=batch_size, momentum=hp.momentum, weight_decay=weight_decay,
                        max_steps=schedule.total_steps)
        log.info("tpp: %d layers regularised (%d filters); ramp to r=%g ends at iteration %d, removal after %d steps",
                 len(layers), sum(layer.pruned.numel() for layer in layers), schedule.strength(schedule.ramp_end),
                 schedule.ramp_end, schedule.total_steps)
        return Phase(recipe=recipe, hooks=[TPPHooks(hp, schedule, layers)])

    def select(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        """The filters picked at the start of the phase: TPP never revisits its choice."""
        if self._keep is None:
            raise RuntimeError("tpp: select() was called before phase(), which picks the filters")
        return self._keep
