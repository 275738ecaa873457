"""Synthetic result trees in the runner's result.json format, for the reporter's tests and speed benchmark.

Accuracies follow a simple, seeded model (harder with the ratio, worse at a low LR for methods whose pruned
networks have a small Jacobian) unless the caller passes its own ``accuracy`` function; any run can be given
a status other than ok (running, failed, diverged), written the way the runner writes it.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.training.train import Diverged

RunKey = tuple[str, float, float, int]  # (method, ratio, lr, seed)


def _unit(*parts: Any) -> float:
    """A stable pseudo-random number in [0, 1) from the parts (independent of Python's hash seed)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def run_id(suite: str, key: RunKey, epochs: int = 6) -> str:
    """A stable 12-hex-digit id for a synthetic run (like the runner's content hashes)."""
    parts = [suite, *key] + ([epochs] if epochs != 6 else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def run_config(model: str, dataset: str, key: RunKey, epochs: int) -> dict[str, Any]:
    """A run key shaped like the runner's (``config`` in result.json): fixed configuration plus the coordinates."""
    method, ratio, lr, seed = key
    return {"dense": {"model": model, "dataset": dataset, "seed": seed, "variants": []},
            "prune": {"ratio": ratio, "scope": "layerwise"}, "method": [{"name": method, "hparams": {}}],
            "retrain": {"epochs": epochs, "lr": lr}}


def default_jsv(method: str) -> float:
    """Mean JSV right after pruning: a per-method constant between 1e-4 and 3."""
    return 10 ** (-4 + 4.5 * _unit("jsv", method))


def default_accuracy(method: str, ratio: float, lr: float, seed: int) -> float:
    """Final accuracy (fraction): lower at high ratios, and at a small LR when the pruned JSV is small."""
    trainability = min(1.0, math.log10(default_jsv(method)) / 4 + 1)  # 0 (JSV 1e-4) .. 1 (JSV >= 1)
    base = 0.93 - 0.2 * ratio ** 3 + 0.01 * (_unit("skill", method) - 0.5)
    penalty = 0.08 * ratio * (1 - trainability) * (math.log10(0.01 / lr) if lr < 0.01 else 0.0)
    return base - penalty + 0.003 * (2 * _unit("noise", method, ratio, lr, seed) - 1)


AFTER_RETRAINING = ("acc_final", "acc_best", "acc_trainability", "jsv_final", "timings")  # metric name prefixes


def _metrics(method: str, ratio: float, lr: float, seed: int, acc: float, epochs: int
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics and retraining history of one finished synthetic run ending at accuracy ``acc``."""
    jsv0 = default_jsv(method) * (1 - 0.5 * ratio)
    jsv1 = 0.5 + _unit("jsv1", method, ratio, lr)
    acc0 = 0.1 + 0.5 * _unit("acc0", method, ratio) * (1 - ratio)
    history, accs = [], []
    for epoch in range(1, epochs + 1):
        reach = 1 - math.exp(-3 * epoch / epochs)
        test_acc = acc0 + (acc - acc0) * reach / (1 - math.exp(-3)) + 0.002 * (_unit("e", seed, epoch) - 0.5)
        accs.append(test_acc)
        history.append({"epoch": epoch, "step": 100 * epoch, "lr": lr if epoch <= epochs // 2 else lr / 10,
                        "train_loss": 2.3 * (1 - reach) + 0.1, "train_acc": test_acc + 0.02, "test_loss": 0.4,
                        "test_acc": test_acc, "seconds": 0.5,
                        "jsv_mean": math.exp(math.log(jsv0) + (math.log(jsv1) - math.log(jsv0)) * reach)})
    params_dense, flops_dense = 154010, 306800
    kept = (1 - ratio) ** 1.9
    metrics = {"acc_dense": 0.9321, "params_dense": params_dense, "flops_dense": flops_dense,
               "jsv_dense_mean": 1.5, "jsv_dense_condition": 300.0, "acc_pruned": acc0,
               "params_pruned": int(params_dense * kept) + 1010, "flops_pruned": int(flops_dense * kept) + 2000,
               "channels": {"layers.0": [round(100 * (1 - ratio)), 100]},
               "jsv_pruned_mean": jsv0, "jsv_pruned_std": jsv0 / 2, "jsv_pruned_min": jsv0 / 10,
               "jsv_pruned_max": jsv0 * 3, "jsv_pruned_condition": 30.0 / jsv0, "jsv_pruned_mean_sq_dev": 0.5,
               "acc_final": acc, "acc_best": max(accs + [acc]),
               "acc_trainability": float(np.mean(accs[:max(1, epochs // 2)])),
               "jsv_final_mean": jsv1, "jsv_final_condition": 40.0,
               "timings": {"dense_s": 0.0, "phase_s": 0.0, "prune_s": 0.02, "retrain_s": 0.5 * epochs,
                           "wall_s": 0.5 * epochs + 0.02}}
    return metrics, history


def synthetic_results(suite: str = "synthetic", methods: Iterable[str] = ("l1", "random", "tpp"),
                      ratios: Iterable[float] = (0.5, 0.9), lrs: Iterable[float] = (0.01, 0.001),
                      seeds: Iterable[int] = (0, 1, 2), epochs: int = 6,
                      accuracy: Callable[[str, float, float, int], float] | None = None,
                      statuses: Mapping[RunKey, str] | None = None, model: str = "mlp7_linear",
                      dataset: str = "fashion_mnist", extra_metrics: Mapping[str, Any] | None = None,
                      validation: Callable[[str, float, float, int], float] | None = None,
                      num_classes: int = 10) -> list[dict[str, Any]]:
    """The result.json content of every method × ratio × lr × seed, in memory, as the runner writes it.

    ``validation`` gives each finished run's validation accuracy (``acc_val_final``), as a validation split would;
    without it the runs have none."""
    accuracy = accuracy or default_accuracy
    statuses = statuses or {}
    seeds = list(seeds)
    results = []
    for method in methods:
        for ratio in ratios:
            for lr in lrs:
                for seed in seeds:
                    key = (method, ratio, lr, seed)
                    status = statuses.get(key, "ok")
                    result: dict[str, Any] = {
                        "format": 1, "suite": suite, "run_id": run_id(suite, key, epochs), "method": method,
                        "model": model, "dataset": dataset, "ratio": f"{ratio:g}", "lr": lr, "seed": seed,
                        "status": status, "config": run_config(model, dataset, key, epochs),
                        "method_components": [{"name": method, "hparams": {}}],
                        "ratio_value": ratio, "started": "2026-01-01T00:00:00+0000", "num_classes": num_classes}
                    if status in ("ok", "diverged"):
                        metrics, history = _metrics(method, ratio, lr, seed, accuracy(*key), epochs)
                    if status == "ok":
                        metrics.update(extra_metrics or {})
                        if validation is not None:
                            metrics["acc_val_final"] = validation(*key)
                        result.update(metrics=metrics, history={"phase": [], "retrain": history},
                                      finished="2026-01-01T00:01:00+0000")
                    elif status == "diverged":  # as the runner writes it: what it measured before retraining
                        before = {k: v for k, v in metrics.items() if not k.startswith(AFTER_RETRAINING)}
                        result.update(metrics=before, history={"phase": [], "retrain": history[:1]},
                                      diverged={"phase": "retrain", "epoch": 2}, error=str(Diverged("retrain", 2)))
                    elif status == "failed":
                        result.update(error="RuntimeError: CUDA out of memory", traceback="Traceback ...")
                    results.append(result)
    return results


def write_synthetic_results(root: Path, suite: str = "synthetic", *args: Any, **kwargs: Any) -> list[Path]:
    """Write ``root/<suite>/runs/<id>/result.json`` for every run of ``synthetic_results(suite, ...)`` (same
    arguments after ``root``); returns the paths."""
    paths = []
    for result in synthetic_results(suite, *args, **kwargs):
        path = root / suite / "runs" / result["run_id"] / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        paths.append(path)
    return paths
