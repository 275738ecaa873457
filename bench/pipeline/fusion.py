"""A fused group of runs, start to finish: each run's pruned model as its own run makes it, then one fused retraining
(bench.training.fused), then each run's result as its separate run would write it.

Each member keeps its own lock, ``result.json``, checkpoints and final model: a member another process holds is
left to it, a finished one is skipped, and a killed group resumes every member from its own last checkpoint. A run
that fails before retraining (its pruned model) fails alone; an exception in the fused step fails every member
training in it, with the error, and they run again next time. Members whose pruned models or recipes turn out not
to match train in smaller groups or alone, with the reason logged.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.core import distributed
from bench.core.store import DenseDir, PrunedDir, RunDir, file_lock
from bench.pipeline.dense import usable_checkpoint
from bench.pipeline.dense_fusion import train_dense_group
from bench.pipeline.runner import (
    FINISHED,
    Retraining,
    close_result,
    execute,
    open_result,
    prepare_retraining,
    record_failure,
)
from bench.pipeline.setup import Workspace
from bench.pipeline.trackers import LiveLog
from bench.suite.fusion import plan_dense_fusion, plan_fusion
from bench.suite.grid import Run
from bench.training.fused import Member, architecture, fit_fused, unfusable
from bench.training.train import Diverged, fit

log = logging.getLogger(__name__)

RESTART = "retraining restarts from the pruned model"


@dataclass
class _Open:
    """A member whose lock is held and whose result is open."""

    run: Run
    rd: RunDir
    result: dict[str, Any]
    live: LiveLog | None
    began: float
    job: Retraining | None = None


def execute_runs(runs: Sequence[Run], ws: Workspace, starting: Callable[[str], None] = lambda what: None,
                 finished: Callable[[str], None] = lambda status: None) -> Counter[str]:
    """Execute ``runs`` in this process, a fused group (bench.suite.fusion) as one task, a fused group of dense models
    before the first run that needs one of them; ``starting`` hears what starts (for a progress bar), ``finished``
    each run's status. Data-parallel runs train alone (no DDP fused)."""
    statuses: Counter[str] = Counter()
    dense = {} if distributed.active() else dense_groups(runs, ws)
    for task in [[r] for r in runs] if distributed.active() else plan_fusion(list(runs)).tasks(list(runs)):
        for run in task:  # a fused dense group trains before the first run that needs one of its models
            group = dense.get(run.dense_id)
            if group is not None:
                for member in group:
                    dense.pop(member.dense_id)
                starting(f"{len(group)} dense models fused")
                train_dense_group(group, ws)
        d = task[0].describe()
        starting(f"{d['method']} r={d['ratio']} lr={d['lr']:g} s={d['seed']}" if len(task) == 1
                 else f"{len(task)} runs fused")
        for status in execute_group(task, ws).values():
            statuses[status] += 1
            finished(status)
    return statuses


def dense_groups(runs: Sequence[Run], ws: Workspace) -> dict[str, list[Run]]:
    """Dense id -> its fused dense group (bench.suite.fusion), for the dense models still missing that a run of
    ``runs`` needs (its pruned model is not made yet)."""
    needed = [r for r in runs if not PrunedDir(ws.results, r.prune_id).done
              and not DenseDir(ws.results, r.dense_id).done]
    return {r.dense_id: group for group in plan_dense_fusion(needed).groups for r in group}


def execute_group(runs: Sequence[Run], ws: Workspace) -> dict[str, str]:
    """Execute ``runs`` (a group of bench.suite.fusion's plan) with fused retraining; returns each run's status."""
    if len(runs) == 1:
        return {runs[0].run_id: execute(runs[0], ws)}
    statuses: dict[str, str] = {}
    with ExitStack() as locks:
        members: list[_Open] = []
        for run in runs:
            rd = RunDir(ws.results, run.suite.name, run.run_id)
            if not locks.enter_context(file_lock(rd.lock, blocking=False)):
                log.info("run %s is being executed by another process; skipped", run.run_id)
                statuses[run.run_id] = "locked"
                continue
            if (status := rd.status()) in FINISHED:
                statuses[run.run_id] = status
                continue
            result, live = open_result(run, ws, rd)
            member = _Open(run, rd, result, live, time.perf_counter())
            try:  # one member's progress bars stand for the group's (its members train in step)
                quiet = dataclasses.replace(ws, progress=None) if members else ws
                member.job = prepare_retraining(run, quiet, rd, live)
            except Exception as err:  # its pruned model failed: this run fails alone
                record_failure(result, run, err)
                statuses[run.run_id] = close_result(run, ws, rd, result, member.began, live)
                continue
            members.append(member)
        try:
            for subgroup in _subgroups(members):
                _retrain(subgroup, ws)
        finally:
            for member in members:
                assert member.job is not None
                member.job.close()
        for member in members:
            statuses[member.run.run_id] = close_result(member.run, ws, member.rd, member.result, member.began,
                                                       member.live)
    return statuses


def _subgroups(members: list[_Open]) -> list[list[_Open]]:
    """Members split by what must match to stack: the architecture and the recipe apart from the LR."""
    split: dict[Any, list[_Open]] = {}
    for member in members:
        job = member.job
        assert job is not None
        key = (architecture(job.model), repr(dataclasses.replace(job.recipe, lr=0.0)))
        split.setdefault(key, []).append(member)
    return list(split.values())


def _retrain(group: list[_Open], ws: Workspace) -> None:
    """Retrain ``group`` fused, or each member alone when it cannot fuse; record each member's outcome."""
    jobs = [m.job for m in group if m.job is not None]
    members = [Member(j.model, j.recipe, j.run.seed, j.hooks, usable_checkpoint(j.rd.checkpoint, RESTART))
               for j in jobs]
    reason = "no other member has its architecture and recipe" if len(group) == 1 else None
    if reason is None and any(j.optimizer is not None for j in jobs):
        reason = "a method gives retraining its own param groups"
    reason = reason or unfusable(members)
    if reason is not None:
        if len(group) > 1:
            log.info("runs %s retrain separately: %s", ", ".join(m.run.run_id for m in group), reason)
        for member, job in zip(group, jobs):
            try:
                history = fit(job.model, ws.data, job.recipe, device=ws.device, seed=job.run.seed, phase="retrain",
                              hooks=job.hooks, optimizer=job.optimizer, checkpoint=job.rd.checkpoint)
                member.result.update(job.finish(history), status="ok")
            except Exception as err:
                record_failure(member.result, member.run, job.diverged(err) if isinstance(err, Diverged) else err)
        return
    log.info("runs %s retrain as one fused model", ", ".join(m.run.run_id for m in group))
    for member in group:
        member.result["attempts"][-1]["fused"] = {"members": len(group)}
    try:
        outcomes = fit_fused(members, ws.data, device=ws.device, phase="retrain")
    except Exception as err:  # the fused step's: every member fails with it, and runs again next time
        for member in group:
            record_failure(member.result, member.run, err)
        return
    for member, job, outcome in zip(group, jobs, outcomes):
        try:
            if isinstance(outcome, Diverged):
                raise job.diverged(outcome)
            member.result.update(job.finish(outcome), status="ok")
        except Exception as err:
            record_failure(member.result, member.run, err)
