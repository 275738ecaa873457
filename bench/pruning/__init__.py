"""Structured (filter) pruning of Conv2d / Linear layers, driven by the model's torch.fx graph.

``trace_dependencies`` finds, for each layer to prune, the BatchNorm and the conv/linear layers that read its output
channels; ``slim`` then removes channels physically, ``masked`` zeroes them with forward hooks and ``zero_pruned_``
zeroes the parameters that produce them. Only ops that map zero to zero per channel may lie between a layer and its
consumers, so a slimmed model computes exactly what the masked one does.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
import math
import operator
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node, Tracer
from torch.fx.node import map_arg
from torch.fx.passes.shape_prop import ShapeProp

from bench.core.errors import ConfigError, UserError
from bench.core.registry import COUNT_RULES

log = logging.getLogger(__name__)

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
CountRule = Callable[[int, float], int]   # (n filters, ratio) -> filters removed
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)

# Per-channel (or elementwise) ops that map 0 to 0: a removed channel and a zeroed one behave the same through them.
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Hardtanh, nn.Hardswish,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_PASS_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    torch.tanh, F.hardtanh, F.hardswish, F.dropout, F.dropout1d, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_PASS_METHODS = {"relu", "relu_", "tanh", "tanh_", "contiguous"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_METADATA_METHODS = {"size", "dim"}  # read shapes only; no channel data flows through them
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.stack}


class PruningError(UserError, ValueError):
    """A user-facing pruning problem; the message names the offending layer."""


class CoupledChannels(PruningError):
    """The layer's channels meet other layers' (a residual add, a concat, a token-wise linear): a coupled group."""


class ResidualBranch(CoupledChannels):
    """The layer's channels reach a residual addition; ``deps`` holds what was found on the way (its BatchNorm)."""

    def __init__(self, message: str, deps: LayerDeps) -> None:
        super().__init__(message)
        self.deps = deps


@dataclass
class LayerDeps:
    """What must change when output channels of ``layer`` are removed."""

    layer: str  # the producing conv/linear
    batchnorm: str | None  # the BatchNorm applied (through channel-preserving ops) to its output, if any
    # (conv/linear whose INPUT channels come from this layer's output, spatial factor: 1 for conv consumers;
    #  for a Linear after flatten of C x H x W, H*W)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    # depthwise convs (groups == in == out channels) on the way to the consumers, and the BatchNorms after them:
    # channel-preserving, so they lose the same channels as the layer (MobileNet's pointwise -> depthwise)
    passthrough: list[str] = field(default_factory=list)


def prunable_layers(model: nn.Module, patterns: Sequence[str], skip: Sequence[str] = ()) -> list[str]:
    """Names of Conv2d/Linear modules matching any fnmatch ``patterns`` and no ``skip`` pattern, in module order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
        and any(fnmatch.fnmatchcase(name, p) for p in patterns)
        and not any(fnmatch.fnmatchcase(name, s) for s in skip)
    ]


def select_layers(model: nn.Module, model_name: str, layers: Sequence[str] | None, skip: Sequence[str] | None,
                  default_layers: Sequence[str], default_skip: Sequence[str]) -> list[str]:
    """The prunable layers a suite names (``layers``/``skip`` patterns, or the model's defaults when ``layers`` is
    None), in module order; a pattern that matches nothing, or nothing left to prune, is a ConfigError."""
    patterns = list(layers) if layers is not None else list(default_layers)
    skipped = list(skip) if skip is not None else ([] if layers is not None else list(default_skip))
    missing = unmatched_patterns(model, patterns)
    if missing:
        examples = ", ".join(prunable_layers(model, ["*"])[:6])
        raise ConfigError(f"prune.layers: {', '.join(repr(p) for p in missing)} match no Conv2d or Linear layer of "
                          f"model '{model_name}'. Layer names look like: {examples}, ...")
    selected = prunable_layers(model, patterns, skipped)
    if not selected:
        raise ConfigError(f"prune.layers/skip: no layer of model '{model_name}' is left to prune.")
    return selected


def unmatched_patterns(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The patterns that match no Conv2d/Linear module, so configs can reject typos with a clear message."""
    names = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
    return [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]


