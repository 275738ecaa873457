"""What a pruning method is to the harness: a registry entry with typed hyperparameters and optional hooks.

A method subclasses ``Method``, declares its hyperparameters as a dataclass (the paper's defaults), and
overrides only the hooks it needs; the runner calls them in this order for every run:

    dense_variant -> phase -> select -> (physical removal by the harness) -> after_slim -> retrain

Several components can be chained in a suite (``l1 + orthp``): the first one that selects chooses the
channels, and every component's other hooks run in order.

``dense_variant``, ``phase``, ``select`` and ``after_slim`` must not depend on the swept retraining learning rate
(``ctx.retrain.lr``): the pruned model they produce is made once and shared by the runs that differ only in it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from bench.core.errors import ConfigError, UserError
from bench.core.registry import METHODS
from bench.pruning import num_pruned, ratio_count
from bench.pruning.groups import Group
from bench.training.hooks import TrainHooks
from bench.training.train import Recipe


@dataclass
class NoHparams:
    """For methods without hyperparameters."""


@dataclass
class PruneTarget:
    """Which layers a run prunes and by how much, as the suite and the run's ratio define it."""

    layers: list[str]                # prunable layer names, in forward order
    ratios: dict[str, float]         # the requested ratio of each layer (layerwise) or the global ratio
    scope: str                       # "layerwise" or "global"
    min_keep: int = 1                # floor per layer: global ranking and quantile cuts, not layerwise counts
    count_rule: str = "ceil"         # how a layerwise cut counts the filters it removes (bench.pruning.num_pruned)
    # the coupled channel group each layer leads (bench.groups); a layer without an entry prunes its own channels
    groups: dict[str, Group] = field(default_factory=dict)
    floor_fraction: float = 0.0      # the floor is int(floor_fraction · n) + min_keep of a layer's n channels
    floor_keeps: str = "important"   # which channels the floor keeps: the most important, or the highest indices

    def floor(self, channels: int) -> int:
        """Channels a layer of ``channels`` keeps at least: int(floor_fraction · n) + min_keep, at most n."""
        return min(channels, int(self.floor_fraction * channels) + self.min_keep)

    def protected(self, channels: int) -> set[int]:
        """The indices ``floor_keeps: index`` protects (the OrthoReg code's floor: the highest ones); else none."""
        return set(range(channels - self.floor(channels), channels)) if self.floor_keeps == "index" else set()

    def members(self) -> list[str]:
        """Every layer whose output channels the target prunes: each group's producers (a chain: the layer)."""
        found = [m for name in self.layers for m in (self.groups[name].producers if name in self.groups else [name])]
        return list(dict.fromkeys(found))

    def coupled(self) -> list[Group]:
        """The groups that span more than one layer's channels or prune whole heads."""
        return [g for name, g in self.groups.items() if name in self.layers and g.kind in ("coupled", "heads")]

    def member_indices(self, units: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Units (kept or pruned) of each layer's group, as output-channel indices of every member."""
        found = {}
        for name, index in units.items():
            group = self.groups.get(name)
            if group is None:
                found[name] = index
                continue
            found.update({member: group.channels(member, index) for member in group.producers})
        return found


@dataclass
class RunContext:
    """What the harness hands to a method's hooks for one run."""

    target: PruneTarget
    data: Any                        # bench.data dataset (train_batches, test_batches, probe, info)
    device: torch.device
    seed: int
    nonlinearity: str                # "linear" or "relu": the model's activation (for gains)
    batchnorm_of: dict[str, str | None]  # the BatchNorm that follows each prunable layer, if any
    dense_recipe: Recipe             # how the dense model was trained (Scratch reuses it)
    retrain: Recipe                  # this run's retraining recipe (its learning rate is the swept one)
    input_shape: tuple[int, ...] = (1, 3, 32, 32)   # a batch of one input, (1, C, H, W)
    flops: dict[str, int] = field(default_factory=dict)  # "dense", then "pruned" once removal is done
    generator: torch.Generator = field(default_factory=torch.Generator)


@dataclass
class Phase:
    """A method's own training phase between the dense model and selection (e.g. TPP's regularisation).

    The harness trains it with the suite's ``performance`` options, whatever ``recipe.performance`` says."""

    recipe: Recipe
    hooks: list[TrainHooks]
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None


@dataclass
class DenseVariant:
    """A change to dense training (e.g. a bounded BatchNorm); its key enters the dense model's cache id."""

    key: dict[str, Any]
    prepare: Callable[[nn.Module], nn.Module] | None = None    # applied to the fresh model before training
    hooks: list[TrainHooks] = field(default_factory=list)
    param_groups: Callable[[nn.Module, Recipe], list[dict[str, Any]]] | None = None
    # the dense recipe as this variant trains it (its own schedule, say); what it changes must be in ``key``
    recipe: Callable[[Recipe], Recipe] | None = None


def with_dense_variants(recipe: Recipe, methods: Sequence[Method]) -> Recipe:
    """``recipe`` (the suite's dense recipe) as the methods' dense variants change it (their own schedule, say)."""
    for variant in (m.dense_variant() for m in methods):
        if variant is not None and variant.recipe is not None:
            recipe = variant.recipe(recipe)
    return recipe


class Method:
    """Base class of pruning methods; subclasses override the hooks they need."""

    Hparams: ClassVar[type] = NoHparams
    description: ClassVar[str] = ""
    selects: ClassVar[bool] = True      # False for components that only act after removal (re-initialisers)
    # Raise when a fix changes the method's results: a version other than 1 enters run ids, so results made before
    # the fix are not reused (version 1 stays out of ids, so existing results keep theirs).
    version: ClassVar[int] = 1
    # Whether the method can score and prune coupled groups (residual streams, concatenations, heads); one that
    # cannot is refused before any work, with ``group_limit`` as the reason.
    group_aware: ClassVar[bool] = False
    group_limit: ClassVar[str] = "it scores each layer's own channels and knows nothing of coupled groups"
    # What `bench.py selftest` picks methods by (bench/ names none): options shrinking a method's own phase to a few
    # steps (a method with such options joins --quick), whether it needs convolutions or BatchNorm (resnet20 only),
    # and the plain one-shot selector the checks pair with everything (a non-selecting component chains after it).
    selftest_options: ClassVar[dict[str, Any] | None] = None
    needs_convolutions: ClassVar[bool] = False
    selftest_baseline: ClassVar[bool] = False

    def __init__(self, hparams: Any) -> None:
        self.hparams = hparams

    def dense_variant(self) -> DenseVariant | None:
        """A modified dense model/training for this method, or None to share the common dense model."""
        return None

    def phase(self, model: nn.Module, ctx: RunContext) -> Phase | None:
        """A training phase run on the dense model before selection, or None."""
        return None

    def phase_steps(self, dense: Recipe, retrain: Recipe, steps_per_epoch: Callable[[int], int]
                    ) -> tuple[int, int] | None:
        """(SGD steps, batch size) of the phase ``phase`` will build, known before any run (a suite's
        ``budget: {match: ...}`` needs it); None: no phase. ``steps_per_epoch(batch_size)`` counts the training set's
        batches. A method that overrides ``phase`` must override this too to be matched."""
        if type(self).phase is Method.phase:
            return None
        raise NotImplementedError(f"{getattr(self, 'name', type(self).__name__)} does not say its phase's length "
                                  "before it runs (Method.phase_steps)")

    def scores(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
        """Importance per output channel of each target layer (higher = kept first)."""
        raise NotImplementedError(f"{type(self).__name__} must implement scores() or select()")

    def select(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
        """Kept output-channel indices per target layer (group); by default the highest ``group_scores``."""
        scores = checked_scores(self, model, self.scores(model, ctx), ctx.target.members())
        return keep_from_scores(self.group_scores(scores, ctx.target), ctx.target)

    def group_scores(self, scores: Mapping[str, torch.Tensor], target: PruneTarget) -> dict[str, torch.Tensor]:
        """One score per unit of each target group from its members' channel scores (``scores`` by member).

        The stated rule: a unit's score is the mean over the group's members of each member's score of that unit
        (a head's channels averaged first), so that under global scope a wide group is not favoured over a
        narrow one. A chain's score is its layer's. Override to reduce otherwise (sum, max)."""
        reduced = {}
        for name in target.layers:
            group = target.groups.get(name)
            if group is None or group.producers == [name] and group.unit == 1:
                reduced[name] = scores[name]
                continue
            units = [scores[m].detach().float().reshape(group.size, group.unit).mean(dim=1) for m in group.producers]
            reduced[name] = torch.stack(units).mean(dim=0)
        return reduced

    def after_slim(self, model: nn.Module, ctx: RunContext) -> None:
        """Called on the physically pruned model before retraining (re-initialisation, for example)."""
        return None

    def retrain_recipe(self, recipe: Recipe, ctx: RunContext) -> Recipe:
        """The retraining recipe for this method; the suite's by default (Scratch changes it)."""
        return recipe

    def check(self, model: nn.Module, target: PruneTarget, input_shape: tuple[int, ...]) -> None:
        """Raise ConfigError if this method cannot run on this dense model and selection; called before any work.

        By default: a method with its own ``scope`` hyperparameter set to global needs one ratio for every layer."""
        scope = getattr(self.hparams, "scope", None)
        if scope is not None:
            scoped(target, scope, getattr(self, "name", type(self).__name__))

    def retrain_param_groups(self, model: nn.Module, recipe: Recipe, ctx: RunContext) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups for retraining (own LR or weight decay for some parameters); None: one group.

        Only for methods whose paper fine-tunes that way (RNI's BatchNorm groups); everything else retrains alike.
        """
        return None


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a ``Method`` subclass available to suites under ``name``."""

    def decorate(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method('{name}') must decorate a subclass of bench.Method")
        cls.name = name  # type: ignore[attr-defined]
        METHODS.add(name, cls)
        return cls

    return decorate


def refuse_groups(method: Method, target: PruneTarget) -> None:
    """A ConfigError naming the first coupled group when ``method`` cannot prune groups; before any work."""
    coupled = target.coupled()
    if coupled and not method.group_aware:
        group = coupled[0]
        what = "attention heads" if group.kind == "heads" else f"a coupled group of {len(group.producers)} layers"
        raise ConfigError(
            f"methods: {getattr(method, 'name', type(method).__name__)}: layer '{group.name}' is pruned in {what} "
            f"({', '.join(group.producers[:4])}{', ...' if len(group.producers) > 4 else ''}), which this method "
            f"cannot do: {method.group_limit}. Prune only layers that feed one chain (prune.layers) or use a "
            "group-aware method (l1, random, greg, tpp).")


def checked_scores(method: Method, model: nn.Module, scores: Mapping[str, torch.Tensor], layers: list[str]
                   ) -> Mapping[str, torch.Tensor]:
    """``scores`` when they give one value per output channel of every target layer; else a UserError naming the
    method, its ``scores()`` hook and the layer (a plugin's mistake would otherwise surface as a bare KeyError)."""
    name = getattr(method, "name", type(method).__name__)
    for layer in layers:
        if layer not in scores:
            raise UserError(f"method '{name}': scores() returned no score for layer '{layer}'; it must score every "
                            f"layer of ctx.target.layers ({len(layers)} layers, it scored {len(scores)}).")
        channels = model.get_submodule(layer).weight.shape[0]
        if scores[layer].numel() != channels:
            raise UserError(f"method '{name}': scores() returned {scores[layer].numel()} values for layer '{layer}', "
                            f"which has {channels} output channels; give one score per output channel.")
    return scores


def keep_from_scores(scores: Mapping[str, torch.Tensor], target: PruneTarget) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring channels: per layer (layerwise) or under one threshold (global, with the target's
    floor: its most important channels, or with ``floor_keeps: index`` its highest indices, as the OrthoReg code).

    Ties are broken by channel index (stable sort), so selection is deterministic.
    """
    keep: dict[str, torch.Tensor] = {}
    if target.scope == "layerwise":
        for name in target.layers:
            s = scores[name].detach().float().cpu()
            n_drop = num_pruned(s.numel(), target.ratios[name], target.count_rule)
            order = torch.sort(s, stable=True).indices  # ascending: the first n_drop go
            keep[name] = torch.sort(order[n_drop:]).values
        return keep
    ratio = next(iter(target.ratios.values()))
    flat = [(float(v), name, i) for name in target.layers for i, v in enumerate(scores[name].detach().float().cpu())]
    total = len(flat)
    n_drop = min(ratio_count(ratio, total), total - len(target.layers))
    sizes = {name: scores[name].numel() for name in target.layers}
    floor = {name: target.floor(sizes[name]) for name in target.layers}
    protected = {name: target.protected(sizes[name]) for name in target.layers}
    dropped: dict[str, set[int]] = {name: set() for name in target.layers}
    for _, name, i in sorted(flat):
        if n_drop == 0:
            break
        if i not in protected[name] and sizes[name] - len(dropped[name]) > floor[name]:
            dropped[name].add(i)
            n_drop -= 1
    for name in target.layers:
        keep[name] = torch.tensor([i for i in range(sizes[name]) if i not in dropped[name]], dtype=torch.long)
    return keep


def global_ratio(target: PruneTarget, method: str) -> float:
    """The one pruning ratio of all target layers, which a method ranking every layer together needs."""
    ratios = set(target.ratios.values())
    if len(ratios) != 1:
        raise ConfigError(f"methods: {method}: scope 'global' ranks all layers with one pruning ratio, but "
                          "prune.ratios gives a per-layer profile; use a single ratio or the method's "
                          "scope: layerwise.")
    return ratios.pop()


def scoped(target: PruneTarget, scope: str, method: str) -> PruneTarget:
    """``target`` under a method's own ``scope`` option (ConfigError when global meets a per-layer profile)."""
    if scope == "global":
        global_ratio(target, method)
    return replace(target, scope=scope)


def quantile(values: torch.Tensor, ratio: float) -> float:
    """The ``ratio``-quantile with linear interpolation (numpy's default)."""
    return float(torch.quantile(values.double(), ratio))


def keep_above_quantile(scores: Mapping[str, torch.Tensor], target: PruneTarget, min_channels: int
                        ) -> dict[str, torch.Tensor]:
    """The RNI code's keep rule (for its RNI, L1-slim and UCS): keep the scores strictly above the p-quantile, of
    all layers' scores together (``target.scope`` global, one ratio) or of each layer's own at its ratio (layerwise);
    where fewer than ``min_channels`` (or the target's floor) pass in a layer, keep its highest ones instead (with
    ``floor_keeps: index``: the passing ones and the floor's highest indices).

    The code lowers the threshold to the (min_channels+1)-th largest score for that, which keeps fewer than
    ``min_channels`` when scores tie at it; taking the top ones (ties by lower index) always honours the floor.
    A ratio of 0 keeps everything (the code's 0-quantile would drop each minimum).
    """
    if target.scope == "global":
        ratio = global_ratio(target, "the quantile cut")
        threshold = quantile(torch.cat(list(scores.values())), ratio)
    keep = {}
    for name, s in scores.items():
        if target.scope != "global":
            ratio = target.ratios[name]
            threshold = quantile(s, ratio)
        if ratio == 0:
            keep[name] = torch.arange(s.numel())
            continue
        passing = torch.nonzero(s > threshold).flatten()
        floor = max(min_channels, target.floor(s.numel()))
        if target.floor_keeps == "index":
            top = set(range(s.numel() - min(floor, s.numel()), s.numel()))
            passing = torch.tensor(sorted(set(passing.tolist()) | top), dtype=torch.long)
        elif passing.numel() < floor:
            top = torch.sort(s, descending=True, stable=True).indices[:floor]
            passing = torch.sort(top).values
        keep[name] = passing
    return keep
