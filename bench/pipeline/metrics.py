"""What a run measures of a model: size and FLOPs, validation accuracy and the Jacobian singular values."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from bench.pipeline.setup import Workspace
from bench.suite.grid import Run
from bench.training.latency_backends import latency_key, measure_backend
from bench.training.measure import count_flops, count_parameters
from bench.training.train import (
    derive_seed,
    evaluate,
)
from bench.training.trainability import jsv_stats

log = logging.getLogger(__name__)


def measure(model: nn.Module, info: Any, prefix: str, run: Run) -> dict[str, Any]:
    """Parameters, FLOPs and (unless switched off) measured inference latency of ``model``."""
    shape = (info.in_channels, info.image_size, info.image_size)
    found: dict[str, Any] = {f"params_{prefix}": count_parameters(model), f"flops_{prefix}": count_flops(model, shape)}
    latency = run.suite.latency
    if latency.enabled:
        for backend in latency.backends:
            found[latency_key(backend, prefix)] = measure_backend(backend, model, shape, latency.batch_size,
                                                                  latency.repeats, min_time_s=latency.min_time_s)
    return found


def validation_metrics(model: nn.Module, ws: Workspace) -> dict[str, float]:
    """``val_loss`` and ``val_acc`` on the dataset's validation split; nothing when it has none."""
    if not ws.data.info.num_val:
        return {}
    loss, acc = evaluate(model, ws.data, 1000, ws.device, "validation")
    return {"val_loss": loss, "val_acc": acc}


def jsv_probe(run: Run, ws: Workspace) -> torch.Tensor | None:
    t = run.suite.trainability
    return ws.data.probe(t.samples, derive_seed(run.seed, "probe")) if t.enabled else None


def jsv(model: nn.Module, probe: torch.Tensor | None, run: Run) -> dict[str, float]:
    return {} if probe is None else jsv_stats(model, probe, mode=run.suite.trainability.mode).as_dict()
