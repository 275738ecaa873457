"""The Slurm executor (submitit): one job array per stage, and the submission records ``status`` joins with
sacct (``<results>/<suite>/submissions.json``)."""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import submitit
import torch
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import SlurmInfoWatcher

from bench.core.config import Slurm, Suite
from bench.core.errors import ConfigError, UserError
from bench.core.store import file_lock, read_json, write_json
from bench.launch.invocation import Invocation, configure_worker_logging, dense_stage, pruned_stage, run_in_process
from bench.suite.fusion import plan_fusion
from bench.suite.grid import Run

log = logging.getLogger(__name__)

SUBMISSIONS = "submissions.json"
SUBMISSIONS_FORMAT = 1
# sacct states (first word) of a task that is still queued or running; anything else has ended.
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
LIVE_STATES = QUEUED_STATES | RUNNING_STATES
SACCT_LAG_S = 300.0  # accounting may list a new job late; until then "UNKNOWN" counts as queued


class SlurmTask(submitit.helpers.Checkpointable):
    """One array task: a run of a suite (or only its dense model), requeued by submitit on timeout or preemption.

    The state lives in the run's epoch checkpoints, so ``checkpoint`` resubmits the task unchanged and the
    requeued task resumes from the last finished epoch. A task started twice does the work once (the run's flock).
    """

    def __init__(self, invocation: Invocation, run_id: str, stage: str = "run") -> None:
        self.invocation = invocation
        self.run_id = run_id
        self.stage = stage

    def __call__(self) -> str:
        configure_worker_logging()
        if submitit.JobEnvironment().num_tasks > 1:  # a data-parallel run: one Slurm task per rank
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(int(cpus))
        log.info("%s %s of suite %s (Slurm task %s, restart %s)", self.stage, self.run_id, self.invocation.suite,
                 submitit.JobEnvironment().job_id, os.environ.get("SLURM_RESTART_COUNT", "0"))
        status = run_in_process(self.invocation, self.run_id, self.stage)
        log.info("%s %s: %s", self.stage, self.run_id, status)
        return status

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue unchanged: the run's own checkpoints on disk carry the progress."""
        log.warning("%s %s interrupted (time limit or preemption): requeued; it resumes from its last checkpoint",
                    self.stage, self.run_id)
        return super().checkpoint(*args, **kwargs)


@dataclass
class Submission:
    """What one ``run --executor slurm`` submitted."""

    suite: str
    log_dir: Path
    job: str                                   # the runs' array job id
    tasks: dict[str, str]                      # run id -> array task id ("<job>_<index>")
    dense_job: str | None = None
    dense_tasks: dict[str, str] = field(default_factory=dict)   # dense id -> array task id
    prune_job: str | None = None
    prune_tasks: dict[str, str] = field(default_factory=dict)   # prune id -> array task id
    skipped_live: int = 0                      # unfinished runs left alone because their task is queued or running
    jobs: list[Any] = field(default_factory=list, repr=False)   # submitit jobs (dense, pruned, runs), for waiting

    def log_paths(self, task: str) -> tuple[Path, Path]:
        """(stdout, stderr) of an array task."""
        return log_paths(self.log_dir, task)


def log_paths(log_dir: Path | str, task: str) -> tuple[Path, Path]:
    """(stdout, stderr) files submitit writes for array task ``<job>_<index>`` under ``log_dir``."""
    paths = JobPaths(log_dir, job_id=task, task_id=0)
    return paths.stdout, paths.stderr


def default_log_dir(results: Path, suite: Suite) -> Path:
    """``slurm.log_dir`` (relative to the results directory), else ``<results>/<suite>/slurm``."""
    if suite.slurm.log_dir:
        path = Path(suite.slurm.log_dir).expanduser()
        return path if path.is_absolute() else results / path
    return results / suite.name / "slurm"


class SlurmExecutor(submitit.SlurmExecutor):
    """submitit's Slurm executor without its ``srun`` probe at construction, so that the sbatch script can be built
    (and tested) on a machine without Slurm; ``submit_slurm`` checks for ``sbatch`` itself, with a message to act on."""

    @classmethod
    def affinity(cls) -> int:
        return 2  # submitit's value when srun is found; only its constructor and AutoExecutor ask


