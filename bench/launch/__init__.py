"""Executors for a suite's unfinished runs: a pool of local worker processes, or one Slurm job array (submitit).

Every executor ends in the same ``bench.runner.execute`` per run, so the semantics are those of the inline loop:
a finished run is skipped, an interrupted one resumes from its last epoch checkpoint, and a run is executed by at
most one process at a time (a non-blocking flock on its directory; a second process returns "locked"). Workers
are never sent a dataset or a model: they get the command's arguments (``Invocation``) and rebuild the suite, its
runs and the dataset themselves, so a Slurm task's pickle is a few hundred bytes.

Dense models are trained in a stage of their own, one task per missing dense model (or per fused group of them: the
seeds' dense models, bench.suite.fusion), before the runs start (``Slurm.dense_job``; the local pool always does
it). The alternative, letting every run task wait on the dense model's lock, would keep the GPUs of all but one task
idle for the whole dense training. Pruned models that several runs share (the same run but for the retraining LR)
are made likewise in a second stage (``Slurm.prune_job``), so a method's phase runs once while its LR siblings are
not yet started. If a stage's task fails, the runs still start (Slurm ``afterany``) and retry it themselves under
the lock, so its error is recorded in their result files.

Slurm submissions are recorded in ``<results>/<suite>/submissions.json`` (job ids, each run's array task, the log
folder): ``status`` joins them with sacct, and a resubmission skips runs whose task is still queued or running.
"""
from __future__ import annotations

from bench.launch.invocation import (
    Invocation,
    configure_worker_logging,
    dense_stage,
    has_phase,
    pruned_stage,
    run_in_process,
)
from bench.launch.local import (
    init_pool_worker,
    pool_devices,
    run_local,
)
from bench.launch.slurm import (
    GPU_REQUESTS,
    LIVE_STATES,
    QUEUED_STATES,
    RUNNING_STATES,
    SACCT_LAG_S,
    SUBMISSIONS,
    SUBMISSIONS_FORMAT,
    SlurmExecutor,
    SlurmTask,
    Submission,
    TaskRecord,
    array_id,
    check_slurm_device,
    default_log_dir,
    is_live,
    latest_tasks,
    live_tasks,
    log_paths,
    make_executor,
    read_submissions,
    record_submission,
    scheduler_states,
    submissions_path,
    submit_slurm,
    task_gpus,
    wait_for,
)
from bench.launch.status import (
    RunState,
    run_states,
)

__all__ = [
    "GPU_REQUESTS",
    "Invocation",
    "LIVE_STATES",
    "QUEUED_STATES",
    "RUNNING_STATES",
    "RunState",
    "SACCT_LAG_S",
    "SUBMISSIONS",
    "SUBMISSIONS_FORMAT",
    "SlurmExecutor",
    "SlurmTask",
    "Submission",
    "TaskRecord",
    "array_id",
    "check_slurm_device",
    "configure_worker_logging",
    "default_log_dir",
    "dense_stage",
    "has_phase",
    "init_pool_worker",
    "is_live",
    "latest_tasks",
    "live_tasks",
    "log_paths",
    "make_executor",
    "pool_devices",
    "pruned_stage",
    "read_submissions",
    "record_submission",
    "run_in_process",
    "run_local",
    "run_states",
    "scheduler_states",
    "submissions_path",
    "submit_slurm",
    "task_gpus",
    "wait_for",
]
