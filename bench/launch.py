"""Executors for a suite's unfinished runs: a pool of local worker processes, or one Slurm job array (submitit).

Every executor ends in the same ``bench.runner.execute`` per run, so the semantics are those of the inline loop:
a finished run is skipped, an interrupted one resumes from its last epoch checkpoint, and a run is executed by at
most one process at a time (a non-blocking flock on its directory; a second process returns "locked"). Workers
are never sent a dataset or a model: they get the command's arguments (``Invocation``) and rebuild the suite, its
runs and the dataset themselves, so a Slurm task's pickle is a few hundred bytes.

Dense models are trained in a stage of their own, one task per missing dense model, before the runs start
(``Slurm.dense_job``; the local pool always does it). The alternative, letting every run task wait on the dense
model's lock, would keep the GPUs of all but one task idle for the whole dense training. Pruned models that
several runs share (the same run but for the retraining LR) are made likewise in a second stage
(``Slurm.prune_job``), so a method's phase runs once while its LR siblings are not yet started. If a stage's task
fails, the runs still start (Slurm ``afterany``) and retry it themselves under the lock, so its error is recorded
in their result files.

Slurm submissions are recorded in ``<results>/<suite>/submissions.json`` (job ids, each run's array task, the log
folder): ``status`` joins them with sacct, and a resubmission skips runs whose task is still queued or running.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import submitit
import torch
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import SlurmInfoWatcher

from bench import distributed, environment
from bench.config import Slurm, Suite
from bench.errors import ConfigError, UserError
from bench.grid import Run, suite_data_root
from bench.method import Method
from bench.runner import FINISHED, Workspace, execute, make_pruned, obtain_dense
from bench.session import load_runs, resolve_device
from bench.store import DenseDir, PrunedDir, RunDir, file_lock, read_json, write_json

log = logging.getLogger(__name__)

SUBMISSIONS = "submissions.json"
SUBMISSIONS_FORMAT = 1
# sacct states (first word) of a task that is still queued or running; anything else has ended.
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
LIVE_STATES = QUEUED_STATES | RUNNING_STATES
SACCT_LAG_S = 300.0  # accounting may list a new job late; until then "UNKNOWN" counts as queued


# ----------------------------------------------------------------------------------------- what a worker gets

@dataclass(frozen=True)
class Invocation:
    """The ``run`` command's arguments, from which any process rebuilds the suite, its runs and its dataset.

    Paths are absolute, because a Slurm job may start in another directory.
    """

    suite: str
    overrides: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    results: str = "results"
    data_root: str | None = None
    device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Invocation:
        """From the parsed ``run`` (or ``status``) command line."""
        plugins = tuple(str(Path(p).resolve()) if Path(p).exists() else p for p in args.plugins)
        data_root = getattr(args, "data_root", None)
        return cls(suite=str(Path(args.suite).resolve()), overrides=tuple(args.overrides), plugins=plugins,
                   results=str(Path(args.results).resolve()), device=getattr(args, "device", None),
                   data_root=str(Path(data_root).resolve()) if data_root else None)

    def load(self) -> tuple[Suite, list[Run], Path]:
        """Load plugins and the suite, and expand its runs (what the command line does)."""
        return load_runs(self.suite, self.overrides, self.plugins, self.data_root)

    def device_name(self, suite: Suite) -> str:
        """The device the command line or else the suite asks for (auto, cpu, cuda, cuda:N)."""
        return self.device or suite.device

    def workspace(self, suite: Suite, suite_dir: Path, device: str | None = None) -> Workspace:
        """Build the suite's dataset and the workspace runs execute in (``device`` overrides the usual choice)."""
        from bench.data import build_dataset
        from bench.registry import MODELS

        root = suite_data_root(suite, suite_dir, self.data_root)
        with environment.recording_reads() as reads:  # the dataset's files, for each result's provenance
            data = build_dataset(suite.dataset_name, suite.dataset_options, root, MODELS.get(suite.model).image_size)
        device_here = distributed.initialize(resolve_device(device or self.device_name(suite)))
        if not distributed.is_main():  # the other ranks of a data-parallel run stay silent
            logging.getLogger().setLevel(logging.ERROR)
        return Workspace(results=Path(self.results), data=data, suite_dir=suite_dir, device=device_here,
                         reads=reads, data_root=root.resolve() if root is not None else None)