def make_executor(options: Slurm, log_dir: Path, job_name: str) -> submitit.SlurmExecutor:
    """A submitit Slurm executor whose sbatch options come from the suite's ``slurm:`` section."""
    executor = SlurmExecutor(folder=log_dir, max_num_timeout=options.max_num_timeout, python=options.python)
    params: dict[str, Any] = {
        "job_name": job_name, "time": options.timeout_min, "nodes": 1, "ntasks_per_node": options.tasks_per_run,
        "cpus_per_task": options.cpus_per_task, "array_parallelism": options.array_parallelism,
        "signal_delay_s": options.signal_delay_s, "partition": options.partition, "account": options.account,
        "qos": options.qos, "gpus_per_task": options.gpus_per_task or None,
        "mem": f"{options.mem_gb:g}GB" if options.mem_gb else None,
        "additional_parameters": dict(options.additional_parameters), "setup": list(options.setup),
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


GPU_REQUESTS = ("gres", "gpus", "gpus-per-node", "gpus_per_node")  # additional_parameters that ask Slurm for GPUs


def task_gpus(options: Slurm) -> int | None:
    """GPUs a Slurm task of these options sees (0: none asked for; None: asked for, count unknown)."""
    if options.gpus_per_task > 0:
        return options.gpus_per_task
    for key in GPU_REQUESTS:
        value = str(options.additional_parameters.get(key, ""))
        if value:
            count = value.rsplit(":", 1)[-1]  # gres "gpu:2", "gpu:a100:2"; gpus "2", "a100:2"
            return int(count) if count.isdigit() else None
    return 0


def check_slurm_device(invocation: Invocation, suite: Suite) -> None:
    """A suite that needs CUDA must ask Slurm for a GPU; ``auto`` without one trains on CPU (a warning).

    Slurm shows a task only its own GPUs, numbered from cuda:0, so ``cuda:N`` past them would fail every task."""
    name = invocation.device_name(suite)
    gpus = task_gpus(suite.slurm)
    asks_gpu = gpus != 0
    if name.startswith("cuda") and not asks_gpu:
        raise ConfigError(f"device '{name}' needs a GPU in each Slurm task: set slurm.gpus_per_task (e.g. "
                          "--gpus-per-task 1) or slurm.additional_parameters.gres, or use --device cpu.")
    index = torch.device(name).index if name.startswith("cuda") else None
    if index is not None and gpus is not None and index >= gpus:
        raise ConfigError(f"device '{name}': each Slurm task sees only the {gpus} GPU(s) it asked for, as cuda:0"
                          f"{f' to cuda:{gpus - 1}' if gpus > 1 else ''}; use --device cuda (the task's own GPU).")
    if name == "auto" and not asks_gpu:
        log.warning("slurm.gpus_per_task is 0: the runs will train on the nodes' CPUs")


def submit_slurm(invocation: Invocation, suite: Suite, todo: list[Run], tasks: list[list[Run]] | None = None
                 ) -> Submission | None:
    """Submit one job array with a task per run of ``todo`` (minus those queued or running under an earlier
    submission), a fused group (bench.suite.fusion; ``tasks`` overrides its plan) as one task, after a dense-model
    array when needed; record it; None when nothing is left to submit."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: 'sbatch' is not on PATH. Run on a Slurm login node, or use "
                        "--executor local.")
    check_slurm_device(invocation, suite)
    results = Path(invocation.results)
    live = live_tasks(results, suite.name)
    fresh = [r for r in todo if r.run_id not in live]
    if len(fresh) < len(todo):
        log.info("%d unfinished runs are queued or running under earlier jobs; not submitted again",
                 len(todo) - len(fresh))
    if not fresh:
        return None
    log_dir = default_log_dir(results, suite)
    executor = make_executor(suite.slurm, log_dir, f"bench-{suite.name}-dense")
    dense_groups = dense_stage(fresh, results) if suite.slurm.dense_job else []  # a fused dense group is one task
    dense_jobs = _sbatch(executor, [SlurmTask(invocation, ",".join(r.run_id for r in g), "dense")
                                    for g in dense_groups])
    dense_job = array_id(dense_jobs)
    prepared = list(dense_jobs)
    try:
        prune_runs = pruned_stage(fresh, results) if suite.slurm.prune_job else []
        executor.update_parameters(job_name=f"bench-{suite.name}-pruned")
        if dense_job:
            executor.update_parameters(dependency=f"afterany:{dense_job}")
        prune_jobs = _sbatch(executor, [SlurmTask(invocation, r.run_id, "prune") for r in prune_runs])
        prepared += prune_jobs
        prune_job = array_id(prune_jobs)
        executor.update_parameters(job_name=f"bench-{suite.name}")
        if prune_job or dense_job:
            executor.update_parameters(dependency=f"afterany:{prune_job or dense_job}")
        ids = {r.run_id for r in fresh}
        groups = [g for g in ([r for r in t if r.run_id in ids] for t in (tasks or plan_fusion(fresh).tasks(fresh)))
                  if g]
        jobs = _sbatch(executor, [SlurmTask(invocation, ",".join(r.run_id for r in g), "group" if len(g) > 1 else "run")
                                  for g in groups])
    except UserError:
        for job in prepared:   # no runs would use them
            job.cancel(check=False)
        raise
    submission = Submission(
        suite=suite.name, log_dir=log_dir, job=array_id(jobs),
        tasks={r.run_id: j.job_id for g, j in zip(groups, jobs) for r in g}, dense_job=dense_job,
        dense_tasks={r.dense_id: j.job_id for g, j in zip(dense_groups, dense_jobs) for r in g}, prune_job=prune_job,
        prune_tasks={r.prune_id: j.job_id for r, j in zip(prune_runs, prune_jobs)},
        skipped_live=len(todo) - len(fresh), jobs=[*prepared, *jobs])
    record_submission(results, submission, invocation)
    return submission


def array_id(jobs: list[Any]) -> str | None:
    """The job id of a submitted array ("<id>" of its "<id>_<index>" tasks), None when nothing was submitted."""
    return jobs[0].job_id.split("_")[0] if jobs else None


def _sbatch(executor: submitit.SlurmExecutor, tasks: list[SlurmTask]) -> list[Any]:
    """Submit tasks as one array; sbatch refusing it (an unknown partition, too many CPUs) is a UserError."""
    if not tasks:
        return []
    try:
        return executor.submit_array(tasks)
    except submitit.core.utils.FailedJobError as err:
        reason = " ".join(line.strip() for line in str(err).splitlines() if "error" in line.lower()) or str(err)
        raise UserError(f"sbatch refused the job array: {reason.rstrip('.')}. Check the suite's slurm: section (or the "
                        "--partition/--account/... options) against what the cluster offers (sinfo).") from None


def wait_for(submission: Submission) -> Counter[str]:
    """Block until every task of a submission has ended; count the runs' statuses (an ended task without a
    status, e.g. cancelled or out of memory, counts as "failed")."""
    statuses: Counter[str] = Counter()
    n_prepared = len(set(submission.dense_tasks.values())) + len(submission.prune_tasks)  # a dense task may be a group
    for i, job in enumerate(submission.jobs):
        try:
            status = job.result()
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            log.error("Slurm task %s did not finish: %s. Log: %s", job.job_id, str(err).strip().splitlines()[0],
                      log_paths(submission.log_dir, job.job_id)[1])
            status = "failed"
        if i >= n_prepared:
            for one in status.split(","):  # a fused group's task returns its runs' statuses
                statuses[one] += 1
    return statuses



def submissions_path(results: Path, suite_name: str) -> Path:
    return results / suite_name / SUBMISSIONS


def read_submissions(results: Path, suite_name: str) -> list[dict[str, Any]]:
    """The suite's recorded Slurm submissions, oldest first ([] when there are none)."""
    path = submissions_path(results, suite_name)
    return list(read_json(path).get("submissions", [])) if path.exists() else []


