"""One run, start to finish and resumable: dense model -> method phase -> select -> slim -> retrain -> result.

Every method goes through this same pipeline with the same dense model, the same physical removal, the
same retraining loop and the same measurements; only the method's hooks differ. Each stage leaves a file
(the cached dense model, ``pruned.pt``, the retraining ``checkpoint.pt``), so a killed run resumes where it
stopped and ends with the numbers an uninterrupted run would have given. A derived file found corrupt (a cached
model, a checkpoint) is moved aside with a warning and made again.
"""
from __future__ import annotations

import logging
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.core import distributed, environment
from bench.core.errors import CheckpointError, UserError
from bench.core.store import (
    RunDir,
    file_lock,
    read_json,
    remove_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from bench.pipeline.dense import BestCheckpoint as BestCheckpoint  # re-exported (the flat bench.runner had it)
from bench.pipeline.dense import train_dense as train_dense  # re-exported
from bench.pipeline.dense import usable_checkpoint
from bench.pipeline.metrics import jsv, jsv_probe, validation_metrics
from bench.pipeline.prune import Pruned as Pruned  # re-exported: the pruned-model stage's home before its module
from bench.pipeline.prune import make_pruned as make_pruned  # re-exported
from bench.pipeline.prune import prune_once as prune_once  # re-exported
from bench.pipeline.prune import prune_stage
from bench.pipeline.prune import run_context as run_context  # re-exported
from bench.pipeline.setup import (  # noqa: F401 (re-exported: bench.runner had them)
    Workspace,
    dense_recipe,
    example_input,
    group_plan,
    masking,
    model_entry,
    new_model,
    prune_target,
    retrain_recipe,
    suite_performance,
)
from bench.pipeline.setup import load_user_checkpoint as load_user_checkpoint  # re-exported
from bench.pipeline.setup import select_layers as select_layers  # re-exported
from bench.pipeline.setup import validate_runs as validate_runs  # re-exported
from bench.pipeline.trackers import LiveLog
from bench.pruning.masking import MaskHooks
from bench.suite.cost import after_dense_steps, budgeted, stage_cost
from bench.suite.grid import Run, resolve_path
from bench.training.hooks import EpochHooks, TrainHooks
from bench.training.train import Diverged, Recipe, evaluate, fit, make_optimizer, planned_steps, release_memory

log = logging.getLogger(__name__)

FINISHED = ("ok", "diverged")

def trainability_accuracy(history: list[dict[str, Any]], recipe: Recipe) -> float | None:
    """Mean test accuracy over the first stage of the retraining schedule (Wang et al. 2023).

    The first stage ends at the first milestone of a step or piecewise schedule; cosine and constant ones have one
    stage, the whole run. Under a budget ``recipe`` is the run's schedule before the budget lengthened it, so every
    method of a budgeted suite averages the same epochs. None when nothing was retrained.
    """
    s = recipe.schedule
    first = s.milestones[0] if s.name in ("step", "piecewise") and s.milestones else recipe.epochs
    accs = [row["test_acc"] for row in history[:first]]
    return sum(accs) / len(accs) if accs else None


def previous_attempts(rd: RunDir) -> list[dict[str, Any]]:
    """The attempts recorded by earlier, unfinished executions of this run (resumes, requeues)."""
    try:
        return list(read_json(rd.result).get("attempts", [])) if rd.result.exists() else []
    except CheckpointError:
        return []


def base_result(run: Run) -> dict[str, Any]:
    return {"format": 1, **run.describe(), "prune_id": run.prune_id, "status": "running", "config": run.key,
            "method_components": run.method.plain(), "ratio_value": run.ratio}


def execute(run: Run, ws: Workspace) -> str:
    """Run one cell (or skip it if finished or held by another process); returns its status."""
    rd = RunDir(ws.results, run.suite.name, run.run_id)
    with file_lock(rd.lock, blocking=False) as acquired:
        if not acquired:
            log.info("run %s is being executed by another process; skipped", run.run_id)
            return "locked"
        status = distributed.agree(rd.status())
        if status in FINISHED:
            return status
        result, live = open_result(run, ws, rd)
        began = time.perf_counter()
        try:
            result.update(_execute_stages(run, ws, rd, live), status="ok")
        except Exception as err:  # a bug or a resource problem: record it, keep the suite going
            record_failure(result, run, err)
        return close_result(run, ws, rd, result, began, live)


def open_result(run: Run, ws: Workspace, rd: RunDir) -> tuple[dict[str, Any], LiveLog | None]:
    """Start an execution of a run whose lock is held: its ``result.json`` marked running, with this attempt and
    the environment, and its live log."""
    if rd.status() == "corrupt":
        log.warning("run %s: %s is corrupt (%s); the run is done again", run.run_id, rd.result, rd.problem())
    remove_stale_temporaries(rd.path)
    result = base_result(run)
    result["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["attempts"] = previous_attempts(rd) + [{"started": result["started"], "host": platform.node(),
                                                   "pid": os.getpid()}]
    checkpoint = run.suite.pretrain.checkpoint
    result["environment"] = environment.describe(
        ws.device, ws.reads, resolve_path(checkpoint, ws.suite_dir) if checkpoint else None)
    result["num_classes"] = ws.data.info.num_classes  # the report's chance level, 100 / classes
    result["environment"]["data_root"] = str(ws.data_root) if ws.data_root is not None else None
    info = ws.data.info  # what bench.pipeline.deploy rebuilds the model for, without loading the data
    result["input_shape"] = [info.in_channels, info.image_size, info.image_size]
    if distributed.active():
        result["environment"]["data_parallel"] = {"world_size": distributed.world_size(),
                                                  "backend": str(torch.distributed.get_backend())}
    write_json(rd.result, result)
    live = LiveLog.start(run.suite.log.targets(ws.suite_dir), result, run.suite.name, rd.checkpoint.exists()
                         ) if distributed.is_main() else None
    return result, live