def layer_ratios(layers: list[str], ratio: float | Mapping[str, float]) -> dict[str, float]:
    """Per-layer ratios: a float applies to every layer; a mapping gives the first matching pattern's ratio, else 0."""
    if not isinstance(ratio, Mapping):
        return {layer: float(ratio) for layer in layers}
    return {
        layer: next((float(r) for p, r in ratio.items() if fnmatch.fnmatchcase(layer, p)), 0.0) for layer in layers
    }


def register_count_rule(name: str) -> Callable[[CountRule], CountRule]:
    """Decorator: make ``rule(n, ratio) -> filters removed`` available to suites as ``prune.count_rule: name``."""
    def decorate(rule: CountRule) -> CountRule:
        COUNT_RULES.add(name, rule)
        return rule

    return decorate


@register_count_rule("ceil")
def ceil_count(n: int, ratio: float) -> int:
    """The harness's rule: ceil of ratio*n rounded to 6 decimals (float noise such as 0.3*10 = 3.0000000000000004
    does not count), at most n - 1."""
    return max(0, min(math.ceil(round(ratio * n, 6)), n - 1))


def num_pruned(n: int, ratio: float, rule: str = "ceil") -> int:
    """Filters to remove out of ``n`` at ``ratio`` by the registered count rule ``rule`` (``prune.count_rule``):
    the one place a ratio becomes a count."""
    if not 0.0 <= ratio <= 1.0:
        raise PruningError(f"pruning ratio must be in [0, 1], got {ratio}")
    if rule not in COUNT_RULES:
        raise PruningError(COUNT_RULES.unknown_message(rule))
    return COUNT_RULES.get(rule)(n, ratio)


