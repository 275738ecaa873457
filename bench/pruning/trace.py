"""The torch.fx trace that finds, for each layer to prune, the BatchNorm and the conv/linear layers reading its
output channels; only ops that map zero to zero per channel may lie between them."""
from __future__ import annotations

import copy
import logging
import math
import operator
from collections import deque
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node, Tracer
from torch.fx.node import map_arg
from torch.fx.passes.shape_prop import ShapeProp

from bench.pruning.base import (
    BATCHNORM_TYPES,
    PRUNABLE_TYPES,
    CoupledChannels,
    LayerDeps,
    PruningError,
    ResidualBranch,
    is_depthwise,
)

log = logging.getLogger(__name__)


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
            if is_depthwise(module):
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
    if is_depthwise(layer):
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