def record_failure(result: dict[str, Any], run: Run, err: Exception) -> None:
    """What an exception makes of a run's result: diverged (with what was measured), failed (a user error, or a
    bug or resource problem, with its traceback)."""
    if isinstance(err, Diverged):
        log.warning("run %s diverged: %s", run.run_id, err)
        result.update(status="diverged", diverged={"phase": err.phase, "epoch": err.epoch}, error=str(err))
        result.update(err.partial)
    elif isinstance(err, UserError):
        result.update(status="failed", error=str(err))
        log.error("run %s failed: %s", run.run_id, err)
    else:
        result.update(status="failed", error=f"{type(err).__name__}: {err}",
                      traceback="".join(traceback.format_exception(err)))
        log.error("run %s failed: %s: %s", run.run_id, type(err).__name__, err)


def close_result(run: Run, ws: Workspace, rd: RunDir, result: dict[str, Any], began: float, live: LiveLog | None
                 ) -> str:
    """End an execution: the result written with its finishing time, memory released, leftovers removed."""
    result["finished"] = result["attempts"][-1]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["session_s"] = time.perf_counter() - began
    write_json(rd.result, result)
    release_memory(ws.device)
    if live is not None:
        live.finish(result)
    if result["status"] in FINISHED:
        storage = run.suite.storage
        for leftover, keep in ((rd.checkpoint, storage.keep_checkpoints), (rd.model, storage.keep_final_model)):
            if not keep:
                remove_checkpoint(leftover)
    return result["status"]


def _execute_stages(run: Run, ws: Workspace, rd: RunDir, live: LiveLog | None = None) -> dict[str, Any]:
    """The stages of one run; returns its result's metrics, history and the sha256 of the dense model it used."""
    job = prepare_retraining(run, ws, rd, live)
    try:
        history = fit(job.model, ws.data, job.recipe, device=ws.device, seed=run.seed, phase="retrain",
                      hooks=job.hooks, optimizer=job.optimizer,
                      checkpoint=usable_checkpoint(rd.checkpoint, "retraining restarts from the pruned model"))
    except Diverged as err:
        raise job.diverged(err) from None
    finally:
        job.close()
    return job.finish(history)


