"""The pruned model a run retrains: its method's phases, the selection, the removal (or masks), measured, and shared
by the runs that differ only in the retraining LR (``pruned.pt`` under ``_pruned/``)."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from bench.core import faults
from bench.core.errors import CheckpointError
from bench.core.store import PrunedDir, making, remove_checkpoint, save_checkpoint
from bench.method import Method, RunContext
from bench.pipeline.dense import MAKE_ATTEMPTS, load_shared, obtain_dense, usable_checkpoint
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
from bench.pruning.groups import GroupPlan, group_sizes, slim_groups
from bench.pruning.masking import apply_masks_, parameter_masks, removal_cost
from bench.suite.cost import recipe_budget_steps, scoring_cost, stage_cost
from bench.suite.grid import Run
from bench.training.hooks import EpochHooks
from bench.training.measure import counting_flops
from bench.training.train import derive_seed, evaluate, fit, make_optimizer


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