_context: dict[tuple[Invocation, str | None], tuple[dict[str, Run], Workspace]] = {}


def run_in_process(invocation: Invocation, run_id: str, stage: str = "run", device: str | None = None) -> str:
    """Execute one run (``stage="run"``; returns its status), or only make its dense model (``"dense"``) or its
    pruned model (``"prune"``).

    The suite and dataset are loaded once per process and reused by the runs that follow in it.
    """
    key = (invocation, device)
    if key not in _context:
        suite, runs, suite_dir = invocation.load()
        _context.clear()
        _context[key] = ({r.run_id: r for r in runs}, invocation.workspace(suite, suite_dir, device))
    runs, ws = _context[key]
    run = runs.get(run_id)
    if run is None:
        raise UserError(f"run {run_id} is no longer part of suite '{invocation.suite}' (with its --set overrides): "
                        "the suite file changed after the submission. Submit the suite again.")
    if stage == "dense":
        obtain_dense(run, ws, run.method.build())
        return "ok"
    if stage == "prune":
        make_pruned(run, ws, run.method.build())
        return "ok"
    return execute(run, ws)


def dense_stage(runs: Iterable[Run], results: Path) -> list[Run]:
    """One run per dense model that some unpruned run still needs and that is trained (not loaded) and missing."""
    chosen: dict[str, Run] = {}
    for run in runs:
        pretrain = run.suite.pretrain
        if pretrain.checkpoint or pretrain.epochs == 0 or run.dense_id in chosen:
            continue
        if PrunedDir(results, run.prune_id).done:
            continue
        if not DenseDir(results, run.dense_id).done:
            chosen[run.dense_id] = run
    return list(chosen.values())


def pruned_stage(runs: Iterable[Run], results: Path) -> list[Run]:
    """One run per missing pruned model that two or more of ``runs`` share (the same run but for the retraining
    LR) and whose method has a training phase: made first, it spares their tasks from waiting on its lock while
    the phase runs. Without a phase, making it is quick, and the first run does it."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.prune_id, []).append(run)
    return [group[0] for prune_id, group in groups.items()
            if len(group) > 1 and has_phase(group[0]) and not PrunedDir(results, prune_id).done]


def has_phase(run: Run) -> bool:
    """Whether a component of the run's method defines its own training phase (``Method.phase`` overridden)."""
    return any(type(m).phase is not Method.phase for m in run.method.build())


def configure_worker_logging(level: int = logging.INFO, tag: str = "") -> None:
    """Log to stderr with times in a worker process (a Slurm task's log file, or the pool's terminal)."""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")


# ----------------------------------------------------------------------------------------- local pool

_worker: dict[str, Any] = {}


def _init_pool_worker(slots: Any, devices: list[str] | None, threads: int | None, level: int) -> None:
    """Pool initializer: take a worker slot, pick its device (``cuda:{slot % n_gpus}``) and thread count.

    The worker's GPU becomes its current device, so CUDA's context and any allocation made without an explicit
    device (library workspaces, ``torch.cuda`` calls) land there, not on GPU 0."""
    slot = slots.get()
    _worker["device"] = devices[slot] if devices else None
    if _worker["device"] is not None and _worker["device"].startswith("cuda"):
        torch.cuda.set_device(_worker["device"])
    if threads:
        torch.set_num_threads(threads)
    configure_worker_logging(level, f" [worker {slot}]")


def _pool_task(invocation: Invocation, run_id: str, stage: str) -> str:
    return run_in_process(invocation, run_id, stage, _worker.get("device"))


def pool_devices(invocation: Invocation, suite: Suite, workers: int) -> list[str] | None:
    """Per-worker devices when the suite may use GPUs and some are visible: worker i gets ``cuda:{i % n_gpus}``;
    with ``cuda:N`` every worker gets GPU N (said in a warning when there are several workers)."""
    name = invocation.device_name(suite)
    if name.startswith("cuda:"):
        if workers > 1:
            log.warning("device '%s': all %d workers share that one GPU; --device cuda (or auto) spreads them over "
                        "the %d visible GPUs", name, workers, torch.cuda.device_count())
        return [name] * workers
    n_gpus = torch.cuda.device_count() if name in ("auto", "cuda") else 0
    return [f"cuda:{i % n_gpus}" for i in range(workers)] if n_gpus else None


