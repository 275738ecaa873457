"""What a run spent, stage by stage, and the equal-budget rule that extends a cheaper method's retraining.

A run's stages are ``dense`` (the dense model's training: shared by every run with its dense id, the method's own
when it changes dense training), ``phase`` (the method's training between dense model and selection), ``select``
(scoring passes: no SGD step, their FLOPs) and ``retrain``. Each records SGD steps, samples, epochs-equivalent
(samples over the training set), training FLOPs (``bench.train.StepFlops``) and whether it is shared with other
runs (counted in every run that uses it; the report also amortises it). Its seconds are in the result's
``timings``, apart, since they differ between executions.

A budget counts SGD steps at the retraining batch size after the shared dense model: a stage's steps count
``batch_size / retrain batch size`` each. By the default rule
(``budget.rule: last_stage``) a method that spends less than the budget retrains longer: extra epochs at the
schedule's last stage (a step schedule keeps its milestones; a cosine one is stretched over the longer run), stopped
by a step limit exactly at the budget; one that spends more retrains less, stopped at the budget. ``stretch``
scales a step or piecewise schedule's milestones by the retraining steps left over the recipe's own instead, so
the extra (or missing) steps are spread over every LR stage in proportion rather than spent at (or cut from) the
last, smallest LR.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

from bench.core.config import Suite
from bench.core.errors import ConfigError, UserError
from bench.method import Method, with_dense_variants
from bench.training.train import Recipe, recipe_steps, section_recipe

STAGES = ("dense", "phase", "select", "retrain")


def stage_cost(fits: Iterable[tuple[list[dict[str, Any]], int]], num_train: int, shared: str | None,
               retrain_batch: int, **extra: Any) -> dict[str, Any]:
    """One stage's cost from its fits' histories, each with its batch size (``fit`` rows carry cumulative steps,
    samples and FLOPs); ``shared``: the id of what other runs share it by (``dense_id``, ``prune_id``), or None."""
    steps = samples = flops = 0
    budget = 0.0
    for history, batch_size in fits:
        if not history:
            continue
        last = history[-1]
        steps += last["step"]
        budget += last["step"] * batch_size / retrain_batch
        samples = None if samples is None or last.get("samples") is None else samples + last["samples"]
        flops = None if flops is None or last.get("flops") is None else flops + last["flops"]
    return {"steps": steps, "budget_steps": round(budget, 6), "samples": samples,
            "epochs": None if samples is None else round(samples / max(num_train, 1), 6), "flops": flops,
            "shared": shared, **extra}


def scoring_cost(flops: int, shared: str | None) -> dict[str, Any]:
    """The cost of a stage without SGD steps (selection's scoring passes)."""
    return {"steps": 0, "budget_steps": 0.0, "samples": 0, "epochs": 0.0, "flops": flops, "shared": shared}


def after_dense_steps(cost: dict[str, dict[str, Any]]) -> float:
    """SGD steps at the retraining batch size a run spent after the shared dense model: its phase and retraining,
    and the steps of its own dense training beyond the shared recipe's (``own_beyond_shared``, 0 when the method
    trains its own dense model with the suite's recipe, as every shipped method does)."""
    dense = cost.get("dense") or {}
    own = dense.get("own_beyond_shared", 0.0) if dense.get("own") else 0.0
    return own + sum((cost.get(stage) or {}).get("budget_steps", 0.0) for stage in ("phase", "retrain"))


def budgeted(recipe: Recipe, budget: int, spent: float, steps_per_epoch: int, label: str,
             rule: str = "last_stage", retrain_batch: int | None = None) -> Recipe:
    """The retraining recipe that ends the run's training at ``budget`` steps (at the suite's retraining batch size,
    ``retrain_batch``; to the nearest step where ``recipe`` trains at another batch size, as Scratch does) after the
    shared dense model, ``spent`` of them already spent (the phase), with a step limit there. ``last_stage``: more
    epochs at the schedule's last stage (or the run cut short); ``stretch``: the milestones scaled by the retraining
    steps left over the recipe's own, so each LR stage keeps its share of the run."""
    left = budget - round(spent)
    if left < 0:
        raise UserError(f"budget: {label} spends {spent:g} steps before retraining, more than the budget of {budget}; "
                        "raise budget.steps or match a method that spends more.")
    if left == 0:
        return dataclasses.replace(recipe, epochs=0, max_steps=None)
    if retrain_batch is not None and retrain_batch != recipe.batch_size:
        left = max(1, round(left * retrain_batch / recipe.batch_size))  # this recipe's steps
    per_epoch = max(steps_per_epoch, 1)
    if rule == "stretch":
        own = recipe_steps(recipe, lambda _batch: per_epoch)
        if own == left:
            return dataclasses.replace(recipe, max_steps=left)
        factor = left / max(own, 1)
        milestones: list[int] = []
        for m in recipe.schedule.milestones:  # halves round up; every stage keeps at least one epoch
            milestones.append(max(1, math.floor(m * factor + 0.5), milestones[-1] + 1 if milestones else 1))
        schedule = dataclasses.replace(recipe.schedule, milestones=milestones)
        return dataclasses.replace(recipe, epochs=math.ceil(left / per_epoch), max_steps=left, schedule=schedule)
    epochs = max(recipe.epochs, math.ceil(left / per_epoch))
    return dataclasses.replace(recipe, epochs=epochs, max_steps=left)


# The wall-clock seconds of each stage, in result.json's timings (kept apart: they differ between executions).
STAGE_SECONDS = {"dense": "dense_train_s", "phase": "phase_s", "select": "prune_s", "retrain": "retrain_s"}


def flat_columns(cost: dict[str, Any], timings: dict[str, Any]) -> dict[str, float | None]:
    """runs.csv's cost columns: ``cost_<quantity>_<stage>`` for each stage (seconds from ``timings``), and the
    totals of steps and FLOPs."""
    row: dict[str, float | None] = {}
    for stage in STAGES:
        entry = dict(cost.get(stage) or {}, seconds=timings.get(STAGE_SECONDS[stage]))
        for quantity in ("steps", "epochs", "flops", "seconds"):
            value = entry.get(quantity)
            row[f"cost_{quantity}_{stage}"] = None if value is None or isinstance(value, bool) else float(value)
        row[f"cost_shared_{stage}"] = entry.get("shared")
    flops = [row[f"cost_flops_{stage}"] for stage in STAGES]
    row["cost_flops_total"] = None if any(v is None for v in flops) else sum(flops)  # type: ignore[arg-type]
    row["cost_steps_total"] = sum(row[f"cost_steps_{stage}"] or 0.0 for stage in STAGES)
    row["cost_steps_after_dense"] = after_dense_steps(cost) if cost else None
    budget = cost.get("budget") or {}
    row["budget_steps"] = budget.get("steps")
    row["budget_match"] = budget.get("match")
    row["budget_rule"] = budget.get("rule", "last_stage") if budget else None
    return row


def recipe_budget_steps(recipe: Recipe, retrain_batch: int, steps_per_epoch: Callable[[int], int]) -> float:
    """A recipe's SGD steps (its step limit, or its epochs of batches) at the retraining batch size."""
    return recipe_steps(recipe, steps_per_epoch) * recipe.batch_size / retrain_batch


def resolve_budget(suite: Suite, specs: list[Any], steps_per_epoch: Callable[[int], int]) -> int | None:
    """The suite's budget in steps: ``steps`` as given, or ``match``'s spend after the shared dense model (its own
    dense training beyond the shared recipe's, its phases at the retraining batch size and the suite's retraining),
    so a run's id holds only the number."""
    budget = suite.budget
    if budget is None or budget.steps is not None:
        return None if budget is None else budget.steps
    spec = next((s for s in specs if s.label == budget.match), None)
    if spec is None:
        raise ConfigError(f"budget.match: '{budget.match}' is not a method of the suite "
                          f"({', '.join(s.label for s in specs)}); name one of them or give budget.steps.")
    dense = section_recipe(suite.pretrain, suite.pretrain.lr, suite.performance)
    retrain = section_recipe(suite.retrain, suite.retrain.lr[0], suite.performance)
    spent = recipe_steps(retrain, steps_per_epoch)
    methods = spec.build()
    own = with_dense_variants(dense, methods)
    if any(m.dense_variant() is not None for m in methods) and not suite.pretrain.checkpoint:
        # as the runner counts it (``own_beyond_shared``): negative when the method's dense training is shorter
        spent += (recipe_budget_steps(own, retrain.batch_size, steps_per_epoch)
                  - recipe_budget_steps(dense, retrain.batch_size, steps_per_epoch))
    for method in methods:
        if type(method).retrain_recipe is not Method.retrain_recipe:
            raise ConfigError(f"budget.match: '{spec.label}' changes its own retraining recipe, so its spend is not "
                              "known before it runs; give budget.steps instead.")
        try:
            phase = method.phase_steps(own, retrain, steps_per_epoch)  # the phase sees the method's own dense recipe
        except NotImplementedError as err:
            raise ConfigError(f"budget.match: {err}; give budget.steps instead.") from None
        if phase is not None:
            spent += phase[0] * phase[1] / retrain.batch_size
    return round(spent)
