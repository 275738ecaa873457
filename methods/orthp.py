"""OrthP (Wang, Qin, Bai and Fu 2021, "Dynamical Isometry"): orthogonalise every weight after pruning.

TPP's "L1 + OrthP" baseline, the "oracle" trainability recovery for linear MLPs: after removal and before
retraining, each conv/linear weight is replaced by the Q factor of its own QR decomposition, so every layer is
exactly (semi-)orthogonal. For a linear MLP whose pruned widths never expand, every singular value of the
input-output Jacobian is then exactly 1 (dynamical isometry). It does not carry over to nonlinear BN nets.
Used as a component after a selector: ``l1 + orthp`` or ``random + orthp`` (results show ``l1+orthp``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench import Method, RunContext, field, register_method

GAINS = {"linear": 1.0, "relu": math.sqrt(2.0)}  # the released code's activation gains (torch.nn.init's)


@dataclass
class OrthPHparams:
    """OrthP has one knob: the scale of the orthogonal weights (the released code derives it from the model)."""

    gain: float | None = field(None, low=0, low_open=True,
                               doc="scale of the orthogonal weights; null: from the model's activation "
                                   "(1 for linear, sqrt(2) for ReLU), as the released code does")


def orthogonal_factor(weight: torch.Tensor) -> torch.Tensor:
    """The Q of a reduced QR of ``weight`` seen as out × (in·k·k), transposed when wide, in ``weight``'s shape.

    Columns of Q are multiplied by sign(diag(R)) so that Q is the unique factor with a positive-diagonal R
    (the released code does the same). Where diag(R) is exactly 0 (a rank-deficient weight) we use +1, since
    sign(0) = 0 would zero a column; the released code's behaviour there is UNCERTAIN (it multiplies by sign).
    """
    matrix = weight.detach().reshape(weight.shape[0], -1)
    wide = matrix.shape[0] < matrix.shape[1]
    if wide:
        matrix = matrix.t()
    q, r = torch.linalg.qr(matrix, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    q = q * torch.where(signs == 0, torch.ones_like(signs), signs)
    if wide:
        q = q.t()
    return q.reshape(weight.shape)


@torch.no_grad()
def orthogonalize_(model: nn.Module, gain: float) -> list[str]:
    """Replace every Conv2d and Linear weight of ``model`` in place by ``gain`` × its orthogonal factor.

    Every layer is changed, pruned or not (as the released code does); biases and BatchNorm are untouched.
    Returns the names of the changed layers.
    """
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.copy_(gain * orthogonal_factor(module.weight))
            changed.append(name)
    return changed


@register_method("orthp")
class OrthP(Method):
    """A component that only re-initialises: chain it after a selector (``l1 + orthp``)."""

    Hparams = OrthPHparams
    description = "Wang et al. 2021 (TPP's L1 + OrthP): replace each weight by its QR orthogonal factor after pruning"
    selects = False
    group_aware = True  # it changes every weight after removal, whatever was pruned

    def after_slim(self, model: nn.Module, ctx: RunContext) -> None:
        gain = self.hparams.gain if self.hparams.gain is not None else GAINS[ctx.nonlinearity]
        orthogonalize_(model, gain)
