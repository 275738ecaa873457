"""OrthoReg (Lubana, Trivedi, Hougen, Dick & Hero 2020), following the official code (EkdeepSLubana/OrthoReg).

Loss-preservation importance is additive over a group of filters only if the filters are uncorrelated, so OrthoReg
trains with a regulariser pushing every conv layer's filters towards orthonormality, with weight decay off,

    λ · Σ_l α_l · ‖G_l − I‖₁,  G_l = M_l M_lᵀ (or M_lᵀ M_l when M_l has more rows than columns),
    α_l = √n_l / Σ_l' √n_l',   n_l = min(rows, columns) of M_l (``alpha: smaller_side``, the default),

where M_l is the layer's weight as one row per filter (with the bias as an extra column when the conv has one) and the
norm is entrywise L1 (the code's ``.norm(1)``; whether the paper writes L1 or Frobenius is UNCERTAIN, its text was not
available). Filters are then scored by the squared first-order Taylor estimate I_f = (Σ_{j∈f} θ_j·ḡ_j)², ḡ the gradient
of the mean cross-entropy averaged over about 10,000 training samples in eval mode, and the lowest scores are removed
under one global ranking in which every layer keeps about 5% + 1 of its filters.

Protocols (``protocol``):
- ``early_bird``: the dense model itself is trained with the regulariser and no weight decay (the code's EBT mode:
  25 epochs from scratch, 24 at lr 0.1 and 1 at 0.01: ``dense_low_lr_epochs: 1`` on the suite's constant-LR pretrain,
  which is the baselines' 25 epochs at 0.1 with weight decay 1e-4); one global prune; retrain.
- ``iterative``: a phase on the shared dense model (``start: dense``, the code at dc8391b, which loads its 160-epoch
  base model). At 869f049, the commit the README cites, that load is commented out and the first 25 ortho epochs
  train from scratch: ``start: scratch`` (with ``between``) makes those epochs the dense variant (``round_epochs`` at
  ``lr``, the last at lr/10, weight decay 0, whatever the suite's pretrain, which stays the baselines' base model),
  prunes round 1 at the phase's start and continues with the ``between`` epochs (at the retraining recipe's weight
  decay, the code's single wd). With ``between: [35, 35, 10]``
  it is the code's VGG path: 25 ortho epochs (24 at lr, 1 at lr/10, weight decay 0), then at the end of each round but
  the last r_i = p / ((i+1)·p + n·(1 − p)) of the remaining filters are zeroed (masked, and kept at zero), 80 epochs
  follow without the regulariser (35 / 35 / 10 at lr, lr/10, lr/100, the dense recipe's weight decay 1e-4) and 25
  ortho epochs again; ``select`` removes the last round's share with all masked ones, and the suite's retraining is
  the code's final one. With ``lam: 0`` (its baselines) the first round prunes the dense model and the rounds are
  separated by the ``between`` epochs only (the code: [40, 40, 20]). On ResNet and MobileNet the code's fine-tune
  calls its VGG regulariser (``vgg_train_ortho``) and cannot have run as written; here they follow the paper's
  protocol, the VGG path with each model's own regulariser (UNCERTAIN: the paper's text was not available to check).
  Without ``between`` (the default, an earlier protocol of this harness) the regulariser stays on between rounds of
  ``round_epochs`` and only the phase's last epoch runs at lr/10. Deviations: the code physically removes each
  round's filters and starts a fresh SGD optimizer for each stage (here one optimizer, so momentum carries over);
  the code's iterative runs used Adam with unknown settings (README), here SGD (UNCERTAIN). The intermediate masks
  zero a layer and its BatchNorm; a depthwise conv after it (MobileNet) still passes its BatchNorm shift until removal.

The code's own rules, each a named option the OrthoReg suites set (as they set ``pretrain.init: torch_default``, the
code's PyTorch-default init): ``alpha: code`` weights the first conv and every
depthwise conv by √C_out (VGG-13 64 not 27, MobileNet's stem 32 not 27, a depthwise conv its width not 9, ResNet's
stem 64 not 27) and a ResNet projection shortcut by its block conv1's √C_out while its own √C_in enters the
normaliser (1.41x the default's weight); on a PyTorch-default-initialised model (seed 0) the penalty is then 0.984x
the default's on VGG-13, 0.615x on MobileNet-V1, 1.034x on ResNet-34. ``budget: bn_channels`` counts the ratio in
BatchNorm channels as the code's MobileNet does (a channel feeding a depthwise conv costs two units, the depthwise
conv's copy of its score ranking with it; p of 10,944 units go, not p of 5,984 channels). ``unspent: drop`` is the
code's ResNet keep-one floor: a layer the cut would empty keeps its best filter and that budget is not spent
elsewhere (the default reassigns it, as the code's VGG/MobileNet floor, which stands outside the ranking, does).

Further deviations, all deliberate: the floor protects each layer's most important filters (the code protects the
highest indices: ``prune.floor_keeps: index``), and it is the code's VGG/MobileNet floor int(0.05·n) + 1 on every
model unless a suite sets ``floor_fraction: 0`` (one filter kept per layer, with ``unspent: drop`` the code's ResNet
rule; ``prune.floor_fraction`` gives the same floor to the baselines); ``ceil(p·N)`` filters go where the code removes
``int(p·N)`` (equal where p·N is whole). The code ranks a ResNet's conv1, conv2 and shortcut convs together and
zero-masks conv2 and shortcut outputs per block: with ``prune.mode: mask`` and those layers the harness does the same
(suites/orthoreg_resnet34_cifar100.yaml); removing instead, a ResNet prunes each block's conv1
(the block-internal channels). ``lam: 0`` gives the code's "Fisher" baseline: the same importance and ranking
on the shared dense model, without the regulariser (and with the recipe's weight decay).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import (
    BaseHooks,
    ConfigError,
    DenseVariant,
    Method,
    Phase,
    Recipe,
    RunContext,
    Schedule,
    counting_flops,
    derive_seed,
    field,
    global_ratio,
    ratio_count,
    register_method,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- the regulariser

def filter_matrix(conv: nn.Conv2d) -> Tensor:
    """The weight as one row per filter, with the bias appended as a column when the conv has one (VGG-13's)."""
    matrix = conv.weight.flatten(1)
    return matrix if conv.bias is None else torch.cat([matrix, conv.bias[:, None]], dim=1)


def gram_deviation(conv: nn.Conv2d) -> Tensor:
    """‖G − I‖₁ (sum of absolute entries), G the Gram matrix of the smaller side of ``filter_matrix``."""
    m = filter_matrix(conv)
    gram = m @ m.t() if m.shape[0] <= m.shape[1] else m.t() @ m
    return (gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)).abs().sum()