def channel_counts(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """Output channels (Conv2d) or features (Linear) of each named layer."""
    return {name: _out_channels(name, model.get_submodule(name)) for name in layers}


def trace_dependencies(model: nn.Module, example_input: Tensor, layers: Sequence[str],
                       coupled: list[str] | None = None, branches: dict[str, LayerDeps] | None = None
                       ) -> dict[str, LayerDeps]:
    """Trace ``model`` with torch.fx and return, per layer, the BatchNorm and consumers of its output channels.

    ``example_input`` only serves to compute tensor shapes (run in eval mode, no grad; modes are restored).
    Raises ``PruningError`` when a layer's channels reach a residual add, a concat, the output or an unsupported op;
    with a ``coupled`` list, the layers refused only for meeting other layers' channels are appended there instead;
    with a ``branches`` mapping, those refused for reaching a residual addition go there instead, with the BatchNorm
    (and depthwise passthrough) found on the way: a branch that can be masked on its own, not removed.
    """
    modules = dict(model.named_modules())
    for name in layers:
        if not isinstance(modules.get(name), PRUNABLE_TYPES):
            raise PruningError(f"layer '{name}' is not an nn.Conv2d or nn.Linear of {type(model).__name__}")
    graph_module = _trace(model)
    _propagate_shapes(model, graph_module, example_input)
    calls: dict[str, list[Node]] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    found = {}
    for name in layers:
        try:
            found[name] = _follow(name, calls, modules)
        except ResidualBranch as err:
            if branches is None and coupled is None:
                raise
            if branches is not None:
                branches[name] = err.deps
            else:
                coupled.append(name)
        except CoupledChannels:
            if coupled is None:
                raise
            coupled.append(name)
    return found


def slim(model: nn.Module, keep: Mapping[str, Tensor], deps: Mapping[str, LayerDeps]) -> nn.Module:
    """Physically remove all but the ``keep`` output channels of each layer, in place; returns ``model``.

    Each layer and its BatchNorm (and any depthwise conv and BatchNorm it passes through) are replaced by smaller
    modules and its consumers' input channels are sliced (a consumer may itself be slimmed). Parameters are new
    objects: build optimizers after slimming.
    """
    out_index: dict[str, Tensor] = {}
    in_index: dict[str, Tensor] = {}
    bn_index: dict[str, Tensor] = {}
    for name, indices in keep.items():
        layer_deps = _deps_of(name, deps)
        index = _index(name, indices, _out_channels(name, model.get_submodule(name)), keep=True)
        out_index[name] = index
        for sliced in [layer_deps.batchnorm, *layer_deps.passthrough]:
            if sliced is None:
                continue
            if sliced in bn_index:
                raise PruningError(f"layer '{name}': '{sliced}' also carries the channels of another pruned layer")
            bn_index[sliced] = index
        for consumer, factor in layer_deps.consumers:
            if consumer in in_index:
                raise PruningError(f"layer '{consumer}' reads the output of more than one pruned layer")
            in_index[consumer] = (index[:, None] * factor + torch.arange(factor)).flatten()
    for name in dict.fromkeys([*out_index, *in_index]):
        new = _slice_layer(name, model.get_submodule(name), out_index.get(name), in_index.get(name))
        _set_submodule(model, name, new)
    for name, index in bn_index.items():
        old = model.get_submodule(name)
        new = _slice_depthwise(old, index) if isinstance(old, nn.Conv2d) else _slice_batchnorm(old, index)
        _set_submodule(model, name, new)
    log.debug("slimmed %d layers, %d consumers", len(out_index), len(in_index))
    return model


@contextlib.contextmanager
def masked(model: nn.Module, pruned: Mapping[str, Tensor], deps: Mapping[str, LayerDeps]) -> Iterator[nn.Module]:
    """Context in which the ``pruned`` channels are zeroed by forward hooks at the output of each layer's BatchNorm
    (or of the layer itself without one): the reference ``slim`` must match, and a way to prune without removing."""
    handles = []
    try:
        for name, indices in pruned.items():
            layer_deps = _deps_of(name, deps)
            index = _index(name, indices, _out_channels(name, model.get_submodule(name)), keep=False)
            for point in [layer_deps.batchnorm or name, *layer_deps.passthrough]:
                handles.append(model.get_submodule(point).register_forward_hook(_zeroing_hook(index)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def zero_pruned_(model: nn.Module, pruned: Mapping[str, Tensor], deps: Mapping[str, LayerDeps]) -> None:
    """Zero, in place, the weight rows and bias entries of the ``pruned`` filters and their BatchNorm weight/bias
    (and those of the depthwise convs and BatchNorms they pass through), so those channels output 0 without hooks
    or shape changes."""
    with torch.no_grad():
        for name, indices in pruned.items():
            layer_deps = _deps_of(name, deps)
            layer = model.get_submodule(name)
            index = _index(name, indices, _out_channels(name, layer), keep=False).to(layer.weight.device)
            layer.weight.index_fill_(0, index, 0.0)
            if layer.bias is not None:
                layer.bias.index_fill_(0, index, 0.0)
            for sliced in [layer_deps.batchnorm, *layer_deps.passthrough]:
                if sliced is None:
                    continue
                module = model.get_submodule(sliced)
                if not isinstance(module, nn.Conv2d) and (not module.affine or module.bias is None):
                    raise PruningError(
                        f"layer '{name}': its BatchNorm '{sliced}' has no affine weight and shift, so zeroing "
                        "cannot silence its channels; use masked() or slim()"
                    )
                module.weight.index_fill_(0, index, 0.0)
                if module.bias is not None:
                    module.bias.index_fill_(0, index, 0.0)


class _Tracer(Tracer):
    """torch.fx's tracer, with BatchNorm subclasses (e.g. a bounded-scale BatchNorm) kept as leaf modules too."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, BATCHNORM_TYPES) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> GraphModule:
    """Symbolically trace ``model``, turning tracer failures into a PruningError."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - any tracer failure means the same thing to the user
        raise PruningError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: {exc}); physical pruning "
            "needs a traceable forward (no data-dependent control flow)"
        ) from exc


def _propagate_shapes(model: nn.Module, graph_module: GraphModule, example_input: Tensor) -> None:
    """Annotate every node with its tensor shape: on a copy of the model on the meta device (shapes without
    arithmetic: a full forward of a ResNet-50 at 224 px costs seconds on a CPU), else, where an op has no meta kernel
    or reads data, on the model itself; eval mode and no grad, so BN statistics are left untouched."""
    try:
        meta = _meta_copy(model, graph_module)
        meta_input = example_input.to("meta")
    except Exception:  # noqa: BLE001 - a module that cannot be copied is simply run for real
        meta = None
    if meta is not None:
        try:
            with torch.no_grad():
                ShapeProp(meta.eval()).propagate(meta_input)
            return
        except Exception as exc:  # noqa: BLE001 - any failure on meta means: run the real thing
            log.debug("shape propagation on the meta device failed (%s: %s); running the model", type(exc).__name__,
                      exc)
    modes = {module: module.training for module in model.modules()}
    param = next(model.parameters(), None)
    if param is not None:
        example_input = example_input.to(param.device)
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input)
    finally:
        for module, training in modes.items():
            module.training = training


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (no data copied): it computes shapes,
    and autograd's graph of them, without arithmetic."""
    memo: dict[int, object] = {}
    for tensor in model.parameters():
        memo[id(tensor)] = nn.Parameter(tensor.detach().to("meta"), tensor.requires_grad)
    for tensor in model.buffers():
        memo[id(tensor)] = tensor.to("meta")
    return copy.deepcopy(model, memo)


