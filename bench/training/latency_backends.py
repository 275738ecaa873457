"""Inference-latency backends: the runtimes a pruned model is timed in, beside PyTorch eager.

A pruned model with fewer FLOPs is not always faster where it is served; timing it in the deployment runtime too
(ONNX Runtime on CPU here) makes that gap visible. Every backend is timed by the same procedure as eager
(:func:`bench.training.measure.measure_latency`: warm-up passes, ``torch.utils.benchmark.Timer``'s blocked
autorange, median and IQR over blocks, at the run's thread count). No CUDA backend exists yet: ``torch_compile``
and ``tensorrt`` are only named (PLANNED), refused with the reason; one would plug in through the same
:class:`Backend` interface.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.errors import UserError
from bench.training.measure import measure_latency

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "BackendMissing", "check_backends", "latency_key", "measure_backend", "runtime",
           "speedup_columns"]

EAGER = "eager"
ONNX_OPSET = 18


class BackendMissing(UserError):
    """A latency backend that this installation cannot run (a package missing, no GPU)."""


@dataclass(frozen=True)
class Backend:
    """A runtime to time models in: ``prepare(model, input_shape, threads)`` gives a module whose ``forward`` runs one
    batch in that runtime; ``problem()`` says why it cannot run here (None when it can)."""

    name: str
    description: str
    prepare: Callable[[nn.Module, tuple[int, ...], int], nn.Module]
    problem: Callable[[], str | None]


def _eager(model: nn.Module, input_shape: tuple[int, ...], threads: int) -> nn.Module:
    return model


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The model (eval mode, on CPU) as an ONNX program with a dynamic batch dimension, made by the dynamo
    exporter (``torch.onnx.export(..., dynamo=True)``)."""
    from torch.export import Dim

    was_training = model.training
    model.eval()
    example = torch.zeros((2, *input_shape))  # batch 2: a batch of 1 would be specialised away
    chatty = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:  # the exporter's optimiser passes log at INFO: noise on a command's output
        logger.setLevel(logging.WARNING)
    try:
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=["input"],
                                        output_names=["logits"], dynamic_shapes=({0: Dim.DYNAMIC},),
                                        opset_version=ONNX_OPSET, verbose=False)
        buffer = io.BytesIO()
        program.save(buffer)
        return buffer.getvalue()
    finally:
        model.train(was_training)
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime CPU session behind an ``nn.Module`` face, so ``measure_latency`` times it like any model."""

    def __init__(self, program: bytes, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the same threads eager uses: a fair comparison
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(program, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})
        return torch.from_numpy(logits)


def _onnxruntime(model: nn.Module, input_shape: tuple[int, ...], threads: int) -> nn.Module:
    return OnnxRuntimeModule(onnx_bytes(model.cpu(), input_shape), threads)


def missing(*modules: str) -> Callable[[], str | None]:
    """A backend's ``problem``: which of ``modules`` is not installed, and the extra that installs it."""

    def problem() -> str | None:
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        return (f"it needs {', '.join(absent)}, which is not installed: pip install 'pruning-bench[onnx]'"
                if absent else None)
    return problem


def _no_gpu_backend(name: str) -> Callable[[], str | None]:
    return lambda: (f"'{name}' runs on CUDA only, and no CUDA backend is implemented in this harness yet "
                    "(torch.cuda.is_available() is " + str(torch.cuda.is_available()) + " here)")


BACKENDS: dict[str, Backend] = {
    EAGER: Backend(EAGER, "PyTorch eager on the model's device", _eager, lambda: None),
    "onnxruntime": Backend("onnxruntime", "ONNX Runtime, CPU execution provider (the onnx extra)", _onnxruntime,
                           missing("onnx", "onnxscript", "onnxruntime")),
}
# Named so that asking for them gives a reason, not "unknown backend"; they need a GPU, which no machine here has.
PLANNED = {"torch_compile": _no_gpu_backend("torch_compile"), "tensorrt": _no_gpu_backend("tensorrt")}


