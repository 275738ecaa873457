"""Which runs of a suite retrain as one fused group (bench.training.fused), which of its dense models train as one,
and why the others do not.

Fusion is an execution detail: it never enters a run id. The plan here is made from the runs alone, before any
model exists; the executor checks again on the pruned models (their layer widths, the recipes the methods made,
the hooks) and trains apart whatever does not match (bench.pipeline.fusion). Dense models that differ only in
the seed train as one fused group likewise (bench.pipeline.dense_fusion), under the same ``execution.fuse`` rule.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bench.method import Method
from bench.suite.grid import Run, ratio_label
from bench.training.fused import step_hooks

FuseMode = Literal["auto", "on", "off"]

#: The model family ``fuse: auto`` fuses: where benchmarks/perf.py --sections fusion measured fusion to pay on
#: 2 CPU cores (docs/fusion.md). Convolutional models fuse only with ``fuse: on``.
AUTO_MODELS = ("mlp7_linear", "mlp7_relu")


@dataclass
class FusionPlan:
    """Groups of two or more runs that retrain as one fused model, and the reason each other run trains alone."""

    groups: list[list[Run]] = field(default_factory=list)
    alone: dict[str, str] = field(default_factory=dict)

    def chunked(self, keyed: dict[str, list[Run]], ident: Callable[[Run], str], lone: str) -> FusionPlan:
        """This plan with each key's runs added as groups of at most ``execution.max_members``; a run left alone
        by the split is recorded under ``ident(run)`` with the reason ``lone``."""
        for members in keyed.values():
            size = members[0].suite.execution.max_members
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                if len(chunk) > 1:
                    self.groups.append(chunk)
                else:
                    self.alone[ident(chunk[0])] = lone
        return self

    def tasks(self, runs: list[Run]) -> list[list[Run]]:
        """``runs`` as executor tasks: each fused group (its members among ``runs``) once, every other run alone."""
        wanted = {r.run_id for r in runs}
        tasks, grouped = [], set()
        for group in self.groups:
            members = [r for r in group if r.run_id in wanted]
            if members:
                tasks.append(members)
                grouped.update(r.run_id for r in members)
        return tasks + [[r] for r in runs if r.run_id not in grouped]


def overrides(method: Method, name: str) -> bool:
    """Whether ``method``'s class overrides the ``Method`` hook ``name``."""
    return getattr(type(method), name) is not getattr(Method, name)


def why_alone(run: Run, mode: FuseMode) -> str | None:
    """Why ``run`` cannot join a fused group under ``mode``, or None when it may."""
    suite = run.suite
    if mode == "off":
        return "execution.fuse is off"
    if mode == "auto" and suite.model not in AUTO_MODELS:
        return (f"execution.fuse: auto fuses only {', '.join(AUTO_MODELS)} (where measured to pay); "
                "'on' fuses this model too")
    if suite.prune.mode == "mask":
        return "prune.mode: mask (the masks are re-applied after every step: not fused)"
    if not suite.performance.is_default():
        return "performance options (amp, channels_last, compile, fused_optimizer) are not fused"
    for method in run.method.build():
        if overrides(method, "retrain_param_groups"):
            return f"{type(method).__name__} gives retraining its own param groups (per-method LRs are not fused)"
    return None


def group_key(run: Run) -> str:
    """Runs with one key have one architecture and recipe apart from the LR (and the seed, and the method where
    neither changes the retraining): the same ratio under layerwise selection."""
    key: dict[str, object] = {"ratio": ratio_label(run.ratio), "retrain": {k: v for k, v in run.key["retrain"].items()
                                                                           if k != "lr"}}
    methods = run.method.build()
    if run.suite.prune.scope == "global" or "budget" in run.key or any(
            overrides(m, "retrain_recipe") for m in methods):
        key["method"] = run.method.label  # widths (global ranking) or the recipe may differ between methods
    if run.suite.prune.scope == "global":
        key["seed"] = run.seed  # ... and between seeds
    return json.dumps(key, sort_keys=True, default=str)


def plan_fusion(runs: list[Run], mode: FuseMode | None = None) -> FusionPlan:
    """Group ``runs`` (one suite's) for fused retraining; ``mode`` (``run --fuse``) overrides the suite's
    ``execution.fuse``; groups hold at most ``execution.max_members`` runs."""
    plan = FusionPlan()
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        reason = why_alone(run, mode or run.suite.execution.fuse)
        if reason is not None:
            plan.alone[run.run_id] = reason
        else:
            keyed.setdefault(group_key(run), []).append(run)
    return plan.chunked(keyed, lambda run: run.run_id, "no other run shares its architecture and retraining recipe")