def _meta_copy(model: nn.Module, graph_module: GraphModule) -> GraphModule:
    """``graph_module`` (a trace of ``model``) on ``meta_copy(model)``; the graph is shared, so shape propagation on
    the copy annotates the original's nodes."""
    return GraphModule(meta_copy(model), graph_module.graph, type(model).__name__)


def _follow(name: str, calls: Mapping[str, list[Node]], modules: Mapping[str, nn.Module]) -> LayerDeps:
    """Walk from ``name``'s output through channel-preserving ops to the layers that consume its channels."""
    layer = modules[name]
    _check_layer(name, name, layer, calls)
    (start,) = calls[name]
    if isinstance(layer, nn.Linear) and _ndim(start) != 2:
        raise CoupledChannels(f"layer '{name}': only Linear layers on 2-D (batch, features) tensors can be pruned "
                              "as a chain")
    deps = LayerDeps(name, None)
    queue: deque[tuple[Node, int, bool]] = deque([(start, 1, False)])  # (node, spatial factor, past a depthwise)
    while queue:
        node, factor, past_depthwise = queue.popleft()
        for user in node.users:
            if user.op == "call_function" and user.target is getattr:
                continue
            if user.op == "call_method" and user.target in _METADATA_METHODS:
                continue
            if user.op == "output":
                raise PruningError(f"layer '{name}' feeds the model output; its channels are the model's outputs and "
                                  "cannot be removed: add it to prune.skip")
            if (user.op == "call_function" and user.target in _ADD_FUNCTIONS) or (
                user.op == "call_method" and user.target in _ADD_METHODS
            ):
                raise ResidualBranch(_blocked(name, f"a residual addition ('{user.name}')").args[0], deps)
            if user.op == "call_function" and user.target in _CAT_FUNCTIONS:
                raise _blocked(name, f"a concatenation ('{user.name}')")
            if not _is_only_data_input(user, node):
                raise _blocked(name, f"an op that mixes channels ('{user.name}': {_describe(user, modules)})")
            module = modules.get(str(user.target)) if user.op == "call_module" else None
            if _is_depthwise(module):
                _check_passthrough(name, str(user.target), calls, node, factor)
                deps.passthrough.append(str(user.target))
                queue.append((user, factor, True))
            elif isinstance(module, PRUNABLE_TYPES):
                _check_consumer(name, str(user.target), module, calls, node, factor)
                deps.consumers.append((str(user.target), factor))
            elif isinstance(module, BATCHNORM_TYPES):
                if factor != 1 or (deps.batchnorm is not None and not past_depthwise):
                    raise _blocked(name, f"a second or flattened BatchNorm ('{user.target}')")
                if past_depthwise:
                    deps.passthrough.append(str(user.target))
                else:
                    deps.batchnorm = str(user.target)
                queue.append((user, factor, past_depthwise))
            elif isinstance(module, nn.Flatten) or (user.op == "call_function" and user.target is torch.flatten) or (
                user.op == "call_method" and user.target in _FLATTEN_METHODS
            ):
                queue.append((user, factor * _flatten_factor(name, node, user), past_depthwise))
            elif (
                isinstance(module, _PASS_MODULES)
                or (user.op == "call_function" and user.target in _PASS_FUNCTIONS)
                or (user.op == "call_method" and user.target in _PASS_METHODS)
            ):
                queue.append((user, factor, past_depthwise))
            else:
                raise _blocked(name, f"an op that mixes channels ('{user.name}': {_describe(user, modules)})")
    return deps


