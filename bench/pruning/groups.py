"""Coupled channel groups: the units a run prunes, each removed (or zeroed) on every layer it touches at once.

A *chain* is a layer whose channels feed only its own consumers (a ResNet block's conv1, a VGG conv, an MLP hidden
layer): the in-house FX slicer in ``bench.pruning`` handles it. What that slicer refuses — a residual stream and
every layer that writes to or reads it, the inputs of a concatenation, a token-wise MLP's hidden units — is a
*coupled* group found by Torch-Pruning's low-level ``DependencyGraph``. A module that prunes whole attention heads
itself (it has ``keep_heads``) makes a *heads* group of its q/k/v projections. When masking (``prune.mode: mask``), a
layer whose channels reach a residual addition is a *branch* of its own instead of a part of the stream's coupled
group: its channels are zeroed at its BatchNorm, which masks that block's contribution only (OrthoReg's ``MapLayer``)
and has no removal equivalent. Every group is named by its *leader*, the first selected layer it covers, which is what
a run's ``PruneTarget.layers`` lists.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.pruning import (
    BATCHNORM_TYPES,
    PRUNABLE_TYPES,
    LayerDeps,
    PruningError,
    channel_index,
    is_depthwise,
    meta_copy,
    slim,
    trace_dependencies,
    zero_pruned_,
)

log = logging.getLogger(__name__)

KINDS = ("chain", "coupled", "heads", "branch")
# Modules a coupled group may change the output channels of: removing a channel there equals zeroing it.
_CHANNELWISE = (*PRUNABLE_TYPES, *BATCHNORM_TYPES)


@dataclass
class Group:
    """Channels pruned together: ``size`` units, each ``unit`` output channels of every producer."""

    name: str  # the leader: the first selected layer the group covers, in module order
    kind: str  # "chain", "coupled", "heads" or "branch" (masked only)
    layers: list[str]  # the selected layers it covers
    producers: list[str]  # every Conv2d/Linear whose output channels it holds: the members a method scores
    size: int  # prunable units (channels; heads for "heads")
    unit: int = 1  # producer output channels per unit (a head's width for "heads")
    normalisation: list[str] = field(default_factory=list)  # BatchNorms whose channels go with it
    batchnorm_of: dict[str, str | None] = field(default_factory=dict)  # the BatchNorm right after each producer
    # where each member holds the group's channels (a BatchNorm after a concatenation: at an offset); default 0..n-1
    offsets: dict[str, list[int]] = field(default_factory=dict)

    def channels(self, member: str, units: Tensor) -> Tensor:
        """The output channels of ``member`` that hold ``units`` of this group."""
        index = (torch.as_tensor(units, dtype=torch.long)[:, None] * self.unit + torch.arange(self.unit)).flatten()
        where = self.offsets.get(member)
        return index if where is None else torch.as_tensor(where, dtype=torch.long)[index]


@dataclass
class GroupPlan:
    """The groups of one model instance and what slicing them needs (valid for that instance only)."""

    groups: dict[str, Group]  # by leader, in module order
    deps: dict[str, LayerDeps]  # the chains' (and branches') in-house dependencies
    graph: Any = None  # Torch-Pruning's DependencyGraph when there are coupled groups

    @property
    def leaders(self) -> list[str]:
        return list(self.groups)


def plan_groups(model: nn.Module, example_input: Tensor, layers: Sequence[str], coupled_only: bool = False,
                mask: bool = False) -> GroupPlan:
    """The groups covering ``layers``: chains through the in-house slicer, the rest through Torch-Pruning.

    ``coupled_only`` sends every layer to Torch-Pruning (tests compare the two slicers on the chains); ``mask`` makes
    each layer that reaches a residual addition a branch group of its own (for masking, not removal).
    Raises ``PruningError`` naming the layer when a layer can be pruned neither way.
    """
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    heads, rest = _head_groups(modules, layers)
    coupled = [n for n in rest if coupled_only or is_depthwise(modules.get(n))]
    branches: dict[str, LayerDeps] | None = {} if mask else None
    chains = trace_dependencies(model, example_input, [n for n in rest if n not in coupled], coupled, branches) if len(
        coupled) < len(rest) else {}
    branches = branches or {}
    graph = None
    groups: list[Group] = list(heads)
    if coupled:
        graph = _dependency_graph(model, example_input)
        found = _coupled_groups(graph, modules, coupled)
        for group in found:  # a chain whose channels a coupled group also holds (MobileNet's expand conv) joins it
            for own in (chains, branches):
                for name in list(own):
                    if name in group.producers or set(own[name].passthrough) & set(group.producers):
                        group.layers.append(name)
                        del own[name]
        groups += found
    for kind, own in (("chain", chains), ("branch", branches)):
        for name, deps in own.items():
            size = modules[name].weight.shape[0]
            norms = [n for n in [deps.batchnorm, *deps.passthrough] if n and isinstance(modules[n], BATCHNORM_TYPES)]
            groups.append(Group(name, kind, [name], [name], size, normalisation=norms,
                                batchnorm_of={name: deps.batchnorm}))
    for group in groups:
        group.layers.sort(key=order.__getitem__)
        group.name = group.layers[0]
    groups.sort(key=lambda g: order[g.name])
    log.debug("%d groups: %s", len(groups), {g.name: g.kind for g in groups})
    return GroupPlan({g.name: g for g in groups}, {**chains, **branches}, graph)


def slim_groups(model: nn.Module, plan: GroupPlan, keep: Mapping[str, Tensor]) -> nn.Module:
    """Remove all but the ``keep`` units of each group (by leader), on every member, in place; returns ``model``.

    Coupled groups and heads are sliced in place first (Torch-Pruning holds these module objects), then the chains
    (whose slicer replaces modules). Parameters are new objects: build optimizers after slimming.
    """
    chain_keep = {}
    for name, indices in keep.items():
        group = _group(plan, name)
        index = channel_index(name, indices, group.size, keep=True)
        if group.kind == "chain":
            chain_keep[name] = index
        elif group.kind == "branch":
            raise PruningError(f"layer '{name}' feeds a residual sum on its own (a branch): its channels can be "
                               "masked (prune.mode: mask), not removed")
        elif group.kind == "heads":
            model.get_submodule(name.rpartition(".")[0]).keep_heads(index)
        else:
            dropped = _complement(index, group.size)
            if dropped:
                plan.graph.get_pruning_group(model.get_submodule(name), _out_handler(model.get_submodule(name)),
                                             idxs=dropped).prune()
    slim(model, chain_keep, plan.deps)
    return model


def zero_groups_(model: nn.Module, plan: GroupPlan, pruned: Mapping[str, Tensor]) -> None:
    """Zero, in place, the parameters that produce the ``pruned`` units of each group on every member (weight rows,
    biases, BatchNorm weight and shift), so those channels carry 0 without a shape change."""
    for name, indices in pruned.items():
        group = _group(plan, name)
        index = channel_index(name, indices, group.size, keep=False)
        if group.kind in ("chain", "branch"):
            zero_pruned_(model, {name: index}, plan.deps)
            continue
        with torch.no_grad():
            for member, rows in channel_masks(model, plan, {name: index}, zero=True).items():
                module = model.get_submodule(member)
                for param in (module.weight, getattr(module, "bias", None)):
                    if param is not None:
                        param.mul_(rows.to(param.device).view(-1, *[1] * (param.dim() - 1)))


def channel_masks(model: nn.Module, plan: GroupPlan, units: Mapping[str, Tensor], zero: bool = False
                  ) -> dict[str, Tensor]:
    """Per member module (producer, BatchNorm, depthwise conv passed through), a 0/1 vector over its output channels:
    1 where a channel of ``units`` (kept units by leader; the pruned ones when ``zero``) lies, 0 elsewhere."""
    masks: dict[str, Tensor] = {}
    for name, indices in units.items():
        group = _group(plan, name)
        passthrough = plan.deps[name].passthrough if name in plan.deps else []
        for member in dict.fromkeys([*group.producers, *group.normalisation, *passthrough]):
            rows = masks.get(member)
            if rows is None:
                rows = torch.full((model.get_submodule(member).weight.shape[0],), 1.0 if zero else 0.0)
            rows[group.channels(member, indices)] = 0.0 if zero else 1.0
            masks[member] = rows
    return masks


def group_sizes(plan: GroupPlan) -> dict[str, int]:
    """Units of each group, by leader."""
    return {name: g.size for name, g in plan.groups.items()}


def _group(plan: GroupPlan, name: str) -> Group:
    if name not in plan.groups:
        raise PruningError(f"layer '{name}' leads no group of this plan; pass it to plan_groups first")
    return plan.groups[name]


def _complement(index: Tensor, n: int) -> list[int]:
    kept = set(index.tolist())
    return [i for i in range(n) if i not in kept]


def _head_groups(modules: Mapping[str, nn.Module], layers: Sequence[str]) -> tuple[list[Group], list[str]]:
    """Groups of the selected projections of head-prunable modules (those with ``keep_heads``), and the others."""
    groups: dict[str, Group] = {}
    rest = []
    for name in layers:
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name)
        if parent is None or not hasattr(parent, "keep_heads") or child not in parent.head_projections:
            rest.append(name)
            continue
        if parent_name not in groups:
            producers = [f"{parent_name}.{p}" for p in parent.head_projections]
            groups[parent_name] = Group(name, "heads", [], producers, parent.num_heads, parent.head_dim)
        groups[parent_name].layers.append(name)
    return list(groups.values()), rest


def _dependency_graph(model: nn.Module, example_input: Tensor) -> Any:
    """Torch-Pruning's dependency graph of ``model``: traced on a meta-device copy (a ResNet-50's forward pass at 224 px
    costs seconds on a CPU) and bound back to ``model``'s modules and parameters; where an op has no meta kernel, on
    ``model`` itself in eval mode (BatchNorm statistics untouched)."""
    import torch_pruning as tp  # deferred: only runs with coupled groups pay its import

    try:
        meta = meta_copy(model)
        graph = _build_graph(tp, meta, example_input.to("meta"))
        return _rebind(graph, meta, model)
    except Exception as exc:  # noqa: BLE001 - any failure on meta means: trace the real model
        log.debug("Torch-Pruning's trace on the meta device failed (%s: %s); tracing the model", type(exc).__name__,
                  exc)
    modes = {module: module.training for module in model.modules()}
    param = next(model.parameters(), None)
    try:
        return _build_graph(tp, model, example_input.to(param.device) if param is not None else example_input)
    finally:
        for module, training in modes.items():
            module.training = training


def _build_graph(tp: Any, model: nn.Module, x: Tensor) -> Any:
    """``tp.DependencyGraph`` of ``model`` on ``x`` (it puts ``model`` in eval mode). ``x`` goes in a tuple:
    Torch-Pruning calls ``model(*example_inputs)`` first, and a bare batch would be unpacked into an unbatched sample,
    run almost to the end (convolutions accept it) and then traced again whole."""
    return tp.DependencyGraph().build_dependency(model, example_inputs=(x,), verbose=False)


def _rebind(graph: Any, copy: nn.Module, model: nn.Module) -> Any:
    """``graph``, traced on ``copy``, made to refer to ``model``'s modules and parameters instead (same names)."""
    swap: dict[Any, Any] = {}
    for (name, ours), (theirs_name, theirs) in zip(copy.named_modules(), model.named_modules(), strict=True):
        if name != theirs_name:
            raise PruningError(f"module '{name}' of the meta copy is '{theirs_name}' in the model")
        swap[ours] = theirs
    for (_, ours), (_, theirs) in zip(copy.named_parameters(), model.named_parameters(), strict=True):
        swap[ours] = theirs
    for node in graph.module2node.values():
        node.module = swap.get(node.module, node.module)
    graph.module2node = {swap.get(k, k): v for k, v in graph.module2node.items()}
    graph._module2name = {swap.get(k, k): v for k, v in graph._module2name.items()}
    graph._param_to_name = {swap.get(k, k): v for k, v in graph._param_to_name.items()}
    graph.unwrapped_parameters = [type(u)(parameters=swap.get(u.parameters, u.parameters), pruning_dim=u.pruning_dim)
                                  for u in graph.unwrapped_parameters]
    graph.ignored_params = [swap.get(p, p) for p in graph.ignored_params]
    graph.model = model
    return graph


