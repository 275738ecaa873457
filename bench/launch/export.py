"""``export``: a suite's runs, as last run (its manifest), written to TensorBoard or MLflow, one tracker run each.

Exporting again rewrites every tracker run (never appends), and removes the tracker runs of harness runs that are
no longer part of the suite, so the tracker mirrors the suite's report: as many tracker runs as runs.csv has rows.
"""
from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from pathlib import Path

from bench.core.errors import CheckpointError, UserError
from bench.core.store import read_json
from bench.pipeline import trackers
from bench.suite.manifest import read_manifest

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{12}")


def suite_results(results: Path, suite: str) -> tuple[list[trackers.TrackerRun], int]:
    """The tracker runs of the suite's runs that have a result (any status), and how many have none yet."""
    suite_dir = results / suite
    manifest = read_manifest(suite_dir)
    if manifest is None:
        raise UserError(f"{suite_dir / 'manifest.json'} not found or unreadable: export takes the runs of a suite as "
                        f"last run; run the suite (python bench.py run SUITE) to record them.")
    runs, pending = [], 0
    for run_id in manifest.runs:
        path = suite_dir / "runs" / run_id / "result.json"
        if not path.exists():
            pending += 1
            continue
        try:
            runs.append(trackers.from_result(read_json(path), suite))
        except (CheckpointError, KeyError, TypeError, ValueError, AttributeError) as err:
            log.warning("skipping unreadable result %s (%s)", path, err)
    return runs, pending


def _export_tensorboard(target: str, suite: str, runs: list[trackers.TrackerRun]) -> int:
    folder = Path(target) / suite
    wanted = {r.name for r in runs}
    removed = 0
    if folder.is_dir():  # runs exported before that the suite no longer has (only folders holding event files)
        for old in folder.iterdir():
            files = list(old.iterdir()) if old.is_dir() else []
            if RUN_ID.fullmatch(old.name) and old.name not in wanted and files and all(
                    f.name.startswith("events.out.tfevents.") for f in files):
                shutil.rmtree(old)
                removed += 1
    for run in runs:
        trackers.write_tensorboard(target, run)
    return removed


def _export_mlflow(target: str, suite: str, runs: list[trackers.TrackerRun]) -> int:
    client = trackers.mlflow_client(target)
    experiment = trackers.mlflow_experiment(client, suite)
    earlier = trackers.mlflow_runs_by_name(client, experiment)
    wanted = {r.name for r in runs}
    stale = [uid for name, uids in earlier.items() if name not in wanted for uid in uids]
    for uid in stale:
        client.delete_run(uid)
    for run in runs:
        trackers.write_mlflow(client, experiment, run, earlier.get(run.name, []))
    return len({name for name in earlier if name not in wanted})


def export_suite(results: Path, suite: str, kind: str, target: str) -> str:
    """Write the suite's runs to tracker ``kind`` at ``target``; returns a one-line summary."""
    trackers.require(kind)
    runs, pending = suite_results(results, suite)
    removed = (_export_tensorboard if kind == "tensorboard" else _export_mlflow)(target, suite, runs)
    statuses = Counter(r.status for r in runs)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"
    if kind == "tensorboard":
        where = f"{target}/{suite}/<run id>"
    else:
        where = f"{trackers.mlflow_uri(target)}, experiment '{suite}'"
    line = f"{suite}: {len(runs)} runs exported to {kind} ({counts}) in {where}"
    if pending:
        line += f"; {pending} not started, not exported"
    if removed:
        line += f"; removed {removed} tracker runs of runs no longer in the suite"
    return line