def _is_depthwise(module: nn.Module | None) -> bool:
    """A depthwise conv (groups == in == out channels): it maps each channel to itself, so it can pass through."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def _check_passthrough(name: str, layer_name: str, calls: Mapping[str, list[Node]], node: Node, factor: int) -> None:
    """A depthwise conv passed through must be called once and read ``name``'s channels on the channel axis."""
    count = len(calls.get(layer_name, []))
    if count != 1:
        raise PruningError(f"layer '{name}': '{layer_name}' is called {count} times in forward; expected exactly once")
    if _ndim(node) != 4 or factor != 1:
        raise PruningError(f"layer '{name}': depthwise conv '{layer_name}' does not read its channels on the "
                           "channel axis")


def _check_layer(name: str, layer_name: str, layer: nn.Module, calls: Mapping[str, list[Node]]) -> None:
    """Reject layers that are grouped convs or not called exactly once in forward."""
    if _is_depthwise(layer):
        raise PruningError(
            f"layer '{name}': depthwise convolution '{layer_name}' keeps the channels of the layer that feeds it and "
            "is pruned along with that layer; prune the feeding layer and add this one to prune.skip"
        )
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise PruningError(
            f"layer '{name}': grouped convolution '{layer_name}' (groups={layer.groups}) is not supported yet; add it "
            "to prune.skip"
        )
    count = len(calls.get(layer_name, []))
    if count != 1:
        raise PruningError(f"layer '{name}': '{layer_name}' is called {count} times in forward; expected exactly once")


def _check_consumer(
    name: str, consumer: str, module: nn.Module, calls: Mapping[str, list[Node]], node: Node, factor: int
) -> None:
    """Check that ``consumer`` reads ``name``'s channels on its channel axis (dim 1 of a 4-D / 2-D input)."""
    _check_layer(name, consumer, module, calls)
    expected_ndim = 4 if isinstance(module, nn.Conv2d) else 2
    if _ndim(node) != expected_ndim or (isinstance(module, nn.Conv2d) and factor != 1):
        raise PruningError(f"layer '{name}': consumer '{consumer}' does not read its channels on the channel axis")


def _flatten_factor(name: str, node: Node, user: Node) -> int:
    """Spatial factor of a flatten/view/reshape from (N, C, *S) to (N, C*prod(S)); anything else is unsupported."""
    in_shape, out_shape = _shape(node), _shape(user)
    spatial = math.prod(in_shape[2:])
    if len(in_shape) < 2 or tuple(out_shape) != (in_shape[0], in_shape[1] * spatial):
        raise _blocked(name, f"a reshape from {tuple(in_shape)} to {tuple(out_shape)} ('{user.name}')")
    return spatial


def _is_only_data_input(user: Node, node: Node) -> bool:
    """Whether ``node`` is ``user``'s first argument and appears nowhere else among its inputs."""
    others: list[Node] = []
    map_arg((user.args[1:], user.kwargs), others.append)
    return bool(user.args) and user.args[0] is node and node not in others


def _describe(node: Node, modules: Mapping[str, nn.Module]) -> str:
    """Short human description of a graph node's op for error messages."""
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    return getattr(node.target, "__name__", str(node.target))


def _blocked(name: str, what: str) -> CoupledChannels:
    """The error for a layer whose output channels flow somewhere they cannot be removed from alone."""
    return CoupledChannels(
        f"layer '{name}' feeds {what}; its channels cannot be removed physically — prune block-internal layers "
        "(e.g. conv1 of a ResNet block) or add it to prune.skip"
    )


def _shape(node: Node) -> torch.Size:
    """The tensor shape ShapeProp recorded for ``node``."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise PruningError(f"no tensor shape recorded for graph node '{node.name}'")
    return meta.shape


def _ndim(node: Node) -> int:
    """Rank of the tensor ``node`` produces."""
    return len(_shape(node))


def _deps_of(name: str, deps: Mapping[str, LayerDeps]) -> LayerDeps:
    """``deps[name]`` with a clear error when the layer was not traced."""
    if name not in deps:
        raise PruningError(f"layer '{name}' has no traced dependencies; pass it to trace_dependencies first")
    return deps[name]


def _out_channels(name: str, module: nn.Module) -> int:
    """Output channels/features of a Conv2d or Linear."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise PruningError(f"layer '{name}' is a {type(module).__name__}, not an nn.Conv2d or nn.Linear")


