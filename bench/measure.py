"""Model cost measurements: parameter count, FLOPs and inference latency.

These are the efficiency axes of the pruning benchmark.  Every function leaves the model's
train/eval mode exactly as it found it.
"""
from __future__ import annotations

import logging
import statistics
import time
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


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    repeats: int = 20,
    warmup: int = 5,
) -> dict[str, float | str]:
    """Wall-clock inference latency per batch of ``batch_size`` random inputs, in milliseconds.

    Runs in eval mode under ``torch.inference_mode`` on the model's device, ``warmup`` untimed passes
    then ``repeats`` timed ones.  On CUDA each pass is timed with ``torch.cuda.Event`` pairs and the
    device is synchronised before reading them; on CPU with ``time.perf_counter``.

    Returns ``{"median_ms", "mean_ms", "batch_size", "repeats", "device"}``; ``device`` is a string
    such as ``"cuda:0"`` or ``"cpu"``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = _model_device(model)
    x = torch.randn((batch_size, *input_shape), device=device)
    times_ms: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if device.type == "cuda":
            with torch.cuda.device(device):  # events record on the model's device's current stream
                torch.cuda.synchronize()
                events = [
                    (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                    for _ in range(repeats)
                ]
                for start, end in events:
                    start.record()
                    model(x)
                    end.record()
                torch.cuda.synchronize()
            times_ms = [start.elapsed_time(end) for start, end in events]
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times_ms.append((time.perf_counter() - t0) * 1e3)
    result: dict[str, float | str] = {
        "median_ms": statistics.median(times_ms),
        "mean_ms": statistics.fmean(times_ms),
        "batch_size": float(batch_size),
        "repeats": float(repeats),
        "device": str(device),
    }
    logger.debug("latency %s", result)
    return result
