"""Every result.json under a results directory -> one tidy runs DataFrame and one per-epoch history DataFrame.

Runs that are running, failed or diverged stay in the table with their status (the report shows them); a
corrupt result file stays too, as status ``corrupt`` with the file and the parse error (its coordinates from the
suite's manifest). A pandas query string can narrow the runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import UserError
from bench.core.store import DENSE_DIR, content_hash
from bench.suite.cost import STAGES, flat_columns
from bench.suite.manifest import MANIFEST, Manifest, difference, fixed_config, read_manifest
from bench.training.latency_backends import speedup_columns

log = logging.getLogger(__name__)

COLUMNS = ["suite", "run_id", "method", "model", "dataset", "ratio", "lr", "seed", "status", "acc_dense",
           "acc_pruned", "acc_final", "acc_best", "acc_trainability", "acc_val_dense", "acc_val_pruned",
           "acc_val_final", "params_dense", "params_pruned", "flops_dense", "flops_pruned", "jsv_dense", "jsv_pruned",
           "jsv_final", "wall_s"]
EXTRA_COLUMNS = ["ratio_value", "jsv_pruned_condition", "jsv_final_condition", "epochs_done", "started", "finished",
                 "error", "num_classes", "dense_id", "config_id", "method_config_id", "params_masked",
                 "flops_masked", "dense_checkpoint", "dense_epoch"]
# Classes of the shipped datasets, for results written before result.json recorded num_classes (the chance level).
KNOWN_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}
LEFT_OUT_COLUMNS = ["run_id", "method", "ratio", "lr", "seed", "status", "config_id", "reason"]
HISTORY_COLUMNS = ["suite", "run_id", "method", "ratio", "lr", "seed", "status", "epoch", "epoch_lr", "train_loss",
                   "test_acc", "jsv_mean"]
# What each run spent (bench.cost): per stage, then totals; shared stages counted in full, and amortised over the runs
# of the report that share them (cost_flops_amortised, cost_steps_amortised).
COST_COLUMNS = [f"cost_{q}_{stage}" for stage in STAGES for q in ("steps", "epochs", "flops", "seconds", "shared")] + [
    "cost_steps_total", "cost_flops_total", "cost_steps_after_dense", "cost_steps_amortised", "cost_flops_amortised",
    "budget_steps", "budget_match", "budget_rule", "prune_id"]
LATENCY_PREFIX = "latency_"  # the runs table's speed-up columns: bench.training.latency_backends.speedup_columns
NUMERIC_RATIO = re.compile(r"""\bratio\s*(==|!=|<=|>=|<|>|in|not in)\s*\[?\s*[0-9.]""")
QUOTED_RATIO = re.compile(r"""\bratio\s*(==|!=|<=|>=|<|>|in|not in)\s*\[?\s*['"][0-9.]""")


class FilterError(UserError):
    """A ``--filter`` expression that pandas cannot evaluate on the runs table."""


@dataclass
class Results:
    """The loaded results: one row per run, one row per retraining epoch of every run, the fixed configuration
    (``bench.manifest.fixed_config``) of each ``config_id``, and the runs set apart from this report."""

    runs: pd.DataFrame
    history: pd.DataFrame
    configs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    left_out: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=LEFT_OUT_COLUMNS))
    basis: str = ""  # which runs make up the report, in words (the suite's manifest, or why not)
    manifest: Manifest | None = None  # the suite's manifest, when it has one (a suite grown in rounds: its design)

    def select(self, mask: pd.Series) -> Results:
        """The runs where ``mask`` holds, with their history."""
        runs = self.runs[mask].reset_index(drop=True)
        return Results(runs, self.history[self.history.run_id.isin(set(runs.run_id))].reset_index(drop=True),
                       self.configs, self.left_out, self.basis, self.manifest)


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
    for key in ("acc_dense", "acc_pruned", "acc_final", "acc_best", "acc_trainability", "acc_val_dense",
                "acc_val_pruned", "acc_val_final", "params_dense", "params_pruned", "flops_dense", "flops_pruned"):
        row[key] = _number(metrics.get(key))
    for stage in ("dense", "pruned", "final"):
        row[f"jsv_{stage}"] = _number(metrics.get(f"jsv_{stage}_mean"))
    for stage in ("pruned", "final"):
        row[f"jsv_{stage}_condition"] = _number(metrics.get(f"jsv_{stage}_condition"))
    row["wall_s"] = _number((metrics.get("timings") or {}).get("wall_s"))
    for key in ("params_masked", "flops_masked"):  # prune.mode: mask: the model as it runs (removal: *_pruned)
        row[key] = _number(metrics.get(key))
    ratio_value = _number(result.get("ratio_value"))
    if ratio_value is None:
        try:
            ratio_value = float(str(row["ratio"]))
        except ValueError:  # a per-layer profile: no single number
            ratio_value = math.nan
    row["ratio_value"] = ratio_value
    row["ratio"] = str(row["ratio"])
    row.update(started=result.get("started"), finished=result.get("finished"), error=result.get("error"))
    row["num_classes"] = _number(result.get("num_classes")) or KNOWN_CLASSES.get(str(row["dataset"]))
    config = result.get("config")
    row["config_id"] = content_hash(fixed_config(config)) if isinstance(config, dict) else None
    method = config.get("method") if isinstance(config, dict) else None
    row["method_config_id"] = content_hash(method) if method is not None else None  # its name and hyperparameters
    dense = config.get("dense") if isinstance(config, dict) else None
    row["dense_id"] = content_hash(dense) if isinstance(dense, dict) else None  # as bench.grid.Run.dense_id
    row["dense_checkpoint"] = dense_checkpoint(dense)
    chosen = metrics.get("dense_checkpoint")
    row["dense_epoch"] = _number(chosen.get("epoch")) if isinstance(chosen, dict) else None
    row.update(_latency(metrics))
    row.update(flat_columns(metrics.get("cost") or {}, metrics.get("timings") or {}))
    row["prune_id"] = result.get("prune_id")
    retrain = (result.get("history") or {}).get("retrain") or []
    row["epochs_done"] = len(retrain)
    keys = {k: row[k] for k in ("suite", "run_id", "method", "ratio", "lr", "seed", "status")}
    history = [{**keys, "epoch": h.get("epoch"), "epoch_lr": h.get("lr"), "train_loss": h.get("train_loss"),
                "test_acc": h.get("test_acc"), "jsv_mean": h.get("jsv_mean")} for h in retrain]
    return row, history


def amortised(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's steps and FLOPs with its shared stages divided among the loaded runs that share them (the dense
    model by its dense id, the phase and selection by the prune id): what the run cost on top of the others."""
    runs = runs.copy()
    for quantity in ("steps", "flops"):
        total = pd.Series(0.0, index=runs.index)
        for stage in STAGES:
            value = pd.to_numeric(runs[f"cost_{quantity}_{stage}"], errors="coerce")
            shared = runs[f"cost_shared_{stage}"]
            if not shared.notna().any():  # nothing shared at this stage (or no runs): each run pays its own
                total = total + value
                continue
            sharers = runs.groupby(shared.fillna(runs.run_id)).run_id.transform("size")
            total = total + value / sharers.where(shared.notna(), 1).astype(float)
        runs[f"cost_{quantity}_amortised"] = total
    return runs


def dense_checkpoint(dense: Any) -> str | None:
    """Which dense checkpoint a run pruned, from its dense key: ``final``, ``best_on_test``, ``best_on_validation``
    (``pretrain.best_on``) or ``loaded`` (``pretrain.checkpoint``); None when the key is missing."""
    pretrain = dense.get("pretrain") if isinstance(dense, dict) else None
    if not isinstance(pretrain, dict):
        return None
    if "checkpoint_sha256" in pretrain:
        return "loaded"
    best_on = pretrain.get("best_on", "final")
    return "final" if best_on == "final" else f"best_on_{best_on}"


def corrupt_row(path: Path, suite: str, problem: str, manifest: Manifest | None, status: str = "corrupt"
                ) -> dict[str, Any]:
    """The runs.csv row of a result file that cannot be read: status ``corrupt`` (the parse error as its error) or
    ``unreadable`` (this user may not read it), and the run's coordinates from the suite's manifest when it lists
    the run."""
    run_id = path.parent.name
    entry = (manifest.runs.get(run_id) if manifest else None) or {"method": "unknown"}
    error = (f"{path} is not readable JSON ({problem})" if status == "corrupt" else
             f"{path} is unreadable (permission): ask its owner to make it readable")
    row, _ = flatten_result({**entry, "run_id": run_id, "status": status, "error": error}, suite)
    row["dense_id"] = entry.get("dense_id")
    return row


def _take(result: dict[str, Any], suite: str, rows: list[dict[str, Any]], history: list[dict[str, Any]],
          configs: dict[str, dict[str, Any]]) -> None:
    """Flatten one result.json's content into ``rows`` and ``history`` and note its fixed configuration; on bad
    content it raises before anything is added."""
    row, rows_history = flatten_result(result, suite)
    if row["config_id"] is not None and row["config_id"] not in configs:
        configs[row["config_id"]] = fixed_config(result["config"])
    rows.append(row)
    history.extend(rows_history)


def _tidy(rows: list[dict[str, Any]], history: list[dict[str, Any]], configs: dict[str, dict[str, Any]]
          ) -> Results:
    """The runs and history frames of the flattened rows, in one order (suite, then run id) whatever order the
    rows came in, with every column of the runs table and numbers where numbers belong."""
    runs = pd.DataFrame(rows)
    if len(runs):
        runs = runs.sort_values(["suite", "run_id"], kind="stable").reset_index(drop=True)
    latency = sorted(c for c in runs.columns if c.startswith(LATENCY_PREFIX))
    for column in COLUMNS + EXTRA_COLUMNS:
        if column not in runs:
            runs[column] = None
    for column in COST_COLUMNS:
        if column not in runs:
            runs[column] = None
    runs = amortised(runs[COLUMNS + EXTRA_COLUMNS + COST_COLUMNS + latency])
    if latency:  # dense / pruned median latency per backend, beside dense / pruned FLOPs (latency_backends)
        runs = runs.assign(**speedup_columns(runs))
    for column in ("lr", "seed", "ratio_value", "num_classes", "acc_val_dense", "acc_val_pruned", "acc_val_final"):
        runs[column] = pd.to_numeric(runs[column])
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    if len(frame):
        frame = frame.sort_values(["suite", "run_id"], kind="stable").reset_index(drop=True)
    for column in ("lr", "seed", "epoch", "epoch_lr", "train_loss", "test_acc", "jsv_mean"):
        frame[column] = pd.to_numeric(frame[column])
    return Results(runs, frame, configs)


def from_records(records: Iterable[tuple[dict[str, Any], str]]) -> Results:
    """The Results that load_results would give for these result.json contents (each with its suite's name),
    built in memory: simulations push thousands of suites through the report code without the disk
    (benchmarks/verdict_calibration.py)."""
    rows: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    for result, suite in records:
        _take(result, suite, rows, history, configs)
    return _tidy(rows, history, configs)


def load_results(results: Path, suites: list[str] | None = None, query: str | None = None) -> Results:
    """Every run's result.json under ``results`` (optionally only some suites, then a pandas ``query``)."""
    rows: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    wanted = set(suites or [])
    manifests: dict[str, Manifest | None] = {}  # read only for suites with a corrupt result file
    for path in sorted(results.glob("*/runs/*/result.json")):
        suite = path.parents[2].name
        if suite == DENSE_DIR or (wanted and suite not in wanted):
            continue
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            _take(data, suite, rows, history, configs)
        except PermissionError:
            log.warning("result file %s is unreadable (permission): reported as unreadable; ask its owner to make it "
                        "readable", path)
            if suite not in manifests:
                manifests[suite] = read_manifest(path.parents[2])
            rows.append(corrupt_row(path, suite, "", manifests[suite], status="unreadable"))
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.warning("corrupt result file %s (%s): reported as corrupt; run the suite again to redo the run",
                        path, err)
            if suite not in manifests:
                manifests[suite] = read_manifest(path.parents[2])
            rows.append(corrupt_row(path, suite, f"{type(err).__name__}: {err}", manifests[suite]))
    loaded = _tidy(rows, history, configs)
    return apply_filter(loaded, query) if query else loaded


def suite_runs(data: Results, suite: str, suite_dir: Path) -> Results:
    """One suite's runs as it was last run (its manifest); every other run in its folder goes to ``left_out``
    with the reason, so a table never pools two configurations.

    Without a manifest (results written before manifests existed) the configuration of the most recently started
    run stands for the suite, and the report says so.
    """
    part = data.select(data.runs.suite == suite)
    runs = part.runs
    manifest = read_manifest(suite_dir)
    if manifest is not None:
        reference = manifest.config
        reference_id = content_hash(reference)
        members = runs.run_id.isin(set(manifest.runs))
        basis = f"the runs of the suite as last run ({len(manifest.runs)} in manifest.json, {manifest.written})"
    else:
        latest = runs.sort_values("started", na_position="first")
        reference_id = latest.config_id.iloc[-1] if len(latest) else None
        reference = data.configs.get(reference_id, {})
        members = runs.config_id.fillna("") == (reference_id or "")
        # fixed_config leaves the method out (it is swept): one method label may hold runs of several
        # hyperparameter settings; keep each label's most recently started setting.
        newest = latest[members.reindex(latest.index)].groupby("method").method_config_id.last()
        members &= runs.method_config_id.fillna("") == runs.method.map(newest).fillna("")
        why = ("manifest.json is unreadable" if (suite_dir / MANIFEST).exists() else
               "no manifest.json (results from before manifests)")
        basis = (f"{why}: the configuration of the most recently started run stands for the suite, with each "
                 "method's most recent hyperparameters; run the suite again to record a manifest")
    reasons = [_reason(row, reference, reference_id, data.configs, manifest) for row in runs[~members].itertuples()]
    left_out = runs[~members].assign(reason=reasons)[LEFT_OUT_COLUMNS].reset_index(drop=True)
    kept = part.select(members.to_numpy())
    return Results(kept.runs, kept.history, data.configs, left_out, basis, manifest)


def _reason(row: Any, reference: dict[str, Any], reference_id: str | None, configs: dict[str, dict[str, Any]],
            manifest: Manifest | None) -> str:
    """Why a run is not part of its suite's report, in words."""
    if row.status == "corrupt":
        return "its result.json is corrupt and the suite's manifest does not list it"
    if row.config_id is None or row.config_id not in configs:
        return "no configuration recorded in its result.json"
    if row.config_id != reference_id:
        return "another configuration: " + difference(configs[row.config_id], reference)
    if manifest is None:
        return f"same configuration, but other hyperparameters of {row.method} than its most recent runs"
    return "same configuration, but its method, ratio, LR or seed is no longer in the suite"


def apply_filter(results: Results, query: str) -> Results:
    """Keep the runs for which the pandas ``query`` holds, e.g. ``method in ['l1','tpp'] and ratio == 0.9``.

    ``ratio`` is a number here whenever every run has a single ratio (a per-layer profile keeps it a string)."""
    frame = results.runs
    numeric = bool(frame.ratio_value.notna().all())
    if numeric and QUOTED_RATIO.search(query):
        raise FilterError(f"--filter {query!r}: ratio is a number in filters; write it without quotes, e.g. "
                          "\"ratio == 0.9\" or \"ratio in [0.5, 0.9]\".")
    if numeric:
        frame = frame.assign(ratio=frame.ratio_value)
    elif frame.ratio_value.notna().any() and NUMERIC_RATIO.search(query):
        raise FilterError(f"--filter {query!r}: these runs mix single ratios and per-layer ratio profiles, so ratio "
                          "is a string here; write \"ratio == '0.9'\", or compare the number with ratio_value "
                          "(\"ratio_value == 0.9\"; NaN for a profile).")
    try:
        mask = frame.eval(query)
    except Exception as err:  # pandas raises SyntaxError, NameError, TypeError, ValueError, KeyError, ...
        raise FilterError(f"--filter {query!r} cannot be evaluated ({type(err).__name__}: {err}). Columns: "
                          f"{', '.join(results.runs.columns)}; ratio and lr are numbers (ratio == 0.9, lr == 0.01; "
                          "a per-layer ratio profile is a string), method a string (method == 'l1')."
                          ) from None
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise FilterError(f"--filter {query!r} is not a true/false condition on the runs (e.g. \"lr == 0.01\").")
    return results.select(mask)