def _index(name: str, indices: Tensor, n: int, keep: bool) -> Tensor:
    """Validated, sorted, unique LongTensor of channel indices in [0, n); a keep set must be non-empty."""
    index = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
    unique = torch.unique(index)
    if unique.numel() != index.numel():
        raise PruningError(f"layer '{name}': duplicate channel indices")
    if unique.numel() and (unique[0] < 0 or unique[-1] >= n):
        raise PruningError(f"layer '{name}': channel indices must lie in [0, {n})")
    if keep and not unique.numel():
        raise PruningError(f"layer '{name}': at least one channel must be kept")
    return unique


def _zeroing_hook(index: Tensor) -> Callable[[nn.Module, tuple, Tensor], Tensor]:
    """Forward hook returning the module output with channels ``index`` (dim 1) set to zero."""

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output.index_fill(1, index.to(output.device), 0.0)

    return hook


def _slice_layer(name: str, old: nn.Module, out_index: Tensor | None, in_index: Tensor | None) -> nn.Module:
    """A new Conv2d/Linear holding ``old``'s weights restricted to ``out_index`` rows and ``in_index`` columns."""
    if type(old) not in PRUNABLE_TYPES:
        raise PruningError(f"layer '{name}' is a {type(old).__name__}; slim only rebuilds plain nn.Conv2d / nn.Linear")
    weight = old.weight.detach()
    if out_index is not None:
        weight = weight.index_select(0, out_index.to(weight.device))
    if in_index is not None:
        weight = weight.index_select(1, in_index.to(weight.device))
    has_bias = old.bias is not None
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(old, nn.Conv2d):
        new: nn.Module = nn.Conv2d(
            weight.shape[1], weight.shape[0], old.kernel_size, old.stride, old.padding, old.dilation,
            bias=has_bias, padding_mode=old.padding_mode, **factory,
        )  # fmt: skip
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, **factory)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.weight.requires_grad_(old.weight.requires_grad)
        if has_bias:
            bias = old.bias.detach()
            new.bias.copy_(bias if out_index is None else bias.index_select(0, out_index.to(bias.device)))
            new.bias.requires_grad_(old.bias.requires_grad)
    return new.train(old.training)


def _slice_depthwise(old: nn.Conv2d, index: Tensor) -> nn.Conv2d:
    """A new depthwise Conv2d keeping channels ``index`` (groups shrink with the channels)."""
    weight = old.weight.detach().index_select(0, index.to(old.weight.device))
    k = index.numel()
    new = nn.Conv2d(k, k, old.kernel_size, old.stride, old.padding, old.dilation, groups=k, bias=old.bias is not None,
                    padding_mode=old.padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.weight.requires_grad_(old.weight.requires_grad)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach().index_select(0, index.to(old.bias.device)))
            new.bias.requires_grad_(old.bias.requires_grad)
    return new.train(old.training)


def _slice_batchnorm(old: nn.Module, index: Tensor) -> nn.Module:
    """A new BatchNorm of the same type (subclasses included) keeping channels ``index`` (affine params and running
    statistics); an affine parameter the type leaves out (``None``, e.g. a BatchNorm without shift) stays out."""
    ref = old.weight if old.affine else old.running_mean
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = type(old)(index.numel(), old.eps, old.momentum, old.affine, old.track_running_stats, **factory)
    with torch.no_grad():
        if old.affine:
            for attr in ("weight", "bias"):
                param = getattr(old, attr)
                if param is None:
                    continue
                getattr(new, attr).copy_(param.index_select(0, index.to(param.device)))
                getattr(new, attr).requires_grad_(param.requires_grad)
        if old.track_running_stats:
            for attr in ("running_mean", "running_var"):
                buffer = getattr(old, attr)
                getattr(new, attr).copy_(buffer.index_select(0, index.to(buffer.device)))
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new.train(old.training)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (works inside Sequential/ModuleList too)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
