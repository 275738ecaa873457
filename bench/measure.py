"""Model cost measurements: parameter count, FLOPs and inference latency.

These are the efficiency axes of the pruning benchmark.  Every function leaves the model's
train/eval mode exactly as it found it.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)

__all__ = ["count_parameters", "count_flops", "measure_latency"]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode, restoring each module's own flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements: conv, linear *and* BatchNorm affine weights/biases.

    This is what TPP's "sparsity" (fraction of parameters removed) is computed from; buffers such as
    BN running statistics are not parameters and are not counted.
    """
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a single sample of shape ``input_shape`` (without batch dim).

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` on a zeros input (batch 1, eval
    mode, ``torch.no_grad``) on the model's device.  FlopCounterMode counts **2 FLOPs per
    multiply-add** of matmuls and convolutions only: bias additions (``addmm``/conv bias),
    BatchNorm, activations and pooling count 0.  The TPP paper's CIFAR figures (ResNet56 0.25G, VGG19
    0.80G) equal this count; ImageNet papers usually quote multiply-adds (ResNet50 4.1G), i.e.
    ``count_flops(...) / 2``.  Speed-ups (ratios) are the same either way.
    """
    x = torch.zeros((1, *input_shape), device=_model_device(model))
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


@functools.cache
def _benchmark() -> tuple[type, type]:
    """``torch.utils.benchmark``'s Measurement and Timer, imported on first use: importing them imports
    ``torch.utils.cpp_extension``, which warns about a missing CUDA runtime on machines that have none."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Measurement, Timer
    finally:
        quiet.setLevel(level)
    return Measurement, Timer


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    repeats: int = 20,
    warmup: int = 5,
    min_time_s: float = 0.2,
    threads: int | None = None,
) -> dict[str, float | str]:
    """Inference latency per batch of ``batch_size`` random inputs, in milliseconds, with
    ``torch.utils.benchmark.Timer``.

    Eval mode, ``torch.inference_mode``, on the model's device: ``warmup`` untimed passes, then
    ``blocked_autorange`` (blocks of enough passes that timer overhead and device synchronisation do not
    matter, until ``min_time_s`` is spent), then more blocks until there are at least ``repeats``. ``threads``
    (default: this process's ``torch.get_num_threads()``, the run's) is the Timer's ``num_threads``, whose own
    default of 1 would time a different program from the one the run trains with.

    Returns ``{"median_ms", "iqr_ms", "mean_ms", "blocks", "per_block", "batch_size", "threads", "device"}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    Measurement, Timer = _benchmark()
    device = _model_device(model)
    threads = threads or torch.get_num_threads()
    x = torch.randn((batch_size, *input_shape), device=device)
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
        found = timer.blocked_autorange(min_run_time=min_time_s)
        raw = list(found.raw_times)
        while len(raw) < repeats:
            raw += timer.timeit(found.number_per_run).raw_times
        measured = Measurement(found.number_per_run, raw, found.task_spec)
    result: dict[str, float | str] = {
        "median_ms": measured.median * 1e3,
        "iqr_ms": measured.iqr * 1e3,
        "mean_ms": measured.mean * 1e3,
        "blocks": float(len(raw)),
        "per_block": float(measured.number_per_run),
        "batch_size": float(batch_size),
        "threads": float(threads),
        "device": str(device),
    }
    logger.debug("latency %s", result)
    return result