def record_submission(results: Path, submission: Submission, invocation: Invocation) -> None:
    """Append a submission to ``submissions.json`` (atomically, under a lock against concurrent submitters)."""
    path = submissions_path(results, submission.suite)
    entry = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "submitted_unix": time.time(),
             "log_dir": str(submission.log_dir),
             "job": submission.job, "tasks": submission.tasks, "dense_job": submission.dense_job,
             "dense_tasks": submission.dense_tasks, "prune_job": submission.prune_job,
             "prune_tasks": submission.prune_tasks, "overrides": list(invocation.overrides)}
    with file_lock(path.with_name(f".{SUBMISSIONS}.lock"), blocking=True):
        write_json(path, {"format": SUBMISSIONS_FORMAT,
                          "submissions": [*read_submissions(results, submission.suite), entry]})


class TaskRecord(NamedTuple):
    """A run's most recent array task: its id, log folder and submission time (seconds since the epoch)."""

    task: str
    log_dir: str
    submitted: float


def latest_tasks(results: Path, suite_name: str) -> dict[str, TaskRecord]:
    """Run id -> its task in the most recent submission that included it."""
    latest: dict[str, TaskRecord] = {}
    for entry in read_submissions(results, suite_name):
        for run_id, task in entry.get("tasks", {}).items():
            latest[run_id] = TaskRecord(task, entry["log_dir"], float(entry.get("submitted_unix", 0)))
    return latest


def scheduler_states(task_ids: Iterable[str]) -> dict[str, str]:
    """Slurm states (first word: RUNNING, CANCELLED, ...) of array tasks from one sacct call (through submitit's
    watcher); {} where sacct is not installed. A task sacct does not know (yet) is "UNKNOWN"."""
    ids = sorted(set(task_ids))
    if not ids or shutil.which("sacct") is None:
        return {}
    watcher = SlurmInfoWatcher(delay_s=0)
    for task in ids:
        watcher.register_job(task)
    watcher.update()
    return {task: (watcher.get_state(task, mode="cache").split() or ["UNKNOWN"])[0] for task in ids}


def is_live(record: TaskRecord, state: str | None) -> bool:
    """Whether a task is queued or running; one sacct does not list yet counts as queued for ``SACCT_LAG_S``."""
    return state in LIVE_STATES or (state == "UNKNOWN" and time.time() - record.submitted < SACCT_LAG_S)


def live_tasks(results: Path, suite_name: str) -> dict[str, str]:
    """Run id -> array task id for runs whose latest task is still queued or running."""
    latest = latest_tasks(results, suite_name)
    states = scheduler_states(record.task for record in latest.values())
    return {run_id: record.task for run_id, record in latest.items() if is_live(record, states.get(record.task))}
