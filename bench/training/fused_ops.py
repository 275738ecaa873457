"""The fused model's kernels: a ``Linear`` whose members run as one matrix multiply, and a ``Conv2d`` route written
out as one grouped convolution.

Under ``vmap`` a stack of members' ``Linear`` layers becomes one small matrix multiply per member (``bmm``), and a
layer whose input all members share (a seed's batch, under the inner ``vmap``) copies the input once per member:
for a 10-wide pruned MLP that is several times the arithmetic's time (``benchmarks/perf.py --sections fusion``).
``MemberLinear`` gives ``vmap`` its own batching rule: a shared input meets the members' weights laid side by side
in one matrix multiply, members with their own inputs run one batched multiply with the bias added in it. Autograd
records the operations the rule runs, so the backward pass is batched the same way. A ``Conv2d`` takes one of two
routes (``CONV_ROUTE``, by device, or ``FusedModel(conv=...)``): ``"vmap"``, PyTorch's batching rule for
``conv2d``, or ``"grouped"``, ``GroupedConv2d``: the member axis folded into the channels by hand, one ``F.conv2d``
with ``groups`` times the members, its backward by ``convolution_backward``.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class _StackedLinear(torch.autograd.Function):
    """``F.linear`` with a batching rule for a stack of members (see the module's docstring)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        return (grad @ weight, flat_grad.t() @ x.reshape(-1, x.shape[-1]),
                flat_grad.sum(0) if ctx.has_bias else None)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        x_dim, w_dim, b_dim = in_dims
        if w_dim is None:  # one weight for the whole batch: the batch is one more leading dimension of x
            if b_dim is not None:
                bias = bias.movedim(b_dim, 0).unsqueeze(-2)
            return F.linear(x.movedim(x_dim, 0), weight, bias), 0
        weight = weight.movedim(w_dim, 0)
        members, out_features, in_features = weight.shape
        if bias is not None:
            bias = bias.movedim(b_dim, 0) if b_dim is not None else bias.expand(members, out_features)
        if x_dim is None:  # one input for every member: the members' weights side by side, one matrix multiply
            y = F.linear(x, weight.reshape(members * out_features, in_features),
                         None if bias is None else bias.reshape(members * out_features))
            return y.unflatten(-1, (members, out_features)), x.dim() - 1
        x = x.movedim(x_dim, 0)
        flat = x.reshape(members, -1, in_features)
        w_t = weight.transpose(1, 2)
        y = torch.bmm(flat, w_t) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, w_t)
        return y.reshape(*x.shape[:-1], out_features), 0


class MemberLinear(nn.Linear):
    """An ``nn.Linear`` whose forward batches its members as one matrix multiply under ``vmap``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _StackedLinear.apply(input, self.weight, self.bias)


CONV_ROUTES = ("vmap", "grouped")
# The route a fused Conv2d takes on each device type (others: "vmap"). Measured on CPU (benchmarks/perf.py --sections
# fusion, docs/fusion.md): both routes run the same grouped convolution, bit for bit, in times equal within noise, so
# vmap's own rule stays; on CUDA the routes were never timed (no GPU was lent), so vmap stays there too.
CONV_ROUTE = {"cpu": "vmap", "cuda": "vmap"}


def conv_route(device: torch.device) -> str:
    """The ``CONV_ROUTES`` entry a fused model's convolutions take on ``device``."""
    return CONV_ROUTE.get(device.type, "vmap")


class _GroupedConv2d(torch.autograd.Function):
    """``F.conv2d`` whose ``vmap`` rule is written here: under ``vmap`` over members (batch size K), the members'
    weights are concatenated along the output channels and the call is one convolution, with ``groups * K`` when
    the input is per member (the input reshaped from (K, N, C, H, W) to (N, K*C, H, W)) or with ``groups`` when all
    members share one input (and ``groups`` is 1). Nested ``vmap`` levels fold in turn, so a fused model's
    (seeds, members per seed) stack ends in one plain ``F.conv2d``; autograd records that call, and its backward is
    ``aten.convolution_backward`` of the same grouped convolution."""

    generate_vmap_rule = False

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, ...],
                padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_sizes = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_sizes is not None and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, stride, padding, dilation,
                                                         False, [0] * len(stride), groups, mask)
        return gx, gw, gb, None, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
             groups: int) -> tuple[torch.Tensor, int]:
        x_dim, w_dim, b_dim = in_dims[:3]
        k = info.batch_size
        if w_dim is None and b_dim is None:  # one weight for every member: the members' inputs are one batch
            x = x.movedim(x_dim, 0)
            out = _GroupedConv2d.apply(x.reshape(-1, *x.shape[2:]), weight, bias, stride, padding, dilation, groups)
            return out.view(k, -1, *out.shape[1:]), 0
        weight = weight.movedim(w_dim, 0) if w_dim is not None else weight.expand(k, *weight.shape)
        out_channels = weight.shape[1]
        weight = weight.reshape(k * out_channels, *weight.shape[2:])
        if bias is not None:
            bias = (bias.movedim(b_dim, 0) if b_dim is not None else bias.expand(k, *bias.shape)).reshape(-1)
        if x_dim is None and groups == 1:  # one input for every member: their filters side by side
            out = _GroupedConv2d.apply(x, weight, bias, stride, padding, dilation, 1)
        else:
            x = x.movedim(x_dim, 1) if x_dim is not None else x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:])
            out = _GroupedConv2d.apply(x.reshape(x.shape[0], -1, *x.shape[3:]), weight, bias, stride, padding,
                                       dilation, groups * k)
        return out.view(out.shape[0], k, out_channels, *out.shape[2:]), 1


def grouped_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, ...],
                   padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> torch.Tensor:
    """``F.conv2d`` (integer padding, batched 4-d input) that under ``vmap`` is the explicit grouped convolution of
    ``_GroupedConv2d``; outside ``vmap`` it is ``F.conv2d``."""
    return _GroupedConv2d.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)


class GroupedConv2d(nn.Conv2d):
    """A ``Conv2d`` whose convolution is ``grouped_conv2d`` (the fused model's "grouped" route); string padding,
    non-zero padding modes and unbatched input keep ``Conv2d``'s own call (``vmap``'s rule)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or input.dim() != 4:
            return super()._conv_forward(input, weight, bias)
        return grouped_conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def batched_copy(model: nn.Module, conv: str = "vmap") -> nn.Module:
    """A copy of ``model`` for the fused forward pass (same parameters and buffers by name, so ``functional_call``
    takes the stacked state unchanged): every ``nn.Linear`` a ``MemberLinear``; with ``conv="grouped"`` every
    ``nn.Conv2d`` a ``GroupedConv2d`` (``"vmap"``: ``Conv2d``'s own call under ``vmap``'s rule)."""
    if conv not in CONV_ROUTES:
        raise ValueError(f"unknown convolution route {conv!r} (one of {', '.join(CONV_ROUTES)})")
    swap: dict[type, type] = {nn.Linear: MemberLinear, **({nn.Conv2d: GroupedConv2d} if conv == "grouped" else {})}
    base = copy.deepcopy(model)
    for module in base.modules():
        if type(module) in swap:
            module.__class__ = swap[type(module)]
    return base