def _out_handler(module: nn.Module) -> Any:
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def _coupled_groups(graph: Any, modules: Mapping[str, nn.Module], layers: Sequence[str]) -> list[Group]:
    """One Group per distinct Torch-Pruning group of ``layers`` (layers of the same group share it)."""
    names = {module: name for name, module in modules.items()}
    found: dict[frozenset[str], Group] = {}
    for name in layers:
        known = next((g for g in found.values() if name in g.producers), None)
        if known is not None:  # already in a group found from another of its layers
            known.layers.append(name)
            continue
        module = modules[name]
        if not isinstance(module, PRUNABLE_TYPES):
            raise PruningError(f"layer '{name}' is not an nn.Conv2d or nn.Linear")
        size = module.weight.shape[0]
        try:
            pruning_group = graph.get_pruning_group(module, _out_handler(module), idxs=list(range(size)))
        except Exception as exc:  # noqa: BLE001 - any failure inside Torch-Pruning means the same to the user
            raise PruningError(f"layer '{name}': Torch-Pruning cannot group its channels ({type(exc).__name__}: "
                               f"{exc}); add it to prune.skip") from exc
        producers, norms, offsets = [], [], {}
        for item in pruning_group:
            target = item.dep.target.module
            member = names.get(target)
            if member is None or not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue  # Torch-Pruning's own op nodes, and the input side of consumers
            if not isinstance(target, _CHANNELWISE):
                raise PruningError(
                    f"layer '{name}': its channels reach '{member}' ({type(target).__name__}), which mixes channels "
                    "(removing one is not the same as zeroing it); add the layer to prune.skip")
            where = [int(i) for i in item.idxs]
            if len(where) != size or isinstance(target, PRUNABLE_TYPES) and target.weight.shape[0] != size:
                # e.g. a zero-padded (option-A) shortcut, which Torch-Pruning reads as the identity
                raise PruningError(
                    f"layer '{name}': its channels reach '{member}' ({target.weight.shape[0]} channels) through an op "
                    "that Torch-Pruning cannot map exactly (a zero-padded shortcut?); add the layer to prune.skip")
            if where != list(range(size)):
                offsets[member] = where
            (producers if isinstance(target, PRUNABLE_TYPES) else norms).append(member)
        key = frozenset(producers)
        if key in found:
            found[key].layers.append(name)
        else:
            producers.sort(key=list(modules).index)
            found[key] = Group(name, "coupled", [name], producers, size, normalisation=norms, offsets=offsets,
                               batchnorm_of={p: _next_batchnorm(graph, modules[p], names) for p in producers})
    return list(found.values())


def _next_batchnorm(graph: Any, module: nn.Module, names: Mapping[nn.Module, str]) -> str | None:
    """The BatchNorm that alone reads ``module``'s output in Torch-Pruning's graph, if any."""
    outputs = graph.module2node[module].outputs
    if len(outputs) == 1 and isinstance(outputs[0].module, BATCHNORM_TYPES):
        return names.get(outputs[0].module)
    return None
