"""One run, start to finish and resumable: dense model -> method phase -> select -> slim -> retrain -> result.

Every method goes through this same pipeline with the same dense model, the same physical removal, the
same retraining loop and the same measurements; only the method's hooks differ. Each stage leaves a file
(the cached dense model, ``pruned.pt``, the retraining ``checkpoint.pt``), so a killed run resumes where it
stopped and ends with the numbers an uninterrupted run would have given. A derived file found corrupt (a cached
model, a checkpoint) is moved aside with a warning and made again.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from bench.core import distributed, environment, faults
from bench.core.errors import CheckpointError, UserError
from bench.core.store import (
    PrunedDir,
    RunDir,
    file_lock,
    making,
    read_json,
    remove_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from bench.method import Method, RunContext
from bench.pipeline.dense import MAKE_ATTEMPTS, load_shared, obtain_dense, usable_checkpoint
from bench.pipeline.dense import BestCheckpoint as BestCheckpoint  # re-exported (the flat bench.runner had it)
from bench.pipeline.dense import train_dense as train_dense  # re-exported
from bench.pipeline.metrics import jsv, jsv_probe, measure, validation_metrics
from bench.pipeline.setup import (
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
from bench.pruning.groups import GroupPlan, group_sizes, slim_groups
from bench.pruning.masking import MaskHooks, apply_masks_, parameter_masks, removal_cost
from bench.suite.cost import after_dense_steps, budgeted, recipe_budget_steps, scoring_cost, stage_cost
from bench.suite.grid import Run, resolve_path
from bench.training.hooks import EpochHooks
from bench.training.measure import counting_flops
from bench.training.train import (
    Diverged,
    Recipe,
    derive_seed,
    evaluate,
    fit,
    make_optimizer,
    planned_steps,
    release_memory,
)

log = logging.getLogger(__name__)

FINISHED = ("ok", "diverged")

def run_context(run: Run, ws: Workspace, dense_model: nn.Module, methods: Sequence[Method]
                ) -> tuple[RunContext, GroupPlan]:
    """The context a run's method hooks see, built from a model with the dense architecture, and its groups."""
    plan = group_plan(dense_model, run, ws.data.info)
    batchnorm_of = {m: bn for g in plan.groups.values() for m, bn in g.batchnorm_of.items()}
    ctx = RunContext(target=prune_target(run, plan), data=ws.data, device=ws.device, seed=run.seed,
                     nonlinearity=model_entry(run).nonlinearity, batchnorm_of=batchnorm_of,
                     dense_recipe=dense_recipe(run, methods), retrain=retrain_recipe(run),
                     input_shape=tuple(example_input(ws.data.info).shape))
    ctx.generator.manual_seed(derive_seed(run.seed, "select"))
    return ctx, plan


class Pruned(NamedTuple):
    """A run's pruned model before retraining, with what was measured on the way, the channels kept and, when it is
    masked, the masks that retraining keeps (by parameter name)."""

    model: nn.Module
    record: dict[str, Any]
    ctx: RunContext
    keep: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None = None


def make_pruned(run: Run, ws: Workspace, methods: list[Method]) -> None:
    """Make the run's shared pruned model unless it exists (the pruned-model stage of the pool and Slurm)."""
    shared = PrunedDir(ws.results, run.prune_id)
    with making(shared) as here:
        if here:
            prune_once(run, ws, methods, shared, jsv_probe(run, ws))


def prune_stage(run: Run, ws: Workspace, methods: list[Method], probe: torch.Tensor | None) -> Pruned:
    """The pruned model before retraining: computed once per prune id (the runs that differ only in the retraining
    LR share it; other processes wait on the lock) and saved to ``pruned.pt``, which the other runs load."""
    shared = PrunedDir(ws.results, run.prune_id)
    for _ in range(MAKE_ATTEMPTS):
        with making(shared) as here:
            if here:
                return prune_once(run, ws, methods, shared, probe)  # what it saved, still in memory
        loaded = load_shared(shared)
        if loaded is not None:
            state = loaded[0]
            break
    else:
        raise CheckpointError(f"the pruned model '{shared.model}' was made again but is still unreadable; check the "
                              "disk.")
    remove_checkpoint(shared.phase)  # the phase is over; a kill after saving the model may have left it
    model = new_model(run, ws.data.info, methods)
    ctx, plan = run_context(run, ws, model, methods)
    keep = dict(state["keep"])
    masks = parameter_masks(model, plan, keep) if masking(run) else None
    if masks is None:
        slim_groups(model, plan, keep)
    model.load_state_dict(state["model"])
    record = dict(state["record"])
    ctx.flops.update(dense=record["flops_dense"], pruned=record["flops_pruned"])
    return Pruned(model.to(ws.device), record, ctx, keep, masks)


