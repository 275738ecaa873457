"""Trainability metric of the TPP paper: singular values of the input-output Jacobian (JSV).

For each probe sample ``x`` the Jacobian ``d logits(x) / d x`` is a ``num_classes x (C*H*W)``
matrix; a network whose Jacobian singular values sit near 1 (dynamical isometry) propagates
gradients well.  TPP's own code computes the Jacobian on a batch in whatever mode the model is in
(train mode during retraining), so BatchNorm batch statistics couple the samples.  We deliberately
compute it **per sample in eval mode** (BatchNorm uses running statistics), which makes the metric a
property of the network alone, independent of the probe batch composition.

The Jacobian is built in full float32 on every device: TF32 (cuBLAS matmuls and cuDNN convolutions, on by default
for cuDNN on Ampere and later) is switched off for the computation, so a GPU's JSV equals the CPU's within float32
rounding; the singular values themselves are float64.

Memory is bounded by a byte budget (:func:`plan_chunks`): samples, classes pulled back per backward pass and
input columns of the float64 reduction are chunked so that 1000-class ImageNet models fit as well as 10-class ones.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_BYTES", "ChunkPlan", "JSVStats", "batch_jacobian_singular_values", "jacobian_singular_values",
           "jsv_stats", "plan_chunks"]


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


DEFAULT_MAX_BYTES = 2**30
"""Default memory budget of :func:`jacobian_singular_values`: 1 GiB of Jacobian, activation and cotangent tensors."""

BACKWARD_FACTOR = 6
"""Cotangent working set of one backward pass, in units of the model's largest activation (see :func:`plan_chunks`)."""


@dataclass(frozen=True)
class ChunkPlan:
    """How :func:`jacobian_singular_values` splits its work to stay within a memory budget.

    ``samples``: probe samples per vmapped chunk; ``classes``: output classes (cotangent basis vectors) pulled
    back together in one vmapped backward pass; ``columns``: input elements per block of the float64 singular value
    reduction (equal to the input size when the whole float64 Jacobian of a chunk goes to one ``svdvals``).
    """

    samples: int
    classes: int
    columns: int


