"""The local executor: a pool of worker processes, each pinned to its device slot, running the stages then the
runs."""
from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from bench.core.config import Suite
from bench.core.errors import UserError
from bench.launch.invocation import Invocation, configure_worker_logging, dense_stage, pruned_stage, run_in_process
from bench.suite.fusion import plan_fusion
from bench.suite.grid import Run

log = logging.getLogger(__name__)

_worker: dict[str, Any] = {}  # this pool worker's device, set by its initializer


def init_pool_worker(slots: Any, devices: list[str] | None, threads: int | None, level: int) -> None:
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
              on_done: Callable[[Run, str], None] | None = None, tasks: list[list[Run]] | None = None
              ) -> Counter[str]:
    """Execute ``todo`` in ``workers`` spawned processes: the missing dense models first (a fused group of them as
    one task), then the pruned models several runs share, then the runs; a fused group's runs (bench.suite.fusion;
    ``tasks`` overrides its plan) are one task, started once all their pruned models are made.

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
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_pool_worker,
                                 initargs=(slots, devices, threads, level)) as pool:
            def start(runs: Iterable[Run], stage: str) -> dict[Future[str], Run]:
                return {pool.submit(_pool_task, invocation, r.run_id, stage): r for r in runs}

            def start_tasks(groups: Iterable[list[Run]]) -> dict[Future[str], list[Run]]:
                return {pool.submit(_pool_task, invocation, ",".join(r.run_id for r in group),
                                    "group" if len(group) > 1 else "run"): group for group in groups}

            results = Path(invocation.results)
            dense = {pool.submit(_pool_task, invocation, ",".join(r.run_id for r in g), "dense"): g[0]
                     for g in dense_stage(todo, results)}  # a fused dense group is one task
            for future, run in dense.items():
                _log_stage_error(future, "dense", run)
            # A shared pruned model's runs start when it is made; every other run starts at once.
            staged = start(pruned_stage(todo, results), "prune")
            waiting = {r.prune_id for r in staged.values()}
            queued = list(tasks) if tasks is not None else plan_fusion(todo).tasks(todo)

            def ready() -> list[list[Run]]:
                now = [g for g in queued if not any(r.prune_id in waiting for r in g)]
                queued[:] = [g for g in queued if g not in now]
                return now

            pending = start_tasks(ready())
            while pending or staged:
                done, _ = wait([*pending, *staged], return_when=FIRST_COMPLETED)
                for future in done:
                    if future in staged:
                        made = staged.pop(future)
                        _log_stage_error(future, "pruned", made)
                        waiting.discard(made.prune_id)
                        pending.update(start_tasks(ready()))
                        continue
                    group = pending.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        raise error
                    if error is not None:
                        log.error("run %s failed in its worker: %s: %s", ",".join(r.run_id for r in group),
                                  type(error).__name__, error)
                    results = ["failed"] * len(group) if error is not None else future.result().split(",")
                    for run, status in zip(group, results):
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