@dataclass
class Retraining:
    """A run ready to retrain: its pruned model, recipe and hooks, and what finishing it needs."""

    run: Run
    ws: Workspace
    rd: RunDir
    model: nn.Module
    recipe: Recipe
    unbudgeted: Recipe  # its first stage is the trainability window of every run, budgeted or not
    hooks: list[TrainHooks]
    optimizer: torch.optim.Optimizer | None  # a method's own param groups; None: the recipe's SGD
    record: dict[str, Any]
    keep: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None
    probe: torch.Tensor | None
    cost: dict[str, Any]
    close: Callable[[], None]  # the progress bar's end

    def partial(self) -> dict[str, Any]:
        """result.json's metrics measured before retraining, the phase history and the dense model's digest."""
        metrics = {k: v for k, v in self.record.items() if k not in ("phase_history", "timings", "dense_sha256")}
        return {"metrics": metrics, "history": {"phase": self.record["phase_history"]},
                "dense_sha256": self.record.get("dense_sha256")}  # None for a pruned model saved before digests

    def diverged(self, err: Diverged) -> Diverged:
        """Keep what was measured: the JSV after pruning matters most for exactly these runs."""
        err.partial = self.partial()
        err.partial["history"]["retrain"] = err.history
        return err

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The result's metrics and history after retraining (``history``), with the final model saved."""
        run, ws, model, record, recipe = self.run, self.ws, self.model, self.record, self.recipe
        done = self.partial()
        metrics, cost = done["metrics"], self.cost
        retrain_s = sum(row["seconds"] for row in history)
        acc_final = history[-1]["test_acc"] if history else evaluate(model, ws.data, 1000, ws.device)[1]
        metrics["acc_final"] = acc_final
        metrics["acc_best"] = max([row["test_acc"] for row in history] + [acc_final])
        metrics["acc_trainability"] = trainability_accuracy(history, self.unbudgeted)
        if ws.data.info.num_val:
            metrics["acc_val_final"] = history[-1]["val_acc"] if history else validation_metrics(model, ws)["val_acc"]
        if self.probe is not None:
            last = history[-1] if history else {}
            if "jsv_mean" in last:  # the last epoch measured this very model
                final = {k.removeprefix("jsv_"): v for k, v in last.items() if k.startswith("jsv_")}
            else:
                final = jsv(model, self.probe, run)
            metrics.update({f"jsv_final_{k}": v for k, v in final.items()})
        spent = sum(record["timings"][k] for k in ("dense_s", "phase_s", "prune_s")) + retrain_s  # this run's own
        metrics["timings"] = dict(record["timings"], retrain_s=retrain_s, wall_s=spent)
        cost["retrain"] = stage_cost([(history, recipe.batch_size)], ws.data.info.num_train, None,
                                     run.suite.retrain.batch_size)
        budget = run.key.get("budget")
        if budget is not None:
            cost["budget"] = {"steps": budget["steps"], "match": run.suite.budget.match if run.suite.budget else None,
                              "rule": budget.get("rule", "last_stage"), "spent": after_dense_steps(cost)}
        metrics["cost"] = cost
        save_checkpoint(self.rd.model, {"keep": self.keep, "model": model.state_dict(),
                                        **({"mode": "mask"} if self.masks else {})})
        done["history"]["retrain"] = history
        return done


def prepare_retraining(run: Run, ws: Workspace, rd: RunDir, live: LiveLog | None = None) -> Retraining:
    """A run's pruned model (made or loaded), its retraining recipe (the method's, the budget's) and its hooks."""
    methods = run.method.build()
    probe = jsv_probe(run, ws)
    model, record, ctx, keep, masks = prune_stage(run, ws, methods, probe)
    every = run.suite.trainability.every

    def epoch_metrics(net: nn.Module, epoch: int) -> dict[str, Any]:
        row = validation_metrics(net, ws)
        if probe is not None and every and not epoch % every:
            row.update({f"jsv_{k}": v for k, v in jsv(net, probe, run).items()})
        return row

    recipe = retrain_recipe(run)
    for method in methods:
        recipe = method.retrain_recipe(recipe, ctx)
    recipe = suite_performance(recipe, run)
    cost = dict(record.get("cost") or {})  # none in a pruned model saved before costs were recorded
    budget = run.key.get("budget")
    unbudgeted = recipe
    if budget is not None:
        own = planned_steps(ws.data, recipe)
        recipe = budgeted(recipe, budget["steps"], after_dense_steps(cost), ws.data.steps_per_epoch(recipe.batch_size),
                          run.method.label, budget.get("rule", "last_stage"), run.suite.retrain.batch_size)
        if run.suite.budget is not None and run.suite.budget.match == run.method.label and \
                planned_steps(ws.data, recipe) != own:
            raise UserError(f"budget.match: '{run.method.label}' was predicted (Method.phase_steps and its dense "
                            f"variant's recipe) to spend {budget['steps']} steps after the dense model, but it spends "
                            f"{after_dense_steps(cost) + own:g}; the method's phase_steps is wrong (or its dense "
                            "variant's recipe: both are counted).")
    bar = ws.progress.phase(f"retrain {run.method.label} r={run.describe()['ratio']} lr={run.lr:g}"
                            ) if ws.progress else None
    groups = [g for g in (m.retrain_param_groups(model, recipe, ctx) for m in methods) if g is not None]
    optimizer = make_optimizer(model, recipe, groups[-1]) if groups else None

    def report(epoch: int, total: int, row: dict[str, Any]) -> None:
        if bar:
            bar(epoch, total, row)
        if live is not None:  # streams the epoch to the suite's trackers (suite key log)
            live.epoch(epoch, row)

    # the epoch-end hook last: the mask hook's state keeps its place in the checkpoint
    hooks: list[TrainHooks] = [*([MaskHooks(masks)] if masks else []), EpochHooks(epoch_metrics, report)]
    return Retraining(run, ws, rd, model, recipe, unbudgeted, hooks, optimizer, record, keep, masks, probe, cost,
                      bar.close if bar else lambda: None)