def plan_chunks(
    num_samples: int,
    num_classes: int,
    input_numel: int,
    *,
    itemsize: int = 4,
    saved_numel: int = 0,
    largest_activation: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_samples: int | None = None,
) -> ChunkPlan:
    """Largest sample, class and column chunks whose estimated memory fits ``max_bytes``.

    With ``K = num_classes``, ``D = input_numel``, ``S = saved_numel`` (activation elements the forward pass of one
    sample keeps for the backward), ``a = max(largest_activation, D)`` and ``b = itemsize``, a chunk of ``n``
    samples and ``k`` classes is estimated at ``b * n * (K*D + S + k * (D + BACKWARD_FACTOR * a))`` bytes: the
    chunk's Jacobians, its saved activations, and per pulled-back class the input gradient plus a few
    activation-sized cotangents.  All ``K`` classes are pulled back together and as many samples as fit (at most
    ``max_samples`` and ``num_samples``) are taken at once; if not even one sample fits with all classes, samples go
    one at a time and ``k`` is the largest class chunk that fits (at least 1: one sample's ``K x D`` Jacobian is
    always held, even over budget).  The singular values are then reduced in float64: in one ``svdvals`` on the
    chunk's whole float64 Jacobian when that (and ``svdvals``' copy of it) fits next to the Jacobian, else by a
    blocked QR of ``J^T`` over ``columns`` input elements at a time, sized so that ``8 * n * K * (2*K + 3*columns)``
    bytes fit (at least ``K`` columns).
    """
    if min(num_samples, num_classes, input_numel, itemsize, max_bytes) < 1:
        raise ValueError("plan_chunks needs positive sizes and budget")
    K, D = num_classes, input_numel
    per_class = D + BACKWARD_FACTOR * max(largest_activation, D)
    per_sample = K * D + saved_numel
    cap = num_samples if max_samples is None else max(1, min(num_samples, max_samples))
    budget = max_bytes // itemsize  # elements of the model's dtype
    samples = max(1, min(cap, budget // (per_sample + K * per_class)))
    classes = K
    if samples * (per_sample + K * per_class) > budget:  # not even one sample with every class at once
        classes = max(1, min(K, (budget - per_sample) // per_class))
    room = max_bytes - itemsize * samples * K * D  # left for the float64 reduction
    if 16 * samples * K * D <= room:
        columns = D
    else:
        columns = min(D, max(K, (room // (8 * samples * K) - 2 * K) // 3))
    return ChunkPlan(samples=samples, classes=classes, columns=columns)


#: The TF32 switches of PyTorch's precision API (``fp32_precision``: "ieee" is full float32, "tf32" reduced).
TF32_SWITCHES = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)


@contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 in matmuls and convolutions inside the block (restored after): the JSV's precision is float32's."""
    saved = [switch.fp32_precision for switch in TF32_SWITCHES]
    try:
        for switch in TF32_SWITCHES:
            switch.fp32_precision = "ieee"
        yield
    finally:
        for switch, value in zip(TF32_SWITCHES, saved):
            switch.fp32_precision = value


def _activation_sizes(model: nn.Module, state: dict[str, Tensor], sample: Tensor) -> tuple[Tensor, int, int]:
    """Logits of one sample, and the summed and largest output element counts of the model's leaf modules."""
    sizes: list[int] = []

    def record(module: nn.Module, args: object, output: object) -> None:
        """Forward hook noting the size of a tensor output."""
        if isinstance(output, Tensor):
            sizes.append(output.numel())

    handles = [m.register_forward_hook(record) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            out = functional_call(model, state, (sample.unsqueeze(0),))
    finally:
        for handle in handles:
            handle.remove()
    return out, sum(sizes), max(sizes, default=0)


def _chunk_jacobian(logits: Callable[[Tensor], Tensor], x: Tensor, basis: Tensor, classes: int) -> Tensor:
    """Jacobians ``(n, K, D)`` of the samples ``x``: one forward pass per sample, pulling back ``classes`` rows of
    ``basis`` at a time."""

    def pull_back(sample: Tensor, cotangents: Tensor) -> Tensor:
        """Rows ``cotangents @ d logits(sample) / d sample`` of one sample, as ``jacrev`` computes them."""
        _, vjp_fn = vjp(logits, sample)
        return vmap(vjp_fn)(cotangents)[0]

    num_classes = basis.shape[0]
    if classes >= num_classes:
        return vmap(pull_back, in_dims=(0, None))(x, basis).flatten(2)
    # plan_chunks splits the classes only when samples go one at a time: keep each sample's forward pass (its
    # vjp) for all of its class chunks rather than repeating it per chunk.
    jac = x.new_empty((x.shape[0], num_classes, x[0].numel()))  # input gradients have the input's dtype
    for i, sample in enumerate(x):
        _, vjp_fn = vjp(logits, sample)
        for start in range(0, num_classes, classes):
            jac[i, start:start + classes] = vmap(vjp_fn)(basis[start:start + classes])[0].flatten(1)
    return jac


def _singular_values(jac: Tensor, columns: int) -> Tensor:
    """Float64 singular values (descending) of each ``(K, D)`` matrix of ``jac``, ``columns`` inputs at a time.

    When ``columns`` covers the input this is ``svdvals`` of the float64 copy; otherwise a blocked (TSQR) QR
    factorisation of ``J^T`` keeps only a ``(K + columns, K)`` float64 block per sample: ``J^T = Q R`` with
    orthonormal ``Q`` gives ``J`` and ``R`` the same singular values, with the backward stability of QR (no
    squared condition number as with the Gram matrix ``J J^T``).
    """
    if columns >= jac.shape[2]:
        return torch.linalg.svdvals(jac.double())
    first, *rest = jac.split(columns, dim=2)
    r = torch.linalg.qr(first.transpose(1, 2).double(), mode="r").R
    for block in rest:
        r = torch.linalg.qr(torch.cat((r, block.transpose(1, 2).double()), dim=1), mode="r").R
    return torch.linalg.svdvals(r)


def jacobian_singular_values(
    model: nn.Module, inputs: Tensor, chunk_size: int | None = 50, max_bytes: int = DEFAULT_MAX_BYTES
) -> Tensor:
    """Singular values of each sample's logit-input Jacobian, shape ``(N, num_classes)``, float64.

    ``inputs`` is an ``(N, C, H, W)`` (or any ``(N, ...)``) probe tensor; it is moved to the model's
    device.  The model is evaluated in eval mode through :func:`torch.func.functional_call` with
    its (detached) parameters and buffers, so BatchNorm uses running statistics and no gradient
    graph is built for the parameters.  Per-sample Jacobians come from a vmapped ``vjp`` pulled back
    over the standard basis of the logits, as ``vmap(jacrev(f))`` computes them: reverse mode is the
    cheap direction because the output (``num_classes`` logits) is far smaller than the input.

    Memory is bounded by ``max_bytes`` (default 1 GiB) through :func:`plan_chunks`: one forward pass of a single
    sample measures the number of classes and the model's activation sizes, and the plan then fixes how many
    samples are vmapped together, how many classes one backward pass pulls back (a 10-class CIFAR model takes all
    classes and ``chunk_size`` samples at once; a 1000-class 3x224x224 ResNet-50 takes one sample at a time and 17
    classes per backward pass at the default budget, recomputing the forward pass per class chunk and writing the
    rows into one preallocated ``K x D`` Jacobian), and how the float64 singular value reduction is blocked (see
    :func:`_singular_values`).  Without a budget, ``vmap(jacrev(f))`` pulls all ``K`` classes back at once, which
    for that ResNet-50 needs over 10 GB per sample.  ``chunk_size`` caps the samples per chunk (``None``: as many
    as the budget allows; the budget may lower it further; 50 keeps CPU tensors small enough to be fast).
    Singular values are descending per row.  The model's train/eval mode is restored afterwards, and TF32 is off
    meanwhile (:func:`full_float32`).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs must hold at least one probe sample")
    device = _model_device(model)
    state = {name: t.detach() for name, t in (*model.named_parameters(), *model.named_buffers())}

    def logits(x: Tensor) -> Tensor:
        """Logits of a single (unbatched) sample, flattened to 1-D."""
        return functional_call(model, state, (x.unsqueeze(0),)).reshape(-1)

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with full_float32():
            out, saved, largest = _activation_sizes(model, state, inputs[0].to(device))
            num_classes, input_numel = out.numel(), inputs[0].numel()
            plan = plan_chunks(
                inputs.shape[0], num_classes, input_numel,
                itemsize=max(inputs.element_size(), out.element_size()), saved_numel=saved,
                largest_activation=largest, max_bytes=max_bytes, max_samples=chunk_size,
            )
            logger.debug("JSV of %d samples, %d classes, %d inputs: %s", inputs.shape[0], num_classes, input_numel,
                         plan)
            jac_bytes = num_classes * input_numel * out.element_size()
            if jac_bytes > max_bytes:
                logger.warning("one sample's %d x %d Jacobian (%.3g MiB) exceeds the JSV memory budget (%.3g MiB)",
                               num_classes, input_numel, jac_bytes / 2**20, max_bytes / 2**20)
            basis = torch.eye(num_classes, dtype=out.dtype, device=device)
            del out
            values = []
            for chunk in inputs.split(plan.samples):
                jac = _chunk_jacobian(logits, chunk.to(device), basis, plan.classes)  # (n, num_classes, C*H*W)
                values.append(_singular_values(jac, plan.columns))
                del jac  # before the next chunk's Jacobian is built
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(values)


def batch_jacobian_singular_values(model: nn.Module, inputs: Tensor) -> Tensor:
    """Singular values ``(N, num_classes)`` as TPP's code computes them (``get_jacobian_singular_values``): the probe
    ``inputs`` as one batch through the model in train mode, where BatchNorm normalises with the batch's statistics.

    Row ``i`` of sample ``a``'s matrix is the gradient of ``Σ_b logits[b, i]`` with respect to ``x_a`` (the code's
    backward of a column of ones), so the other samples' logits enter through the batch statistics. Runs on a copy
    of the model (running statistics and the model's mode untouched), seeded (dropout), with TF32 off; no memory
    budget: the whole batch's graph is held, which suits CIFAR- and MNIST-sized probes.
    """
    if inputs.shape[0] == 0:
        raise ValueError("inputs must hold at least one probe sample")
    net = copy.deepcopy(model).train()
    for p in net.parameters():
        p.requires_grad_(False)
    x = inputs.to(_model_device(model)).clone().requires_grad_(True)
    with torch.random.fork_rng(devices=[]), full_float32():
        torch.manual_seed(0)
        out = net(x)
        num_classes = out.shape[1]
        rows = [torch.autograd.grad(out[:, i].sum(), x, retain_graph=i < num_classes - 1)[0].flatten(1)
                for i in range(num_classes)]
    return torch.linalg.svdvals(torch.stack(rows, dim=1).double())


def jsv_stats(
    model: nn.Module, inputs: Tensor, chunk_size: int | None = 50, max_bytes: int = DEFAULT_MAX_BYTES,
    mode: str = "eval",
) -> JSVStats:
    """:class:`JSVStats` of :func:`jacobian_singular_values` on the probe ``inputs`` (``mode`` "train_batch":
    of :func:`batch_jacobian_singular_values`, TPP's code's way)."""
    if mode == "train_batch":
        sv = batch_jacobian_singular_values(model, inputs)
    elif mode == "eval":
        sv = jacobian_singular_values(model, inputs, chunk_size, max_bytes)
    else:
        raise ValueError(f"unknown JSV mode {mode!r}; known: eval, train_batch")
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
