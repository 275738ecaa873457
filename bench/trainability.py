"""Trainability metric of the TPP paper: singular values of the input-output Jacobian (JSV).

For each probe sample ``x`` the Jacobian ``d logits(x) / d x`` is a ``num_classes x (C*H*W)``
matrix; a network whose Jacobian singular values sit near 1 (dynamical isometry) propagates
gradients well.  TPP's own code computes the Jacobian on a batch in whatever mode the model is in
(train mode during retraining), so BatchNorm batch statistics couple the samples.  We deliberately
compute it **per sample in eval mode** (BatchNorm uses running statistics), which makes the metric a
property of the network alone, independent of the probe batch composition.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

logger = logging.getLogger(__name__)

__all__ = ["JSVStats", "jacobian_singular_values", "jsv_stats"]


@dataclass(frozen=True)
class JSVStats:
    """Summary of Jacobian singular values over a probe set.

    ``mean``/``std``/``min``/``max`` are over all singular values of all samples (``std`` is the
    population standard deviation); ``condition`` is the mean over samples of each sample's
    largest / smallest singular value; ``mean_sq_dev`` is the mean of ``(s - 1)**2`` over all
    singular values (distance from dynamical isometry).
    """

    mean: float
    std: float
    min: float
    max: float
    condition: float
    mean_sq_dev: float

    def as_dict(self) -> dict[str, float]:
        """Plain ``{field: value}`` dict, e.g. for JSON result files."""
        return asdict(self)


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def jacobian_singular_values(model: nn.Module, inputs: Tensor, chunk_size: int = 50) -> Tensor:
    """Singular values of each sample's logit-input Jacobian, shape ``(N, num_classes)``, float64.

    ``inputs`` is an ``(N, C, H, W)`` (or any ``(N, ...)``) probe tensor; it is moved to the model's
    device.  The model is evaluated in eval mode through :func:`torch.func.functional_call` with
    its (detached) parameters and buffers, so BatchNorm uses running statistics and no gradient
    graph is built for the parameters.  Per-sample Jacobians come from ``vmap(jacrev(f))``:
    reverse mode is the cheap direction because the output (``num_classes`` logits) is far smaller
    than the input, and ``jacrev`` vmaps its backward pass over the ``num_classes`` basis vectors.
    The probe set is processed ``chunk_size`` samples at a time to bound memory.  Singular values
    (descending per row) are computed in float64 with batched :func:`torch.linalg.svdvals`.
    The model's train/eval mode is restored afterwards.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs must hold at least one probe sample")
    device = _model_device(model)
    state = {name: t.detach() for name, t in (*model.named_parameters(), *model.named_buffers())}

    def logits(x: Tensor) -> Tensor:
        """Logits of a single (unbatched) sample, flattened to 1-D."""
        return functional_call(model, state, (x.unsqueeze(0),)).reshape(-1)

    per_sample_jacobian = vmap(jacrev(logits))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        values = []
        for chunk in inputs.split(chunk_size):
            jac = per_sample_jacobian(chunk.to(device))  # (n, num_classes, *input_shape)
            values.append(torch.linalg.svdvals(jac.flatten(2).double()))
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(values)


def jsv_stats(model: nn.Module, inputs: Tensor, chunk_size: int = 50) -> JSVStats:
    """:class:`JSVStats` of :func:`jacobian_singular_values` on the probe ``inputs``."""
    sv = jacobian_singular_values(model, inputs, chunk_size)
    stats = JSVStats(
        mean=sv.mean().item(),
        std=sv.std(correction=0).item(),
        min=sv.min().item(),
        max=sv.max().item(),
        condition=(sv.amax(dim=1) / sv.amin(dim=1)).mean().item(),
        mean_sq_dev=(sv - 1).square().mean().item(),
    )
    logger.debug("JSV stats over %d samples: %s", sv.shape[0], stats)
    return stats
