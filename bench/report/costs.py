"""Cost beside accuracy in the report: what each method spent at a ratio, relative to the cheapest method there, as
a column added to a table keyed by (ratio, method), and the sentence that says an equal budget was held.

A run's cost is everything it trained (``bench.cost``): the dense model (shared, counted in full), the method's
phase, its scoring passes and retraining; epochs are epochs-equivalent (samples seen over the training set).
"""
from __future__ import annotations

import dataclasses
import math

import pandas as pd

from bench.report.tables import Table

COST_GROUP = "training cost"


def method_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ratio and method (mean over its finished runs): epochs, training FLOPs and steps after the shared dense
    model, with the extra epochs and the FLOP multiple over the cheapest method at that ratio."""
    ok = runs[runs.status == "ok"].copy()
    columns = ["ratio", "method", "epochs", "flops", "steps_after_dense", "extra_epochs", "flops_multiple"]
    if ok.empty or ok.cost_steps_total.isna().all():
        return pd.DataFrame(columns=columns)
    epochs = [pd.to_numeric(ok[f"cost_epochs_{stage}"], errors="coerce") for stage in ("dense", "phase", "retrain")]
    ok["epochs"] = sum(e.fillna(0.0) for e in epochs)
    ok["flops"] = pd.to_numeric(ok.cost_flops_total, errors="coerce")
    ok["steps_after_dense"] = pd.to_numeric(ok.cost_steps_after_dense, errors="coerce")
    means = ok.groupby(["ratio", "method"], sort=False)[["epochs", "flops", "steps_after_dense"]].mean().reset_index()
    by_flops = means.flops.notna().groupby(means.ratio).transform("all")
    cost = means.flops.where(by_flops, means.epochs)
    cheapest = cost.groupby(means.ratio).transform("idxmin")
    means["extra_epochs"] = means.epochs - means.epochs[cheapest].to_numpy()
    means["flops_multiple"] = means.flops / means.flops[cheapest].to_numpy()
    return means[columns]


def cost_text(extra_epochs: float, multiple: float) -> str:
    """'cheapest', or e.g. '+282 epochs, 2.3× training FLOPs' (epochs-equivalent; FLOPs as a multiple)."""
    if math.isnan(extra_epochs):
        return ""
    if abs(extra_epochs) < 0.05 and (math.isnan(multiple) or abs(multiple - 1) < 0.005):
        return "cheapest"
    flops = "" if math.isnan(multiple) else f", {multiple:.2g}× training FLOPs"
    return f"{extra_epochs:+.3g} epochs{flops}"


def budget_sentence(runs: pd.DataFrame) -> str:
    """What the report says about an equal budget: the budget and whom it matched, and whether the finished runs
    spent exactly it; empty without a budget."""
    ok = runs[runs.status == "ok"]
    budgets = pd.to_numeric(ok.budget_steps, errors="coerce").dropna().unique()
    if len(budgets) == 0:
        return ""
    matched = sorted(set(ok.budget_match.dropna().astype(str)))
    spent = pd.to_numeric(ok.cost_steps_after_dense, errors="coerce")
    held = len(budgets) == 1 and bool((spent.round() == budgets[0]).all())
    whom = f", matched to {', '.join(matched)}'s own spend" if matched else ""
    numbers = ", ".join(f"{b:,.0f}" for b in sorted(budgets))
    rules = set(ok.budget_rule.dropna().astype(str)) if "budget_rule" in ok else set()
    how = ("their LR schedule stretched in proportion, milestones scaled" if rules == {"stretch"} else
           "extra epochs at the schedule's last stage")
    if held:
        return (f"Equal budget: every method trained exactly {numbers} SGD steps (at the retraining batch size) after "
                f"the shared dense model{whom}; methods that spend less retrain longer ({how}).")
    return (f"Budget {numbers} SGD steps after the shared dense model{whom}, but the runs spent "
            f"{spent.min():,.0f} to {spent.max():,.0f}: the budget was not held.")


def with_cost(table: Table, runs: pd.DataFrame) -> Table:
    """``table`` (rows keyed by ratio and method in its first two columns) with each method's extra cost over the
    cheapest method at that ratio, its numbers in the CSV, and the equal-budget sentence in its note."""
    costs = method_costs(runs)
    if costs.empty:
        return table
    lookup = {(c.ratio, c.method): c for c in costs.itertuples()}
    rows = []
    for row in table.rows:
        c = lookup.get((row[0], row[1]))
        rows.append([*row, cost_text(c.extra_epochs, c.flops_multiple) if c is not None else ""])
    data = table.data
    if not data.empty and {"ratio", "method"} <= set(data.columns):
        data = data.merge(costs.rename(columns={"epochs": "cost_epochs", "flops": "cost_flops",
                                                "steps_after_dense": "cost_steps_after_dense"}),
                          on=["ratio", "method"], how="left")
    note = (f"{table.note} Training cost: a run's epochs (dense model, the method's phase and retraining; "
            "epochs-equivalent) and training FLOPs (counted per step with FlopCounterMode, the regulariser's own "
            "included), over the cheapest method at that ratio. " + budget_sentence(runs)).strip()
    return dataclasses.replace(table, header=[*table.header, (COST_GROUP, "vs cheapest")], rows=rows, data=data,
                               note=note)
