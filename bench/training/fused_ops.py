"""The fused model's kernels: a ``Linear`` whose members run as one matrix multiply.

Under ``vmap`` a stack of members' ``Linear`` layers becomes one small matrix multiply per member (``bmm``), and a
layer whose input all members share (a seed's batch, under the inner ``vmap``) copies the input once per member:
for a 10-wide pruned MLP that is several times the arithmetic's time (``benchmarks/perf.py --sections fusion``).
``MemberLinear`` gives ``vmap`` its own batching rule: a shared input meets the members' weights laid side by side
in one matrix multiply, members with their own inputs run one batched multiply with the bias added in it. Autograd
records the operations the rule runs, so the backward pass is batched the same way.
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


def batched_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for the fused forward pass: every ``nn.Linear`` a ``MemberLinear`` (same parameters and
    names, so ``functional_call`` takes the stacked state unchanged)."""
    base = copy.deepcopy(model)
    for module in base.modules():
        if type(module) is nn.Linear:
            module.__class__ = MemberLinear
    return base