def check_backends(names: Sequence[str], where: str = "latency.backends") -> list[str]:
    """The problems with ``names`` as latency backends (unknown, repeated or not installed), as error lines."""
    problems = []
    for name in names:
        if name in PLANNED:
            problems.append(f"{where}: backend '{name}' cannot run here: {PLANNED[name]()}.")
        elif name not in BACKENDS:
            problems.append(f"{where}: unknown backend '{name}'; choose from {', '.join(BACKENDS)}.")
        elif (problem := BACKENDS[name].problem()) is not None:
            problems.append(f"{where}: backend '{name}' cannot run: {problem}.")
    if len(set(names)) != len(names):
        problems.append(f"{where}: a backend is named twice in {list(names)}.")
    return problems


def latency_key(backend: str, prefix: str) -> str:
    """The result metric of ``backend``'s latency of the ``prefix`` model (dense, pruned, masked): eager keeps the
    historical ``latency_<prefix>``, others are ``latency_<backend>_<prefix>``."""
    return f"latency_{prefix}" if backend == EAGER else f"latency_{backend}_{prefix}"


def runtime(backend: str, model: nn.Module, input_shape: tuple[int, ...], threads: int | None = None) -> nn.Module:
    """``model`` made runnable in ``backend`` (eager: the model itself; others: built from a CPU copy, the model left
    as it was); prepare once, time at several batch sizes. A backend that cannot run here is a BackendMissing."""
    import copy

    chosen = BACKENDS[backend]
    if (problem := chosen.problem()) is not None:
        raise BackendMissing(f"latency backend '{backend}' cannot run: {problem}.")
    if backend == EAGER:
        return model
    return chosen.prepare(copy.deepcopy(model).cpu(), input_shape, threads or torch.get_num_threads())


def measure_backend(backend: str, model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                    repeats: int = 20, min_time_s: float = 0.2, threads: int | None = None,
                    prepared: nn.Module | None = None) -> dict[str, float | str]:
    """``measure_latency`` of ``model`` run in ``backend`` (``prepared``: its :func:`runtime`, when already made, at
    the same ``threads``); non-eager results name the backend and run on the CPU."""
    threads = threads or torch.get_num_threads()
    runnable = prepared if prepared is not None else runtime(backend, model, input_shape, threads)
    found = measure_latency(runnable, input_shape, batch_size, repeats, min_time_s=min_time_s, threads=threads)
    return found if backend == EAGER else {**found, "device": "cpu", "backend": backend}


def backends_in(columns: Sequence[str]) -> list[str]:
    """The backends whose dense and pruned median latency a runs table has, eager first."""
    found = [EAGER] if {"latency_dense_median_ms", "latency_pruned_median_ms"} <= set(columns) else []
    for column in columns:
        if column.startswith("latency_") and column.endswith("_dense_median_ms"):
            name = column.removeprefix("latency_").removesuffix("_dense_median_ms")
            if name and name != "dense" and f"latency_{name}_pruned_median_ms" in columns and name not in found:
                found.append(name)
    return found


def speedup(dense_ms: object, pruned_ms: object) -> float:
    """Dense over pruned latency; NaN when either is missing or not positive."""
    try:
        d, p = float(dense_ms), float(pruned_ms)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return d / p if d > 0 and p > 0 else math.nan


def speedup_columns(runs: object) -> dict[str, list[float]]:
    """``speedup_<backend>`` (dense / pruned median latency) for every backend a runs table (a DataFrame) records,
    and ``flops_ratio`` (dense / pruned FLOPs) beside them."""
    columns = list(runs.columns)  # type: ignore[attr-defined]
    out = {"flops_ratio": [speedup(d, p) for d, p in zip(runs["flops_dense"], runs["flops_pruned"])]}  # type: ignore
    for name in backends_in(columns):
        dense = "latency_dense_median_ms" if name == EAGER else f"latency_{name}_dense_median_ms"
        pruned = "latency_pruned_median_ms" if name == EAGER else f"latency_{name}_pruned_median_ms"
        out[f"speedup_{name}"] = [speedup(d, p) for d, p in zip(runs[dense], runs[pruned])]  # type: ignore[index]
    return out
