"""Masking instead of removal (``prune.mode: mask``): the pruned units of each group are zeroed on every member and held
at zero through retraining, for protocols that mask (OrthoReg's ResNet code zero-masks each block's residual branch);
and what removing them would leave, which the harness reports beside what the masked model costs.

A unit is zeroed through the parameters that produce it (weight rows, biases, BatchNorm scale and shift), so the
masked model's outputs equal the slimmed model's wherever removal exists (``tests/pruning/test_masking.py``). During
training ``MaskHooks`` zero those entries' gradients after every backward pass (so momentum and weight decay never
move them) and the entries themselves after every step. The masks are rebuilt from the kept units that ``pruned.pt``
and ``model.pt`` store, so a resumed run holds the same ones.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from bench.pruning.base import PRUNABLE_TYPES, PruningError, channel_index
from bench.pruning.groups import GroupPlan, channel_masks, slim_groups
from bench.training.hooks import BaseHooks
from bench.training.measure import count_flops, count_parameters


def parameter_masks(model: nn.Module, plan: GroupPlan, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """By parameter name, a 0/1 vector over its output channels, 0 where a pruned unit of ``keep``'s groups lies
    (parameters without a pruned unit are left out). A BatchNorm without affine scale and shift cannot be silenced
    by its parameters: a PruningError naming it."""
    masks: dict[str, Tensor] = {}
    for member, rows in channel_masks(model, plan, pruned_units(plan, keep), zero=True).items():
        if bool(rows.all()):
            continue
        module = model.get_submodule(member)
        if not isinstance(module, PRUNABLE_TYPES) and (not getattr(module, "affine", False) or module.bias is None):
            raise PruningError(f"layer '{member}' has no affine scale and shift, so zeroing its parameters cannot "
                               "silence its channels; use prune.mode: remove")
        for attr in ("weight", "bias"):
            if getattr(module, attr, None) is not None:
                masks[f"{member}.{attr}"] = rows
    return masks


def pruned_units(plan: GroupPlan, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The units each group (by leader) loses: the complement of its kept ones."""
    pruned = {}
    for name, indices in keep.items():
        kept = torch.zeros(plan.groups[name].size, dtype=torch.bool)
        kept[channel_index(name, indices, kept.numel(), keep=True)] = True
        pruned[name] = torch.nonzero(~kept).flatten()
    return pruned


def apply_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero, in place, the masked entries of ``model``'s parameters."""
    with torch.no_grad():
        for param, rows in _bound(model, masks):
            param.mul_(rows)


def _bound(model: nn.Module, masks: Mapping[str, Tensor]) -> list[tuple[nn.Parameter, Tensor]]:
    """Each masked parameter with its mask on its device and dtype, shaped to broadcast over its rows."""
    params = dict(model.named_parameters())
    missing = [name for name in masks if name not in params]
    if missing:
        raise PruningError(f"the model has no parameter '{missing[0]}' to mask")
    return [(params[name], rows.to(params[name].device, params[name].dtype).view(-1, *[1] * (params[name].dim() - 1)))
            for name, rows in masks.items()]


class MaskHooks(BaseHooks):
    """Training hooks that keep masked entries at zero: their gradients are zeroed after backward (so momentum and
    weight decay never act on them) and the entries after every optimizer step (whatever the optimizer did)."""

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self.masks = dict(masks)
        self._bound: tuple[nn.Module, list[tuple[nn.Parameter, Tensor]]] | None = None

    def _pairs(self, model: nn.Module) -> list[tuple[nn.Parameter, Tensor]]:
        if self._bound is None or self._bound[0] is not model:
            self._bound = (model, _bound(model, self.masks))
        return self._bound[1]

    def after_backward(self, model: nn.Module, step: int) -> None:
        for param, rows in self._pairs(model):
            if param.grad is not None:
                param.grad.mul_(rows)

    def after_step(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            for param, rows in self._pairs(model):
                param.mul_(rows)


def removal_cost(model: nn.Module, plan: GroupPlan, keep: Mapping[str, Tensor], input_shape: tuple[int, ...]
                 ) -> dict[str, int]:
    """``params_pruned`` and ``flops_pruned``: what removing the pruned units would leave. ``model`` is a disposable
    instance that ``plan`` was made on (it is slimmed). Every group but a branch is removed physically; a branch is
    counted as if its pruned rows and their BatchNorm entries were removed while the residual sum keeps its width
    (the bookkeeping of OrthoReg's code, which no model can run)."""
    branches = {name: k for name, k in keep.items() if plan.groups[name].kind == "branch"}
    slim_groups(model, plan, {name: k for name, k in keep.items() if name not in branches})
    params, flops = count_parameters(model), count_flops(model, input_shape)
    per_layer = layer_flops(model, input_shape) if branches else {}
    for member, rows in channel_masks(model, plan, pruned_units(plan, branches), zero=True).items():
        module = model.get_submodule(member)
        gone, channels = int((rows == 0).sum()), rows.numel()
        params -= gone * sum(p[0].numel() for p in (module.weight, getattr(module, "bias", None)) if p is not None)
        flops -= per_layer.get(member, 0) * gone // channels
    return {"params_pruned": params, "flops_pruned": flops}


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs of each Conv2d and Linear on one sample, counted as ``count_flops`` does (2 per multiply-add)."""
    found: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202 - a forward hook
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            fan_in = module.weight[0].numel()  # (in / groups) · kernel for a conv, in_features for a linear
            found[name] = found.get(name, 0) + 2 * output.numel() * fan_in
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    try:
        count_flops(model, input_shape)
    finally:
        for handle in handles:
            handle.remove()
    return found
