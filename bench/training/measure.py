"""Model cost measurements: parameter count, FLOPs and inference latency.

These are the efficiency axes of the pruning benchmark.  Every function leaves the model's
train/eval mode exactly as it found it.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)

__all__ = ["count_parameters", "count_flops", "counting_flops", "machine_load", "measure_latency",
           "training_step_flops"]


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


def _cpu_times() -> tuple[float, float] | None:
    """(CPU seconds all processes spent busy on every core, CPU seconds this process spent), from /proc; None where
    /proc/stat is not there (not Linux)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    own = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


@contextmanager
def machine_load() -> Iterator[dict[str, float]]:
    """The machine's load while the body runs: the 1-minute load average before and after, and the share of all
    cores that other processes kept busy (0: an idle machine; 1: every core busy with other work), filled in on exit.
    A latency taken under load is not the model's own speed: the report weighs it by these."""
    found: dict[str, float] = {"load_1min_before": os.getloadavg()[0]}
    cpus, began, wall = os.cpu_count() or 1, _cpu_times(), time.perf_counter()
    yield found
    ended, elapsed = _cpu_times(), time.perf_counter() - wall
    found["load_1min_after"] = os.getloadavg()[0]
    found["cpus"] = float(cpus)
    if began is not None and ended is not None and elapsed > 0:
        others = (ended[0] - began[0]) - (ended[1] - began[1])
        found["others_cpu_share"] = min(max(others / (elapsed * cpus), 0.0), 1.0)


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
    matter, until ``min_time_s`` is spent); with fewer than ``repeats`` blocks, ``repeats`` smaller blocks of the
    same total length instead. ``threads``
    (default: this process's ``torch.get_num_threads()``, the run's) is the Timer's ``num_threads``, whose own
    default of 1 would time a different program from the one the run trains with.

    Returns ``{"median_ms", "iqr_ms", "mean_ms", "min_ms", "max_ms", "blocks", "per_block", "batch_size", "threads",
    "device"}`` and the machine's load while timing (``machine_load``: ``load_1min_before``/``_after``, ``cpus``,
    ``others_cpu_share``), so a reader can tell a model's speed from a busy machine's.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    Measurement, Timer = _benchmark()
    device = _model_device(model)
    threads = threads or torch.get_num_threads()
    x = torch.randn((batch_size, *input_shape), device=device)
    with _eval_mode(model), torch.inference_mode(), machine_load() as load:
        for _ in range(warmup):
            model(x)
        timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
        measured = timer.blocked_autorange(min_run_time=min_time_s)
        if len(measured.raw_times) < repeats:
            # Too few blocks for a median and IQR: time `repeats` smaller blocks that together take about as long as
            # autorange's (its block size grows tenfold at a time and on a busy machine reaches seconds; topping up
            # with such blocks took 13 s per model on the quickstart's MLP).
            number = max(1, measured.number_per_run * len(measured.raw_times) // repeats)
            raw = [timer.timeit(number).raw_times[0] for _ in range(repeats)]
            measured = Measurement(number, raw, measured.task_spec)
        raw = measured.raw_times
    result: dict[str, float | str] = {
        "median_ms": measured.median * 1e3,
        "iqr_ms": measured.iqr * 1e3,
        "mean_ms": measured.mean * 1e3,
        "min_ms": min(measured.times) * 1e3,
        "max_ms": max(measured.times) * 1e3,
        "blocks": float(len(raw)),
        "per_block": float(measured.number_per_run),
        "batch_size": float(batch_size),
        "threads": float(threads),
        "device": str(device),
        **load,
    }
    logger.debug("latency %s", result)
    return result


# Forward+backward FLOPs of one training step, per (model shapes, input shape, batch size): counted once per shape.
_STEP_FLOPS: dict[tuple[object, ...], int] = {}


def _shape_key(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> tuple[object, ...]:
    layers = tuple((name, type(module).__name__, tuple(tuple(p.shape) for p in module.parameters(recurse=False)))
                   for name, module in model.named_modules())
    return layers, tuple(input_shape), batch_size


def training_step_flops(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                        penalties: Callable[[nn.Module], list[torch.Tensor]] = lambda net: []) -> tuple[int, int]:
    """(FLOPs of one training step's forward and cross-entropy backward at ``batch_size``, FLOPs of the step's extra
    loss terms and their backward): ``FlopCounterMode`` on a copy of ``model`` in train mode, zeros input.

    The first figure is counted once per model shape (cached); ``penalties(copy)`` gives the extra terms (a method's
    regulariser), counted every call. The copy keeps the model and its optimizer state untouched, and the global
    random state is restored, so counting never changes what training computes.
    """
    key = _shape_key(model, input_shape, batch_size)
    device = _model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        twin = copy.deepcopy(model).train()
        if key not in _STEP_FLOPS:
            x = torch.zeros((batch_size, *input_shape), device=device)
            y = torch.zeros(batch_size, dtype=torch.long, device=device)
            with FlopCounterMode(display=False) as counter:
                nn.functional.cross_entropy(twin(x), y).backward()
            _STEP_FLOPS[key] = int(counter.get_total_flops())
        twin.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            terms = [t for t in penalties(twin) if t is not None and t.requires_grad]
            if terms:
                torch.stack([t.float().sum() for t in terms]).sum().backward()
        return _STEP_FLOPS[key], int(counter.get_total_flops())


@contextmanager
def counting_flops() -> Iterator[Callable[[], int]]:
    """Count the matmul and convolution FLOPs of whatever runs inside (a scoring pass); yields a getter of the total."""
    with FlopCounterMode(display=False) as counter:
        yield lambda: int(counter.get_total_flops())
