"""Results -> one tidy DataFrame -> ``runs.csv`` and a Markdown summary per suite.

Runs that are running, failed or diverged stay in the table with their status; a corrupt result file is
named in a warning and skipped.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.store import DENSE_DIR, write_bytes

log = logging.getLogger(__name__)

COLUMNS = ["suite", "run_id", "method", "model", "dataset", "ratio", "lr", "seed", "status", "acc_dense",
           "acc_pruned", "acc_final", "acc_best", "acc_trainability", "params_dense", "params_pruned", "flops_dense",
           "flops_pruned", "jsv_dense", "jsv_pruned", "jsv_final", "wall_s"]


def flatten_result(result: dict[str, Any]) -> dict[str, Any]:
    """One row of runs.csv from a result.json."""
    metrics = result.get("metrics") or {}
    row = {k: result.get(k) for k in ("suite", "run_id", "method", "model", "dataset", "ratio", "lr", "seed",
                                      "status")}
    for key in ("acc_dense", "acc_pruned", "acc_final", "acc_best", "acc_trainability", "params_dense",
                "params_pruned", "flops_dense", "flops_pruned"):
        row[key] = metrics.get(key)
    for stage in ("dense", "pruned", "final"):
        row[f"jsv_{stage}"] = metrics.get(f"jsv_{stage}_mean")
    row["wall_s"] = (metrics.get("timings") or {}).get("wall_s")
    row["error"] = result.get("error")
    return row


def load_results(results: Path, suites: list[str] | None = None) -> pd.DataFrame:
    """Every run's result.json under ``results`` (optionally only some suites) as one DataFrame."""
    rows = []
    for path in sorted(results.glob("*/runs/*/result.json")):
        suite = path.parents[2].name
        if suite == DENSE_DIR or (suites and suite not in suites):
            continue
        try:
            rows.append(flatten_result(json.loads(path.read_text())))
        except (OSError, ValueError, AttributeError) as err:
            log.warning("skipping corrupt result file %s (%s)", path, err)
    frame = pd.DataFrame(rows)
    for column in COLUMNS + ["error"]:
        if column not in frame:
            frame[column] = None
    return frame[COLUMNS + ["error"]]


def accuracy_table(frame: pd.DataFrame) -> str:
    """Final accuracy (%) as mean ± std over seeds, rows method × ratio, one column per retraining LR."""
    ok = frame[frame.status == "ok"].copy()
    if ok.empty:
        return "_No finished runs yet._\n"
    ok["acc"] = ok.acc_final.astype(float) * 100
    stats = ok.groupby(["method", "ratio", "lr"]).acc.agg(["mean", "std", "count"]).reset_index()
    stats["cell"] = [f"{m:.2f} ± {s:.2f} (n={n})" if n > 1 else f"{m:.2f} (n=1)"
                     for m, s, n in zip(stats["mean"], stats["std"].fillna(0), stats["count"])]
    table = stats.pivot(index=["method", "ratio"], columns="lr", values="cell").sort_index()
    table.columns = [f"lr {c:g}" for c in table.columns]
    return table.reset_index().to_markdown(index=False) + "\n"


def status_line(frame: pd.DataFrame) -> str:
    counts = frame.status.value_counts().to_dict()
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def write_suite_report(frame: pd.DataFrame, directory: Path, suite: str) -> list[Path]:
    """runs.csv and summary.md for one suite."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / "runs.csv", directory / "summary.md"
    write_bytes(csv_path, frame.drop(columns=["error"]).to_csv(index=False).encode())
    failed = frame[frame.status.isin(["failed", "diverged"])]
    lines = [f"# {suite}", "", f"Runs: {status_line(frame)}.", "",
             "## Final test accuracy (%), mean ± std over seeds", "", accuracy_table(frame)]
    if not failed.empty:
        lines += ["## Runs that failed or diverged", ""]
        lines += [f"- `{r.run_id}` {r.method} ratio {r.ratio} lr {r.lr:g} seed {r.seed}: {r.status} — {r.error}"
                  for r in failed.itertuples()]
    write_bytes(md_path, "\n".join(lines).encode())
    return [csv_path, md_path]


def write_reports(results: Path, suites: list[str] | None = None) -> list[Path]:
    """Write each suite's report under ``results/<suite>/report/``; returns the files written."""
    frame = load_results(results, suites)
    if frame.empty:
        raise UserError(f"no results under '{results}'"
                        + (f" for suite(s) {', '.join(suites)}" if suites else "") + ". Run a suite first.")
    written = []
    for suite, part in frame.groupby("suite"):
        written += write_suite_report(part.reset_index(drop=True), results / str(suite) / "report", str(suite))
    return written