def orthogonality(conv: nn.Conv2d) -> float:
    """The code's "degree of orthogonality" ‖diag(G)‖₁ / ‖G‖₁ of the smaller-side Gram matrix: 1 when orthogonal."""
    with torch.no_grad():
        m = filter_matrix(conv)
        gram = m @ m.t() if m.shape[0] <= m.shape[1] else m.t() @ m
        return float(torch.diagonal(gram).abs().sum() / gram.abs().sum())


def _is_shortcut(name: str) -> bool:
    """A projection shortcut's conv (``...shortcut.0``, torchvision's ``...downsample.0``)."""
    return any(part in ("shortcut", "downsample") for part in name.split("."))


def layer_weights(model: nn.Module, rule: str = "smaller_side") -> dict[str, float]:
    """α_l per Conv2d: √n_l / Σ √n_l'. ``smaller_side``: n_l = min(rows, columns) of its filter matrix. ``code``: the
    OrthoReg code's n_l, C_out for the first conv and for depthwise convs, min(rows, columns) elsewhere; a projection
    shortcut counts its own √min(rows, columns) in the sum but is weighted with its block's ``conv1`` numerator (the
    code's ``res_train_ortho`` reuses ``l_imp[...][2*b_id]``), so the code's α need not sum to 1."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    smaller = {name: min(m.out_channels, m.weight[0].numel() + (m.bias is not None)) for name, m in convs.items()}
    if rule == "smaller_side":
        total = sum(math.sqrt(n) for n in smaller.values())
        return {name: math.sqrt(n) / total for name, n in smaller.items()}
    if rule != "code":
        raise ValueError(f"unknown α rule {rule!r}; known: smaller_side, code")
    first = next(iter(convs), None)
    counted = {name: m.out_channels if name == first or (m.groups > 1 and m.groups == m.in_channels == m.out_channels)
               else smaller[name] for name, m in convs.items()}
    total = sum(math.sqrt(n) for n in counted.values())
    applied = dict(counted)
    for name in convs:
        if _is_shortcut(name):
            block = name.split(".shortcut")[0].split(".downsample")[0]
            applied[name] = counted.get(f"{block}.conv1", convs[name].out_channels)
    return {name: math.sqrt(n) / total for name, n in applied.items()}


class OrthoPenalty(BaseHooks):
    """λ · Σ_l α_l ‖G_l − I‖₁ over every conv layer (α by ``alpha``'s rule from the model's shapes when first seen)."""

    def __init__(self, lam: float, alpha: str = "smaller_side") -> None:
        self.lam, self.alpha = lam, alpha
        self._model: nn.Module | None = None
        self._terms: list[tuple[nn.Conv2d, float]] = []

    def penalty(self, model: nn.Module, step: int) -> Tensor | None:
        if model is not self._model:
            alphas = layer_weights(model, self.alpha)
            if not alphas:
                raise ConfigError("methods: orthoreg: the model has no Conv2d layer to orthogonalise.")
            self._terms = [(model.get_submodule(name), alpha) for name, alpha in alphas.items()]
            self._model = model
        return self.lam * torch.stack([alpha * gram_deviation(conv) for conv, alpha in self._terms]).sum()


# ----------------------------------------------------------------------------------------- importance

def taylor_importance(model: nn.Module, layers: list[str], data: Any, samples: int, batch_size: int, seed: int,
                      device: torch.device) -> dict[str, Tensor]:
    """I_f = (Σ_{j∈f} θ_j·ḡ_j)² per output filter (weights and bias), ḡ the mean-CE gradient averaged over batches
    until at least ``samples`` training samples were seen, in eval mode (BN on running statistics)."""
    was_training = model.training
    model.eval()
    params = []
    for name in layers:
        module = model.get_submodule(name)
        params += [module.weight] + ([module.bias] if module.bias is not None else [])
    total = [torch.zeros_like(p) for p in params]
    seen = batches = 0
    try:
        for x, y in data.train_batches(batch_size, seed, device):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            for acc, g in zip(total, grads):
                acc.add_(g)
            seen, batches = seen + y.numel(), batches + 1
            if seen >= samples:
                break
    finally:
        model.train(was_training)
    scores, i = {}, 0
    with torch.no_grad():
        for name in layers:
            module = model.get_submodule(name)
            contribution = (module.weight * total[i] / batches).flatten(1).sum(1)
            i += 1
            if module.bias is not None:
                contribution = contribution + module.bias * total[i] / batches
                i += 1
            scores[name] = contribution.square().float().cpu()
    return scores


# ----------------------------------------------------------------------------------------- selection

def round_fractions(ratio: float, rounds: int) -> list[float]:
    """r_i = p / ((i+1)·p + n·(1 − p)): the share of the remaining filters each round removes (Π(1 − r_i) = 1 − p)."""
    return [ratio / ((i + 1) * ratio + rounds * (1 - ratio)) for i in range(rounds)]


def cumulative_fraction(ratio: float, rounds: int, done: int) -> float:
    """The share of the original filters pruned after ``done`` rounds: 1 − Π_{i<done}(1 − r_i) = k·p/(k·p + n(1−p))."""
    return done * ratio / (done * ratio + rounds * (1 - ratio)) if done else 0.0


def drop_lowest(scores: dict[str, Tensor], counts: dict[str, int] | int, floors: dict[str, int],
                pruned: dict[str, set[int]], by_index: bool = False, costs: dict[str, int] | None = None,
                reassign: bool = True) -> dict[str, set[int]]:
    """Grow the ``pruned`` sets by the lowest-scoring live filters: ``counts`` more per layer, or one global count
    over all layers; no layer goes below its floor, made of its most important live filters or (``by_index``, the
    code's ``constrain_ratios``) of its highest-index live ones. Ties go to the earlier layer and lower index.

    Under a global count a filter spends ``costs[layer]`` units (default 1; the last may overdraw, as the code's
    ranking takes a channel whose first copy is in); a filter its layer's floor keeps spends none and the next goes
    (``reassign``), or spends its cost and nothing goes in its place (``reassign=False``, the code's ResNet rule)."""
    result = {name: set(pruned.get(name, set())) for name in scores}
    order = list(scores)
    protected = {name: set() for name in order}
    if by_index:
        for name in order:
            live = [i for i in range(scores[name].numel()) if i not in result[name]]
            protected[name] = set(live[len(live) - min(floors[name], len(live)):])

    def live_sorted(names: list[str]) -> list[tuple[float, int, int]]:
        return sorted((float(v), order.index(name), i) for name in names
                      for i, v in enumerate(scores[name]) if i not in result[name])

    groups = [(order, counts)] if isinstance(counts, int) else [([name], counts[name]) for name in order]
    unit = costs or {}
    for names, n in groups:
        for _, layer, i in live_sorted(names):
            if n <= 0:
                break
            name = order[layer]
            if i in protected[name]:
                continue
            cost = unit.get(name, 1)
            if scores[name].numel() - len(result[name]) > floors[name]:
                result[name].add(i)
                n -= cost
            elif not reassign:
                n -= cost
    return result


def filter_indices(model: nn.Module, pruned: dict[str, set[int]]) -> dict[str, Tensor]:
    """The pruned filters of each layer as an index tensor on that layer's device (layers with none left out)."""
    return {name: torch.tensor(sorted(indices), dtype=torch.long, device=model.get_submodule(name).weight.device)
            for name, indices in pruned.items() if indices}


@torch.no_grad()
def zero_filters_(model: nn.Module, ctx: RunContext, indices: dict[str, Tensor]) -> None:
    """Zero the pruned filters' weights, biases and BatchNorm scale and shift, so those channels output 0."""
    for name, index in indices.items():
        module = model.get_submodule(name)
        bn = ctx.batchnorm_of.get(name)
        for owner in [module] + ([model.get_submodule(bn)] if bn is not None else []):
            for param in (owner.weight, owner.bias):
                if param is not None:
                    param.index_fill_(0, index, 0.0)


# ----------------------------------------------------------------------------------------- the method

@dataclass
class OrthoRegHparams:
    """The code's constants (CIFAR-100, EBT mode by default)."""

    lam: float = field(1e-2, low=0, doc="λ of the ortho term (1e-2 VGG-13/ResNet; the code: 1e-3 for MobileNet-V1); "
                                        "0: the 'Fisher' baseline on the shared dense model")
    protocol: Literal["early_bird", "iterative"] = field(
        "early_bird", doc="early_bird: dense training with the ortho term (wd 0), one prune; iterative: ortho phase "
                          "on the dense model with pruning rounds")
    rounds: int = field(2, low=1, doc="iterative: pruning rounds n")
    round_epochs: int = field(25, low=1, doc="iterative: regularised epochs before each round's pruning")
    lr: float = field(0.1, low=0, low_open=True, doc="iterative: learning rate of the phase (lr/10 in its last "
                                                       "epoch, or with ``between`` in each round's last ortho epoch)")
    importance_samples: int = field(10000, low=1, doc="training samples the gradient ḡ is averaged over")
    importance_batch_size: int = field(128, low=1, doc="batch size of the importance pass")
    floor_fraction: float = field(0.05, low=0, high=1, high_open=True,
                                  doc="each layer keeps at least floor(fraction × filters) + 1 (and prune's floor)")
    dense_low_lr_epochs: int = field(
        0, low=0, keyed_at_default=False,
        doc="early_bird: the dense model's last k epochs at lr/10 after the suite's constant pretrain LR (the code's "
            "EBT: 1 of 25, 'better orthonormality'); 0: the suite's pretrain schedule as it is")
    between: list[int] = field(
        default_factory=list, low=0, keyed_at_default=False,
        doc="iterative: epochs at lr, lr/10, lr/100, ... retrained without the regulariser (the dense recipe's weight "
            "decay) after each round's pruning but the last (the code: [35, 35, 10]; its Fisher baseline, lam 0: "
            "[40, 40, 20]); each round's ortho epochs then end with one at lr/10. []: the regulariser stays on "
            "between rounds and only the phase's last epoch runs at lr/10")
    scope: Literal["global", "layerwise"] = field(
        "global", doc="global: one ranking over all pruned layers (the code, whatever prune.scope says); layerwise: "
                      "each layer's prune.ratios value")
    start: Literal["dense", "scratch"] = field(
        "dense", keyed_at_default=False,
        doc="iterative with between: where the ortho training starts: dense, the phase fine-tunes the shared dense "
            "model (the code at dc8391b, from its base model); scratch, the code at 869f049 (base-model load "
            "commented out): the first round's ortho epochs are the dense training itself (the early-bird dense "
            "model, from the suite's init), pruned at the phase's start")
    alpha: Literal["smaller_side", "code"] = field(
        "smaller_side", keyed_at_default=False,
        doc="the layer weights α_l = √n_l / Σ√n: smaller_side, n_l = min(rows, columns) of every conv; code, the "
            "released code's: C_out for the first conv and depthwise convs, and a projection shortcut weighted with "
            "its block conv1's √C_out but counted with its own √min in the sum")
    budget: Literal["channels", "bn_channels"] = field(
        "channels", keyed_at_default=False,
        doc="global: what the ratio counts: channels, each pruned channel once; bn_channels, every BatchNorm "
            "channel (the code's MobileNet: a channel feeding a depthwise conv costs two units, its own BN's and the "
            "depthwise conv's copy, and p of all units go)")
    unspent: Literal["reassign", "drop"] = field(
        "reassign", keyed_at_default=False,
        doc="global: a filter the floor keeps, though the ranking reached it: reassign, the next lowest filter "
            "elsewhere goes instead (the code's VGG and MobileNet floor, outside the ranking); drop, its budget is "
            "not spent (the code's ResNet keep-one rule: fewer filters go)")


class RoundHooks(BaseHooks):
    """Iterative protocol: zero r_i of the remaining filters at the end of each round but the last, keep them zero.

    ``ends`` maps the last step of each round but the last to the rounds done once it is taken. The pruned filters'
    indices are kept on the device between rounds: a step creates no tensor from host data."""

    def __init__(self, method: OrthoReg, ctx: RunContext, ends: dict[int, int]) -> None:
        self.method, self.ctx, self.ends = method, ctx, ends
        self._indices: tuple[nn.Module, dict[str, Tensor]] | None = None  # (model, indices) of method.pruned
        self._scoring_flops = 0  # the rounds' importance passes, for the run's training cost

    def after_step(self, model: nn.Module, step: int) -> None:
        if step in self.ends:
            with counting_flops() as counted:
                self.method.prune_round(model, self.ctx, self.ends[step])
            self._scoring_flops += counted()
            self._indices = None
        if self._indices is None or self._indices[0] is not model:
            self._indices = (model, filter_indices(model, self.method.pruned))
        zero_filters_(model, self.ctx, self._indices[1])

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": {name: sorted(s) for name, s in self.method.pruned.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.pruned = {name: set(s) for name, s in state["pruned"].items()}
        self._indices = None

    def spent_flops(self) -> int:
        return self._scoring_flops


class SegmentHooks(BaseHooks):
    """The code's iterative phase in one training loop: the ortho term in its regularised epochs; in the others weight
    decay, added to the gradients as SGD's ``weight_decay`` would (the phase's optimizer has none)."""

    def __init__(self, lam: float, weight_decay: float, regularised: list[bool], steps_per_epoch: int,
                 alpha: str = "smaller_side") -> None:
        self.ortho = OrthoPenalty(lam, alpha)
        self.weight_decay, self.regularised, self.steps_per_epoch = weight_decay, regularised, steps_per_epoch

    def penalty(self, model: nn.Module, step: int) -> Tensor | None:
        return self.ortho.penalty(model, step) if self.regularised[step // self.steps_per_epoch] else None

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        if self.weight_decay and not self.regularised[step // self.steps_per_epoch]:
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.add_(param, alpha=self.weight_decay)


def prunes_first(hp: OrthoRegHparams) -> bool:
    """Whether the code's iterative phase prunes round 1 before its first step: its baselines (λ = 0), and
    ``start: scratch``, whose first ortho epochs were the dense training."""
    return hp.lam == 0 or hp.start == "scratch"


def code_segments(hp: OrthoRegHparams) -> tuple[list[float], list[bool], list[int]]:
    """The code's iterative phase per epoch: LR factor and whether the ortho term is on; and the epochs after which
    a round prunes. λ > 0: each round's ortho epochs (the last at lr/10), with ``between`` unregularised epochs
    (at lr, lr/10, lr/100) after each pruning; λ = 0 (its baselines): only the ``between`` epochs, the first round
    pruned before the phase; ``start: scratch``: the first round's ortho epochs left out (the dense training), the
    first round pruned before the phase."""
    ortho = [1.0] * (hp.round_epochs - 1) + [0.1] if hp.lam > 0 else []
    plain = [0.1 ** i for i, epochs in enumerate(hp.between) for _ in range(epochs)]
    lead = [] if prunes_first(hp) else ortho
    factors, regularised, ends = list(lead), [True] * len(lead), []
    for _ in range(hp.rounds - 1):
        ends.append(len(factors) - 1)
        factors += plain + ortho
        regularised += [False] * len(plain) + [True] * len(ortho)
    return factors, regularised, ends[1:] if prunes_first(hp) else ends


def piecewise(factors: list[float]) -> Schedule:
    """The per-epoch LR factors as a piecewise schedule (a milestone where the factor changes)."""
    milestones = [e for e in range(1, len(factors)) if factors[e] != factors[e - 1]]
    return Schedule(name="piecewise", milestones=milestones, factors=[factors[0]] + [factors[e] for e in milestones])


@register_method("orthoreg")
class OrthoReg(Method):
    """Orthonormality-regularised training, then global squared-Taylor pruning (one shot or in rounds)."""
    selftest_options = {"protocol": "iterative", "round_epochs": 1, "importance_samples": 32}
    needs_convolutions = True

    Hparams = OrthoRegHparams
    description = ("Lubana et al. 2020 (OrthoReg): train with an L1 filter-orthonormality penalty, no weight decay; "
                   "prune by squared Taylor importance, globally")

    def __init__(self, hparams: OrthoRegHparams) -> None:
        super().__init__(hparams)
        self.pruned: dict[str, set[int]] = {}

    def dense_variant(self) -> DenseVariant | None:
        hp = self.hparams
        if hp.start == "scratch" and (hp.protocol != "iterative" or not hp.between):
            raise ConfigError("methods: orthoreg: start: scratch is the code's iterative path (869f049), which needs "
                              "protocol: iterative and between epochs (the code's [35, 35, 10]); set them or drop "
                              "start (early_bird always trains its dense model from scratch).")
        if hp.lam == 0 or (hp.protocol != "early_bird" and hp.start != "scratch"):
            return None
        key: dict[str, Any] = {"lam": hp.lam, "weight_decay": 0.0}
        if hp.alpha != "smaller_side":
            key["alpha"] = hp.alpha
        if hp.dense_low_lr_epochs:
            key["low_lr_epochs"] = hp.dense_low_lr_epochs
        if hp.start == "scratch":
            key |= {"start": "scratch", "epochs": hp.round_epochs, "lr": hp.lr}

        def ortho_recipe(recipe: Recipe) -> Recipe:
            """No weight decay; with ``dense_low_lr_epochs``, the last epochs at lr/10 (the code's 24 + 1); with
            ``start: scratch``, the first round's ortho epochs whatever the suite's pretrain says (its Fisher
            baseline's base model): ``round_epochs`` at ``lr``, the last at lr/10 (the code's [24, 1])."""
            recipe = replace(recipe, weight_decay=0.0)
            if hp.start == "scratch":
                return replace(recipe, epochs=hp.round_epochs, lr=hp.lr, schedule=Schedule(
                    name="step", milestones=[hp.round_epochs - 1] if hp.round_epochs > 1 else [], gamma=0.1))
            k = hp.dense_low_lr_epochs
            if not k:
                return recipe
            if recipe.schedule.name != "constant" or not 0 < k < recipe.epochs:
                raise ConfigError(f"methods: orthoreg: dense_low_lr_epochs {k} ends the dense training at lr/10, "
                                  "which needs pretrain.schedule constant (the code's baselines) and more than "
                                  f"{k} pretrain epochs; set pretrain.schedule: {{name: constant}} or drop it.")
            return replace(recipe, schedule=Schedule(name="step", milestones=[recipe.epochs - k], gamma=0.1))

        return DenseVariant(key={"orthoreg": key}, hooks=[OrthoPenalty(hp.lam, hp.alpha)],
                            recipe=ortho_recipe)

    def phase_steps(self, dense: Recipe, retrain: Recipe, steps_per_epoch: Callable[[int], int]
                    ) -> tuple[int, int] | None:
        """The iterative protocol's epochs at the dense batch size (rounds × round_epochs, or with ``between`` the
        code's segments); early-bird has no phase."""
        hp = self.hparams
        if hp.protocol != "iterative":
            return None
        epochs = len(code_segments(hp)[0]) if hp.between else hp.rounds * hp.round_epochs
        return epochs * steps_per_epoch(dense.batch_size), dense.batch_size

    def phase(self, model: nn.Module, ctx: RunContext) -> Phase | None:
        hp = self.hparams
        if hp.protocol != "iterative":
            return None
        self.pruned = {name: set() for name in ctx.target.layers}
        dense = ctx.dense_recipe
        steps = ctx.data.steps_per_epoch(dense.batch_size)
        if hp.between:
            factors, regularised, ends = code_segments(hp)
            if prunes_first(hp) and hp.rounds > 1:
                self.prune_round(model, ctx, 1)  # the code's baselines, or the ortho dense model (start: scratch)
            if not factors:
                return None
            recipe = Recipe(epochs=len(factors), lr=hp.lr, batch_size=dense.batch_size, momentum=dense.momentum,
                            nesterov=dense.nesterov, weight_decay=0.0, schedule=piecewise(factors))
            done = 2 if prunes_first(hp) else 1
            rounds = RoundHooks(self, ctx, {(end + 1) * steps - 1: done + i for i, end in enumerate(ends)})
            # the unregularised epochs' weight decay: the dense recipe's (the code's single wd); with start: scratch
            # the dense recipe is the ortho one (wd 0), so the retraining recipe's
            decay = ctx.retrain.weight_decay if hp.start == "scratch" else dense.weight_decay
            segments = SegmentHooks(hp.lam, decay, regularised, steps, hp.alpha)
            return Phase(recipe=recipe, hooks=[segments, rounds])
        epochs = hp.rounds * hp.round_epochs
        schedule = Schedule(name="step", milestones=[epochs - 1] if epochs > 1 else [], gamma=0.1)
        recipe = Recipe(epochs=epochs, lr=hp.lr, batch_size=dense.batch_size, momentum=dense.momentum,
                        nesterov=dense.nesterov, weight_decay=0.0 if hp.lam > 0 else dense.weight_decay,
                        schedule=schedule)
        hooks: list[Any] = [OrthoPenalty(hp.lam, hp.alpha)] if hp.lam > 0 else []
        ends = {(i + 1) * hp.round_epochs * steps - 1: i + 1 for i in range(hp.rounds - 1)}
        hooks.append(RoundHooks(self, ctx, ends))
        return Phase(recipe=recipe, hooks=hooks)

    def importance(self, model: nn.Module, ctx: RunContext, round_index: int) -> dict[str, Tensor]:
        """Squared Taylor scores of the target layers' filters on the current model."""
        hp = self.hparams
        return taylor_importance(model, ctx.target.layers, ctx.data, hp.importance_samples,
                                 hp.importance_batch_size, derive_seed(ctx.seed, "orthoreg", round_index), ctx.device)

    def floors(self, model: nn.Module, ctx: RunContext) -> dict[str, int]:
        """Filters each layer keeps at least: floor(fraction·n) + 1, and prune's floor, at most n (n: the layer's
        original filters, also in later rounds, as the code's ``constrain_ratios``)."""
        sizes = {name: model.get_submodule(name).weight.shape[0] for name in ctx.target.layers}
        return {name: min(n, max(ctx.target.floor(n), int(self.hparams.floor_fraction * n) + 1))
                for name, n in sizes.items()}

    def unit_costs(self, ctx: RunContext, layers: list[str]) -> dict[str, int]:
        """Budget units per filter of each layer: 1, or with ``budget: bn_channels`` the BatchNorms its channel goes
        with (the code's MobileNet count: its own and, where it feeds a depthwise conv, that conv's)."""
        if self.hparams.budget == "channels":
            return dict.fromkeys(layers, 1)
        groups = ctx.target.groups
        return {name: max(1, len(groups[name].normalisation)) if name in groups else 1 for name in layers}

    def prune_round(self, model: nn.Module, ctx: RunContext, done: int) -> None:
        """Extend ``self.pruned`` to the share of filters due after round ``done`` − 1 and zero them (``done`` rounds
        have been trained; the last round's share is reached exactly, the ratio's ceil(p·N) filters)."""
        hp = self.hparams
        rounds = hp.rounds if hp.protocol == "iterative" else 1
        scores = self.importance(model, ctx, done)
        last = done == rounds
        sizes = {name: s.numel() for name, s in scores.items()}
        costs: dict[str, int] | None = None
        if hp.scope == "global":
            ratio = global_ratio(ctx.target, self.name)
            share = ratio if last else cumulative_fraction(ratio, rounds, done)
            costs = self.unit_costs(ctx, list(sizes))
            total = sum(n * costs[name] for name, n in sizes.items())
            due = ratio_count(share, total) if last else round(share * total)
            counts: dict[str, int] | int = due - sum(len(s) * costs[name] for name, s in self.pruned.items())
        else:
            counts = {}
            for name, n in sizes.items():
                ratio = ctx.target.ratios[name]
                share = ratio if last else cumulative_fraction(ratio, rounds, done)
                due = ratio_count(share, n) if last else round(share * n)
                counts[name] = due - len(self.pruned.get(name, set()))
        self.pruned = drop_lowest(scores, counts, self.floors(model, ctx), self.pruned,
                                  by_index=ctx.target.floor_keeps == "index", costs=costs,
                                  reassign=hp.unspent == "reassign")
        zero_filters_(model, ctx, filter_indices(model, self.pruned))
        log.info("orthoreg: after round %d of %d, %d of %d filters pruned", done, rounds,
                 sum(len(s) for s in self.pruned.values()), sum(sizes.values()))

    def select(self, model: nn.Module, ctx: RunContext) -> dict[str, Tensor]:
        """The final (or only) round on the current model; returns the cumulative keep sets."""
        rounds = self.hparams.rounds if self.hparams.protocol == "iterative" else 1
        if self.hparams.protocol != "iterative":
            self.pruned = {name: set() for name in ctx.target.layers}
        convs = [m for m in map(model.get_submodule, ctx.target.layers) if isinstance(m, nn.Conv2d)]
        if convs:
            log.info("orthoreg: mean degree of orthogonality of the pruned convs before selection: %.3f",
                     sum(map(orthogonality, convs)) / len(convs))
        self.prune_round(model, ctx, rounds)
        return {name: torch.tensor([i for i in range(model.get_submodule(name).weight.shape[0])
                                    if i not in self.pruned[name]], dtype=torch.long)
                for name in ctx.target.layers}