def prune_once(run: Run, ws: Workspace, methods: list[Method], shared: PrunedDir, probe: torch.Tensor | None
               ) -> Pruned:
    """Dense model -> method phases -> selection -> removal -> after_slim, measured, and saved to ``shared``
    (a run that loads it instead continues with the same numbers: the kill tests check this)."""
    info = ws.data.info
    began = time.perf_counter()
    model, dense_meta = obtain_dense(run, ws, methods)
    dense_s = time.perf_counter() - began
    ctx, plan = run_context(run, ws, model, methods)
    # The result is shared by the runs that differ only in the retraining LR, so the hooks must not see it.
    run_recipe, ctx.retrain = ctx.retrain, dataclasses.replace(ctx.retrain, lr=math.nan)
    layers = ctx.target.layers
    record: dict[str, Any] = {"acc_dense": dense_meta["acc"], "num_train": info.num_train,
                              "dense_checkpoint": dense_meta.get("checkpoint"),
                              **measure(model, info, "dense", run), "dense_sha256": dense_meta["sha256"]}
    if info.num_val:
        record["acc_val_dense"] = validation_metrics(model, ws)["val_acc"]
    ctx.flops["dense"] = record["flops_dense"]
    record.update({f"jsv_dense_{k}": v for k, v in jsv(model, probe, run).items()})
    total = group_sizes(plan)

    retrain_batch = run.suite.retrain.batch_size
    own = any(m.dense_variant() is not None for m in methods)
    loaded = bool(run.suite.pretrain.checkpoint)  # trained elsewhere: its cost is unknown
    dense_batch = dense_recipe(run, methods).batch_size
    dense_cost = stage_cost([(dense_meta.get("history") or [], dense_batch)], info.num_train,
                            run.dense_id, retrain_batch, own=own)
    if loaded:
        dense_cost.update(flops=None, loaded=True)
    elif own:  # what its own dense training spent beyond the shared recipe's (negative when shorter) counts in budgets
        shared_steps = recipe_budget_steps(dense_recipe(run), retrain_batch, ws.data.steps_per_epoch)
        dense_cost["own_beyond_shared"] = round(dense_cost["budget_steps"] - shared_steps, 6)
    began = time.perf_counter()
    phase_history: list[dict[str, Any]] = []
    phase_fits: list[tuple[list[dict[str, Any]], int]] = []
    selector = next(m for m in methods if m.selects)
    for method in methods:
        phase = method.phase(model, ctx)
        if phase is None:
            continue
        recipe = suite_performance(phase.recipe, run)
        optimizer = None
        if phase.param_groups is not None:
            optimizer = make_optimizer(model, recipe, phase.param_groups(model))
        bar = ws.progress.phase(f"{method.name} phase") if ws.progress else None
        rows = fit(model, ws.data, recipe, device=ws.device, seed=run.seed, phase=f"phase:{method.name}",
                   hooks=[*phase.hooks, EpochHooks(report=bar)] if bar else phase.hooks, optimizer=optimizer,
                   checkpoint=usable_checkpoint(shared.phase, "the phase restarts"))
        phase_history += rows
        phase_fits.append((rows, recipe.batch_size))
        if bar:
            bar.close()
    phase_s = time.perf_counter() - began

    began = time.perf_counter()
    model.eval()
    with counting_flops() as scoring_flops:  # the scoring passes selection and after_slim run (e.g. Taylor)
        keep = selector.select(model, ctx)
        masks = parameter_masks(model, plan, keep) if masking(run) else None
        if masks is None:
            slim_groups(model, plan, keep)
            for method in methods:
                method.after_slim(model, ctx)
        else:
            apply_masks_(model, masks)
    model.to(ws.device)
    _, acc_pruned = evaluate(model, ws.data, 1000, ws.device)
    if info.num_val:
        record["acc_val_pruned"] = validation_metrics(model, ws)["val_acc"]
    prune_s = time.perf_counter() - began
    kept = {n: len(keep[n]) for n in layers}
    if masks is None:
        record.update(measure(model, info, "pruned", run))
    else:  # what the masked model costs as it runs, and what removal would leave
        record.update(measure(model, info, "masked", run))
        counted = new_model(run, info, methods)
        record.update(removal_cost(counted, group_plan(counted, run, info), keep,
                                   tuple(example_input(info).shape[1:])))
    ctx.flops["pruned"] = record["flops_pruned"]
    record.update({"acc_pruned": acc_pruned,
                   "channels": {n: [kept[n], total[n]] for n in layers},
                   "phase_history": phase_history,
                   "timings": {"dense_s": dense_s, "phase_s": phase_s, "prune_s": prune_s,
                               "dense_train_s": dense_meta.get("seconds")},  # the shared dense model's training
                   "cost": {"dense": dense_cost,
                            "phase": stage_cost(phase_fits, info.num_train, run.prune_id, retrain_batch),
                            "select": scoring_cost(scoring_flops(), run.prune_id)}})
    record.update({f"jsv_pruned_{k}": v for k, v in jsv(model, probe, run).items()})
    save_checkpoint(shared.model, {"keep": keep, "model": model.state_dict(), "record": record,
                                   "prune_id": run.prune_id, "dense_id": run.dense_id})
    faults.point("pruned:saved")
    remove_checkpoint(shared.phase)
    ctx.retrain = run_recipe
    return Pruned(model, record, ctx, keep, masks)


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
        if status == "corrupt":
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
        began = time.perf_counter()
        try:
            result.update(_execute_stages(run, ws, rd, live), status="ok")
        except Diverged as err:
            log.warning("run %s diverged: %s", run.run_id, err)
            result.update(status="diverged", diverged={"phase": err.phase, "epoch": err.epoch}, error=str(err))
            result.update(err.partial)
        except UserError as err:
            result.update(status="failed", error=str(err))
            log.error("run %s failed: %s", run.run_id, err)
        except Exception as err:  # a bug or a resource problem: record it, keep the suite going
            result.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            log.error("run %s failed: %s: %s", run.run_id, type(err).__name__, err)
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
    unbudgeted = recipe  # its first stage is the trainability window of every run, budgeted or not
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
    metrics = {k: v for k, v in record.items() if k not in ("phase_history", "timings", "dense_sha256")}
    lineage = {"dense_sha256": record.get("dense_sha256")}  # None for a pruned model saved before digests

    def report(epoch: int, total: int, row: dict[str, Any]) -> None:
        if bar:
            bar(epoch, total, row)
        if live is not None:  # streams the epoch to the suite's trackers (suite key log)
            live.epoch(epoch, row)

    try:  # the epoch-end hook last: the mask hook's state keeps its place in the checkpoint
        history = fit(model, ws.data, recipe, device=ws.device, seed=run.seed, phase="retrain",
                      hooks=[*([MaskHooks(masks)] if masks else []), EpochHooks(epoch_metrics, report)],
                      optimizer=optimizer,
                      checkpoint=usable_checkpoint(rd.checkpoint, "retraining restarts from the pruned model"))
    except Diverged as err:  # keep what was measured: the JSV after pruning matters most for exactly these runs
        err.partial = {"metrics": metrics, "history": {"phase": record["phase_history"], "retrain": err.history},
                       **lineage}
        raise
    finally:
        if bar:
            bar.close()
    retrain_s = sum(row["seconds"] for row in history)
    acc_final = history[-1]["test_acc"] if history else evaluate(model, ws.data, 1000, ws.device)[1]
    metrics["acc_final"] = acc_final
    metrics["acc_best"] = max([row["test_acc"] for row in history] + [acc_final])
    metrics["acc_trainability"] = trainability_accuracy(history, unbudgeted)
    if ws.data.info.num_val:
        metrics["acc_val_final"] = history[-1]["val_acc"] if history else validation_metrics(model, ws)["val_acc"]
    if probe is not None:
        last = history[-1] if history else {}
        if "jsv_mean" in last:  # the last epoch measured this very model
            final = {k.removeprefix("jsv_"): v for k, v in last.items() if k.startswith("jsv_")}
        else:
            final = jsv(model, probe, run)
        metrics.update({f"jsv_final_{k}": v for k, v in final.items()})
    spent = sum(record["timings"][k] for k in ("dense_s", "phase_s", "prune_s")) + retrain_s  # this run's own time
    timings = dict(record["timings"], retrain_s=retrain_s, wall_s=spent)
    metrics["timings"] = timings
    cost["retrain"] = stage_cost([(history, recipe.batch_size)], ws.data.info.num_train, None,
                                 run.suite.retrain.batch_size)
    if budget is not None:
        cost["budget"] = {"steps": budget["steps"], "match": run.suite.budget.match if run.suite.budget else None,
                          "rule": budget.get("rule", "last_stage"), "spent": after_dense_steps(cost)}
    metrics["cost"] = cost
    save_checkpoint(rd.model, {"keep": keep, "model": model.state_dict(), **({"mode": "mask"} if masks else {})})
    return {"metrics": metrics, "history": {"phase": record["phase_history"], "retrain": history}, **lineage}