def dense_why_alone(run: Run, mode: FuseMode) -> str | None:
    """Why ``run``'s dense model cannot train in a fused group under ``mode``, or None when it may: the rule of
    retraining (``why_alone``) where it applies to dense training, and nothing the fused step cannot run."""
    suite = run.suite
    if mode == "off":
        return why_alone(run, mode)
    if mode == "auto":  # benchmarks/perf.py --sections fusion: fair_mlp's 5 dense models 0.79-1.14x fused on 2 cores
        return "execution.fuse: auto does not fuse dense training (measured no faster); 'on' fuses it"
    if suite.pretrain.checkpoint:
        return "loaded from pretrain.checkpoint (not trained)"
    if suite.pretrain.epochs == 0:
        return "pretrain.epochs is 0 (not trained)"
    if not suite.performance.is_default():
        return "performance options (amp, channels_last, compile, fused_optimizer) are not fused"
    for method in run.method.build():
        variant = method.dense_variant()
        if variant is not None and variant.param_groups is not None:
            return f"{type(method).__name__}'s dense variant has its own param groups (not fused)"
        if variant is not None and (hooks := step_hooks(variant.hooks)):
            return f"{type(method).__name__}'s dense variant has a hook inside the step ({', '.join(hooks)})"
    return None


def plan_dense_fusion(runs: list[Run], mode: FuseMode | None = None) -> FusionPlan:
    """Group the dense models of ``runs`` (one suite's) for fused dense training: those that differ only in the seed
    (their dense keys but for it are equal), at most ``execution.max_members`` per group. A group holds one run
    per dense model; ``alone`` is keyed by dense id."""
    models: dict[str, Run] = {}
    for run in runs:
        models.setdefault(run.dense_id, run)
    plan = FusionPlan()
    keyed: dict[str, list[Run]] = {}
    for dense_id, run in models.items():
        reason = dense_why_alone(run, mode or run.suite.execution.fuse)
        if reason is not None:
            plan.alone[dense_id] = reason
        else:
            key = json.dumps({k: v for k, v in run.dense_key.items() if k != "seed"}, sort_keys=True, default=str)
            keyed.setdefault(key, []).append(run)
    return plan.chunked(keyed, lambda run: run.dense_id, "no other dense model differs from it only in the seed")


def dense_tasks(runs: list[Run], mode: FuseMode | None = None) -> list[list[Run]]:
    """The dense models of ``runs`` as executor tasks (one run per dense model): each fused group once, every other
    dense model alone."""
    plan = plan_dense_fusion(runs, mode)
    grouped = {r.dense_id for group in plan.groups for r in group}
    alone: dict[str, Run] = {}
    for run in runs:
        if run.dense_id not in grouped:
            alone.setdefault(run.dense_id, run)
    return plan.groups + [[r] for r in alone.values()]


def plan_lines(runs: list[Run]) -> list[str]:
    """``plan``'s account of fused retraining: each group that will fuse, and why the other runs train alone."""
    if not runs:
        return []
    execution = runs[0].suite.execution
    fusion = plan_fusion(runs)
    lines = [f"fused retraining (execution.fuse: {execution.fuse}, max_members: {execution.max_members}): "
             f"{len(fusion.groups)} groups, {len(fusion.alone)} runs alone"]
    for i, group in enumerate(fusion.groups, 1):
        d = [r.describe() for r in group]
        values = {k: ", ".join(dict.fromkeys(f"{x[k]:g}" if k == "lr" else str(x[k]) for x in d))
                  for k in ("method", "ratio", "lr", "seed")}
        lines.append(f"  group {i}: {len(group)} runs (methods {values['method']}; ratio {values['ratio']}; "
                     f"lr {values['lr']}; seeds {values['seed']})")
    for reason, n in Counter(fusion.alone.values()).most_common():
        lines.append(f"  alone ({n} runs): {reason}")
    if fusion.groups:
        lines.append("  (members whose pruned models turn out to differ in layer widths or recipe retrain apart)")
    return lines + dense_plan_lines(runs)


def dense_plan_lines(runs: list[Run]) -> list[str]:
    """``plan``'s account of fused dense training: each group of dense models that trains as one, and why the
    others train alone."""
    execution = runs[0].suite.execution
    dense = plan_dense_fusion(runs)
    lines = [f"fused dense training (execution.fuse: {execution.fuse}, max_members: {execution.max_members}): "
             f"{len(dense.groups)} groups, {len(dense.alone)} dense models alone"]
    for i, group in enumerate(dense.groups, 1):
        lines.append(f"  dense group {i}: {len(group)} dense models (seeds {', '.join(str(r.seed) for r in group)})")
    for reason, n in Counter(dense.alone.values()).most_common():
        lines.append(f"  alone ({n} dense models): {reason}")
    if dense.groups:
        lines.append("  (made ones are skipped; members that turn out to differ in layer widths or recipe train apart)")
    return lines
