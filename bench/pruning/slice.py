"""Removing or zeroing pruned channels: ``slim`` slices layers physically, ``masked`` zeroes them with forward hooks
and ``zero_pruned_`` zeroes the parameters that produce them, so a slimmed model computes what the masked one does."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from bench.pruning.base import PRUNABLE_TYPES, LayerDeps, PruningError, channel_index, out_channels

log = logging.getLogger(__name__)


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
        index = channel_index(name, indices, out_channels(name, model.get_submodule(name)), keep=True)
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
            index = channel_index(name, indices, out_channels(name, model.get_submodule(name)), keep=False)
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
            index = channel_index(name, indices, out_channels(name, layer), keep=False).to(layer.weight.device)
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


def _deps_of(name: str, deps: Mapping[str, LayerDeps]) -> LayerDeps:
    """``deps[name]`` with a clear error when the layer was not traced."""
    if name not in deps:
        raise PruningError(f"layer '{name}' has no traced dependencies; pass it to trace_dependencies first")
    return deps[name]


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
