"""A fused group of dense models, start to finish: the dense models of a suite that differ only in the seed (a group
of bench.suite.fusion's dense plan), trained as one model (bench.training.fused) and each written as its separate
training writes it (``DenseTraining.finish`` in bench.pipeline.dense serves both).

Each member holds its dense model's lock for the group's whole training; one that another process holds, or that
is already made, is left out. Every member writes its own checkpoint each epoch in ``fit``'s format, so a killed
group resumes each member from it (and a separate training resumes it too); its ``pretrain.best_on`` hook is an
epoch-end hook run on its own module. A member whose loss diverges is left as its separate training leaves it (its
last checkpoint, no model) and the runs of this process that need it record the divergence; the others go on.
Members that turn out not to fuse (layer widths, a dense variant's param groups or step hooks, dropout,
data-parallel) train one after the other, each as alone. An exception in the fused step fails every member: the
runs of this process that need one record the error, as retraining's fused step fails its runs, and the next ``run``
trains the group again from the members' checkpoints. (The runs of a pool's or Slurm's other processes do not see
it: they make the model again themselves, separately, as after any failed dense-stage task.)
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack

from bench.core import distributed
from bench.core.store import DenseDir, discard_if_empty, file_lock, making, remove_stale_temporaries
from bench.pipeline.dense import DenseTraining, prepare_dense, train_dense
from bench.pipeline.setup import Workspace, new_model
from bench.suite.grid import Run
from bench.training.fused import Member, fit_fused, unfusable
from bench.training.train import Diverged, fit

log = logging.getLogger(__name__)


def train_dense_group(runs: Sequence[Run], ws: Workspace) -> dict[str, str]:
    """Make the dense models of ``runs`` (one run per dense model), fused where they can; returns each dense id's
    outcome: "ok" (made, now or before), "locked" (another process makes it), "diverged" or "failed" (logged)."""
    if len(runs) == 1 or distributed.active():  # no fused training under data-parallel
        return {r.dense_id: _alone(r, ws) for r in runs}
    outcomes: dict[str, str] = {}
    label = f"dense {runs[0].suite.model} seeds {', '.join(str(r.seed) for r in runs)}"
    with ExitStack() as held:
        jobs: list[DenseTraining] = []
        for run in runs:
            dense = DenseDir(ws.results, run.dense_id)
            if not dense.done and not held.enter_context(file_lock(dense.lock, blocking=False)):
                log.info("dense model %s is being made by another process; left to it", run.dense_id)
                outcomes[run.dense_id] = "locked"
                continue
            if dense.done:  # checked again under its lock
                outcomes[run.dense_id] = "ok"
                continue
            remove_stale_temporaries(dense.path)
            held.callback(_discard_unmade, dense)  # before its lock is released
            methods = run.method.build()
            try:
                model = new_model(run, ws.data.info, methods)
                quiet = dataclasses.replace(ws, progress=None) if jobs else ws  # one bar stands for the group's
                jobs.append(prepare_dense(run, quiet, methods, model, dense, label))
            except Exception as err:
                outcomes[run.dense_id] = _failed(run, err, ws)
        outcomes.update(_train(jobs, ws))
    return outcomes


def _discard_unmade(dense: DenseDir) -> None:
    if not dense.done:  # as ``making`` leaves a failed attempt: the folder goes when nothing was saved in it
        discard_if_empty(dense.path, dense.lock)


def _train(jobs: list[DenseTraining], ws: Workspace) -> dict[str, str]:
    """Train ``jobs`` (their locks held) as one fused model, or each alone when they cannot fuse."""
    if not jobs:
        return {}
    reason = "only one of its dense models is left to make" if len(jobs) == 1 else None
    if reason is None and any(j.recipe is None for j in jobs):
        reason = "a dense model is loaded from pretrain.checkpoint"
    if reason is None and any(j.optimizer is not None for j in jobs):
        reason = "a dense variant gives dense training its own param groups"
    members = [Member(j.model, j.recipe, j.run.seed, j.hooks, j.checkpoint()) for j in jobs if j.recipe is not None]
    reason = reason or unfusable(members)
    if reason is not None:
        if len(jobs) > 1:
            log.info("dense models %s train separately: %s", ", ".join(j.run.dense_id for j in jobs), reason)
        return {j.run.dense_id: _separately(j, ws) for j in jobs}
    log.info("dense models %s train as one fused model", ", ".join(j.run.dense_id for j in jobs))
    began = time.perf_counter()
    try:
        outcomes = fit_fused(members, ws.data, device=ws.device, phase="dense")
    except Exception as err:  # the fused step's: every member fails with it
        return {j.run.dense_id: _failed(j.run, err, ws) for j in jobs}
    finally:
        for job in jobs:
            job.close()
    share = (time.perf_counter() - began) / len(jobs)  # each member's part of the fused training's time
    done: dict[str, str] = {}
    for job, outcome in zip(jobs, outcomes):
        try:
            if isinstance(outcome, Diverged):
                raise outcome
            job.finish(outcome, seconds=share, extra={"fused": {"members": len(jobs)}})
            done[job.run.dense_id] = "ok"
        except Exception as err:
            done[job.run.dense_id] = _failed(job.run, err, ws)
    return done


def _separately(job: DenseTraining, ws: Workspace) -> str:
    """Train one prepared member alone, as ``train_dense`` does."""
    try:
        history = [] if job.recipe is None else fit(
            job.model, ws.data, job.recipe, device=ws.device, seed=job.run.seed, phase="dense", hooks=job.hooks,
            checkpoint=job.dense.checkpoint, optimizer=job.optimizer)
        job.finish(history)
        return "ok"
    except Exception as err:
        return _failed(job.run, err, ws)
    finally:
        job.close()


def _alone(run: Run, ws: Workspace) -> str:
    """Make one dense model as a run would, under ``making``."""
    dense = DenseDir(ws.results, run.dense_id)
    methods = run.method.build()
    try:
        with making(dense) as here:
            if here:
                train_dense(run, ws, methods, new_model(run, ws.data.info, methods), dense)
        return "ok"
    except Exception as err:
        return _failed(run, err, ws)


def _failed(run: Run, err: Exception, ws: Workspace) -> str:
    """Log a member's failure and keep it in ``ws``: the runs of this process that need the model record it."""
    ws.dense_failed[run.dense_id] = err
    if isinstance(err, Diverged):
        log.warning("dense model %s (seed %d) diverged: %s; the runs that need it record it", run.dense_id, run.seed,
                    err)
        return "diverged"
    log.error("dense model %s (seed %d) failed: %s: %s; the runs that need it record it", run.dense_id, run.seed,
              type(err).__name__, err)
    return "failed"