def run_local(invocation: Invocation, suite: Suite, todo: list[Run], workers: int, quiet: bool = False,
              on_done: Callable[[Run, str], None] | None = None) -> Counter[str]:
    """Execute ``todo`` in ``workers`` spawned processes: the missing dense models first, then the pruned models
    several runs share, then the runs.

    Returns the count of each status ("ok", "diverged", "failed", "locked"). CPU workers share the cores
    (``torch`` threads = cores // workers) unless OMP_NUM_THREADS is set.
    """
    devices = pool_devices(invocation, suite, workers)
    threads = None if devices or "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for slot in range(workers):
        slots.put(slot)
    statuses: Counter[str] = Counter()
    level = logging.WARNING if quiet else logging.INFO
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                                 initargs=(slots, devices, threads, level)) as pool:
            def start(runs: Iterable[Run], stage: str) -> dict[Future[str], Run]:
                return {pool.submit(_pool_task, invocation, r.run_id, stage): r for r in runs}

            results = Path(invocation.results)
            for future, run in start(dense_stage(todo, results), "dense").items():
                _log_stage_error(future, "dense", run)
            # A shared pruned model's runs start when it is made; every other run starts at once.
            staged = start(pruned_stage(todo, results), "prune")
            waiting = {r.prune_id for r in staged.values()}
            pending = start([r for r in todo if r.prune_id not in waiting], "run")
            while pending or staged:
                done, _ = wait([*pending, *staged], return_when=FIRST_COMPLETED)
                for future in done:
                    if future in staged:
                        made = staged.pop(future)
                        _log_stage_error(future, "pruned", made)
                        pending.update(start([r for r in todo if r.prune_id == made.prune_id], "run"))
                        continue
                    run = pending.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        raise error
                    if error is not None:
                        log.error("run %s failed in its worker: %s: %s", run.run_id, type(error).__name__, error)
                    status = "failed" if error is not None else future.result()
                    statuses[status] += 1
                    if on_done is not None:
                        on_done(run, status)
    except BrokenProcessPool:
        raise UserError("a worker process died (killed, or out of memory?) and the pool stopped. Finished runs "
                        "are kept; run the same command again to resume the others (perhaps with fewer --workers)."
                        ) from None
    return statuses


def _log_stage_error(future: Future[str], stage: str, run: Run) -> None:
    """Log a failed dense or pruned-model task (its runs retry it themselves under the lock); a dead pool raises."""
    error = future.exception()
    if isinstance(error, BrokenProcessPool):
        raise error
    if error is not None:
        log.error("%s model for run %s failed: %s; its runs will retry it", stage, run.run_id, error)


# ----------------------------------------------------------------------------------------- Slurm

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


def submit_slurm(invocation: Invocation, suite: Suite, todo: list[Run]) -> Submission | None:
    """Submit one job array with a task per run of ``todo`` (minus those queued or running under an earlier
    submission), after a dense-model array when needed; record it; None when nothing is left to submit."""
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
    dense_runs = dense_stage(fresh, results) if suite.slurm.dense_job else []
    dense_jobs = _sbatch(executor, [SlurmTask(invocation, r.run_id, "dense") for r in dense_runs])
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
        jobs = _sbatch(executor, [SlurmTask(invocation, r.run_id) for r in fresh])
    except UserError:
        for job in prepared:   # no runs would use them
            job.cancel(check=False)
        raise
    submission = Submission(
        suite=suite.name, log_dir=log_dir, job=array_id(jobs),
        tasks={r.run_id: j.job_id for r, j in zip(fresh, jobs)}, dense_job=dense_job,
        dense_tasks={r.dense_id: j.job_id for r, j in zip(dense_runs, dense_jobs)}, prune_job=prune_job,
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
    n_prepared = len(submission.dense_tasks) + len(submission.prune_tasks)
    for i, job in enumerate(submission.jobs):
        try:
            status = job.result()
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            log.error("Slurm task %s did not finish: %s. Log: %s", job.job_id, str(err).strip().splitlines()[0],
                      log_paths(submission.log_dir, job.job_id)[1])
            status = "failed"
        if i >= n_prepared:
            statuses[status] += 1
    return statuses


# ----------------------------------------------------------------------------------------- submission records

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


# ----------------------------------------------------------------------------------------- status

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
                        "readable (see the README on sharing a results folder)")
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
