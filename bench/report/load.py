"""Every result.json under a results directory -> one tidy runs DataFrame and one per-epoch history DataFrame.

Runs that are running, failed or diverged stay in the table with their status (the report shows them); a
corrupt result file is named in a warning and skipped. A pandas query string can narrow the runs.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.store import DENSE_DIR

log = logging.getLogger(__name__)

COLUMNS = ["suite", "run_id", "method", "model", "dataset", "ratio", "lr", "seed", "status", "acc_dense",
           "acc_pruned", "acc_final", "acc_best", "acc_trainability", "params_dense", "params_pruned", "flops_dense",
           "flops_pruned", "jsv_dense", "jsv_pruned", "jsv_final", "wall_s", "acc_val_dense", "acc_val_pruned",
           "acc_val_final"]
EXTRA_COLUMNS = ["ratio_value", "jsv_pruned_condition", "jsv_final_condition", "epochs_done", "started", "finished",
                 "error"]
HISTORY_COLUMNS = ["suite", "run_id", "method", "ratio", "lr", "seed", "status", "epoch", "epoch_lr", "train_loss",
                   "test_acc", "jsv_mean"]
LATENCY_PREFIX = "latency_"


class FilterError(UserError):
    """A ``--filter`` expression that pandas cannot evaluate on the runs table."""


@dataclass
class Results:
    """The loaded results: one row per run, and one row per retraining epoch of every run."""

    runs: pd.DataFrame
    history: pd.DataFrame

    def select(self, mask: pd.Series) -> Results:
        """The runs where ``mask`` holds, with their history."""
        runs = self.runs[mask].reset_index(drop=True)
        return Results(runs, self.history[self.history.run_id.isin(set(runs.run_id))].reset_index(drop=True))


def _number(value: Any) -> float | None:
    """A finite-or-NaN float from a JSON value, None for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _latency(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric ``latency_*`` metrics, flattened: ``latency_pruned: {median_ms: 3}`` -> ``latency_pruned_median_ms``."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if not key.startswith(LATENCY_PREFIX):
            continue
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, item in items:
            number = _number(item)
            if number is not None:
                flat[f"{key}_{sub}" if sub else key] = number
    return flat


def flatten_result(result: dict[str, Any], suite: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One runs.csv row and the retraining-history rows of one result.json (``suite``: its directory name)."""
    metrics = result.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is not a mapping")
    row: dict[str, Any] = {k: result.get(k) for k in ("run_id", "method", "model", "dataset", "ratio", "lr", "seed")}
    row["suite"] = suite
    row["status"] = str(result.get("status") or "unknown")
    if row["run_id"] is None or row["method"] is None:
        raise ValueError("no 'run_id' or 'method'")
    for key in ("acc_dense", "acc_pruned", "acc_final", "acc_best", "acc_trainability", "params_dense",
                "params_pruned", "flops_dense", "flops_pruned", "acc_val_dense", "acc_val_pruned", "acc_val_final"):
        row[key] = _number(metrics.get(key))
    for stage in ("dense", "pruned", "final"):
        row[f"jsv_{stage}"] = _number(metrics.get(f"jsv_{stage}_mean"))
    for stage in ("pruned", "final"):
        row[f"jsv_{stage}_condition"] = _number(metrics.get(f"jsv_{stage}_condition"))
    row["wall_s"] = _number((metrics.get("timings") or {}).get("wall_s"))
    ratio_value = _number(result.get("ratio_value"))
    if ratio_value is None:
        try:
            ratio_value = float(str(row["ratio"]))
        except ValueError:  # a per-layer profile: no single number
            ratio_value = math.nan
    row["ratio_value"] = ratio_value
    row["ratio"] = str(row["ratio"])
    row.update(started=result.get("started"), finished=result.get("finished"), error=result.get("error"))
    row.update(_latency(metrics))
    retrain = (result.get("history") or {}).get("retrain") or []
    row["epochs_done"] = len(retrain)
    keys = {k: row[k] for k in ("suite", "run_id", "method", "ratio", "lr", "seed", "status")}
    history = [{**keys, "epoch": h.get("epoch"), "epoch_lr": h.get("lr"), "train_loss": h.get("train_loss"),
                "test_acc": h.get("test_acc"), "jsv_mean": h.get("jsv_mean")} for h in retrain]
    return row, history


def load_results(results: Path, suites: list[str] | None = None, query: str | None = None) -> Results:
    """Every run's result.json under ``results`` (optionally only some suites, then a pandas ``query``)."""
    rows: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    wanted = set(suites or [])
    for path in sorted(results.glob("*/runs/*/result.json")):
        suite = path.parents[2].name
        if suite == DENSE_DIR or (wanted and suite not in wanted):
            continue
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            row, rows_history = flatten_result(data, suite)
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.warning("skipping corrupt result file %s (%s)", path, err)
            continue
        rows.append(row)
        history.extend(rows_history)
    runs = pd.DataFrame(rows)
    latency = sorted(c for c in runs.columns if c.startswith(LATENCY_PREFIX))
    for column in COLUMNS + EXTRA_COLUMNS:
        if column not in runs:
            runs[column] = None
    runs = runs[COLUMNS + EXTRA_COLUMNS + latency]
    for column in ("lr", "seed", "ratio_value"):
        runs[column] = pd.to_numeric(runs[column])
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    for column in ("lr", "seed", "epoch", "epoch_lr", "train_loss", "test_acc", "jsv_mean"):
        frame[column] = pd.to_numeric(frame[column])
    loaded = Results(runs, frame)
    return apply_filter(loaded, query) if query else loaded


def apply_filter(results: Results, query: str) -> Results:
    """Keep the runs for which the pandas ``query`` holds, e.g. ``method in ['l1','tpp'] and ratio == '0.9'``."""
    try:
        mask = results.runs.eval(query)
    except Exception as err:  # pandas raises SyntaxError, NameError, TypeError, ValueError, KeyError, ...
        raise FilterError(f"--filter {query!r} cannot be evaluated ({type(err).__name__}: {err}). Columns: "
                          f"{', '.join(results.runs.columns)}; ratio is a string (ratio == '0.9'), lr a number."
                          ) from None
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise FilterError(f"--filter {query!r} is not a true/false condition on the runs (e.g. \"lr == 0.01\").")
    return results.select(mask)
