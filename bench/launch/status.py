"""``status``: each run's state from its result files, joined with its Slurm task's state where it has one."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bench.core.store import RunDir, file_lock, read_json
from bench.launch.slurm import QUEUED_STATES, RUNNING_STATES, TaskRecord, latest_tasks, log_paths, scheduler_states
from bench.pipeline.runner import FINISHED
from bench.suite.grid import Run

log = logging.getLogger(__name__)

@dataclass
class RunState:
    """One run's state for ``status``: pending, running, interrupted, ok, failed, diverged, corrupt or unreadable, with
    its task and a detail."""

    run: Run
    state: str
    task: str | None = None
    detail: str = ""
    log: Path | None = None


def run_states(runs: list[Run], results: Path) -> list[RunState]:
    """Each run's state from its result file and, where a submission record exists, the scheduler."""
    suite_name = runs[0].suite.name if runs else ""
    latest = latest_tasks(results, suite_name)
    states = scheduler_states(record.task for record in latest.values())
    return [_run_state(run, RunDir(results, suite_name, run.run_id), latest.get(run.run_id), states)
            for run in runs]


def _run_state(run: Run, rd: RunDir, latest: TaskRecord | None, states: dict[str, str]) -> RunState:
    file_status = rd.status()
    task, log_dir = (latest.task, latest.log_dir) if latest else (None, None)
    job_state = states.get(task) if task else None
    log_file = log_paths(log_dir, task)[1] if task and log_dir else None
    if file_status in FINISHED:
        return RunState(run, file_status, task)
    if job_state in QUEUED_STATES:
        return RunState(run, "pending", task, f"queued ({job_state.lower()})")
    if job_state in RUNNING_STATES:
        return RunState(run, "running", task, f"Slurm task {job_state.lower()}", log_file)
    if file_status == "failed":
        error = str(read_json(rd.result).get("error", "")).splitlines()
        return RunState(run, "failed", task, error[0] if error else "", log_file)
    if file_status == "corrupt":
        return RunState(run, "corrupt", task, f"{rd.result}: {rd.problem()}; run again to redo the run")
    if file_status == "unreadable":
        return RunState(run, "unreadable", task, f"{rd.result}: this user may not read it; ask its owner to make it "
                        "readable (see docs/results.md on sharing a results folder)")
    if job_state == "COMPLETED":   # the task found the run locked by another process, which has not finished it
        return RunState(run, "failed", task, "its Slurm task ended without finishing it (another process held "
                        "the run); submit again to resume", log_file)
    if job_state and job_state != "UNKNOWN":   # the task ended (cancelled, timed out, killed) without finishing
        return RunState(run, "failed", task, f"Slurm task {job_state}; submit again to resume", log_file)
    if file_status == "running":
        attempt = (read_json(rd.result).get("attempts") or [{}])[-1]
        where = f" on {attempt['host']} (pid {attempt['pid']})" if "host" in attempt else ""
        with file_lock(rd.lock, blocking=False) as free:  # a live runner holds the run's lock; a dead one cannot
            if free:
                return RunState(run, "interrupted", task, f"run again to resume (last started{where})")
        return RunState(run, "running", task, f"started{where}")
    if task:
        known = "sacct does not know it (yet)" if job_state == "UNKNOWN" else "no sacct here to ask the scheduler"
        return RunState(run, "pending", task, f"submitted; {known}")
    return RunState(run, "pending", None, "not started")
