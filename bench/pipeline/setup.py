"""What a run is built from: its workspace, model, layers, pruning target and group plan, and its recipes."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core import environment
from bench.core.errors import CheckpointError, ConfigError
from bench.core.progress import Progress
from bench.core.registry import MODELS
from bench.core.store import (
    CorruptFileError,
    load_checkpoint,
)
from bench.method import Method, PruneTarget, refuse_groups, with_dense_variants
from bench.models import ModelEntry
from bench.models.init import initialise_
from bench.pruning import PruningError, layer_ratios, prunable_layers
from bench.pruning import select_layers as named_layers
from bench.pruning.groups import GroupPlan, plan_groups
from bench.suite.grid import Run, resolve_path
from bench.training.train import (
    Recipe,
    derive_seed,
    section_recipe,
)

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """What every run of a suite shares in one process: where results go, the data and the device."""

    results: Path
    data: Any
    device: torch.device
    suite_dir: Path | None = None
    progress: Progress | None = None
    reads: environment.Reads = dataclasses.field(default_factory=environment.Reads)  # what building the data read
    data_root: Path | None = None  # the root the data came from (None: none given, the dataset's default location)
    # dense id -> the error (a Diverged, say) of its fused dense training in this process (bench.pipeline.dense_fusion):
    # a run that needs that dense model records it, as it would its own dense training's; the next `run` tries again
    dense_failed: dict[str, Exception] = dataclasses.field(default_factory=dict)


def model_entry(run_or_name: Run | str) -> ModelEntry:
    name = run_or_name if isinstance(run_or_name, str) else run_or_name.suite.model
    return MODELS.get(name)


def new_model(run: Run, info: Any, methods: list[Method]) -> nn.Module:
    """The dense architecture with its seeded initialisation (``pretrain.init``) and the methods' dense variants
    applied."""
    torch.manual_seed(derive_seed(run.seed, "init"))
    model = model_entry(run).build(num_classes=info.num_classes, in_channels=info.in_channels)
    initialise_(model, run.suite.pretrain.init)
    for variant in (m.dense_variant() for m in methods):
        if variant is not None and variant.prepare is not None:
            model = variant.prepare(model)
    return model


def select_layers(model: nn.Module, run: Run) -> list[str]:
    """The prunable layers the suite names (or the model's usual ones); unmatched patterns are errors."""
    entry = model_entry(run)
    prune = run.suite.prune
    skip = prune.skip if prune.skip is not None else ([] if prune.layers is not None else list(entry.default_skip))
    layers = named_layers(model, run.suite.model, prune.layers, prune.skip, entry.default_layers,
                                   entry.default_skip)
    if isinstance(run.ratio, dict):
        unused = [p for p in run.ratio if not prunable_layers(model, [p], skip) or
                  not set(prunable_layers(model, [p], skip)) & set(layers)]
        if unused:
            raise ConfigError(f"prune.ratios: profile patterns {', '.join(map(repr, unused))} match none of the "
                              f"pruned layers ({', '.join(layers[:4])}, ...).")
    return layers


def prune_target(run: Run, plan: GroupPlan) -> PruneTarget:
    """The run's target: one entry per group (named by its leader), with the ratio of the leader's pattern."""
    prune = run.suite.prune
    layers = plan.leaders
    ratios = layer_ratios(layers, run.ratio) if prune.scope == "layerwise" else {n: float(run.ratio) for n in layers}
    return PruneTarget(layers=layers, ratios=ratios, scope=prune.scope, min_keep=prune.min_keep,
                       count_rule=prune.count_rule, groups=dict(plan.groups), floor_fraction=prune.floor_fraction,
                       floor_keeps=prune.floor_keeps)


def group_plan(model: nn.Module, run: Run, info: Any) -> GroupPlan:
    """The channel groups of the suite's layers on ``model``; a layer that cannot be pruned is a ConfigError."""
    try:
        return plan_groups(model, example_input(info), select_layers(model, run), mask=masking(run))
    except PruningError as err:
        raise ConfigError(f"prune.layers: {err}") from None


def masking(run: Run) -> bool:
    """Whether the run masks its pruned channels (``prune.mode: mask``) instead of removing them."""
    return run.suite.prune.mode == "mask"


def example_input(info: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(1, info.in_channels, info.image_size, info.image_size, device=device)


def validate_runs(runs: list[Run], info: Any, suite_dir: Path | None = None) -> None:
    """Check, before any work, that each run's layers exist and can be removed physically, and that a
    user-supplied dense checkpoint loads into the model."""
    checked: set[tuple[str, str]] = set()
    probe = runs[0].suite.trainability if runs else None
    if probe is not None and probe.enabled and probe.samples > info.num_train:
        raise ConfigError(f"trainability.samples: {probe.samples} probe samples asked for, but the training set "
                          f"has {info.num_train}; use at most {info.num_train}.")
    expected = runs[0].dense_key.get("data_source") if runs else info.source
    if expected != info.source:
        raise ConfigError(f"dataset: the run ids were computed for {expected or 'the full data'}, but the data loaded "
                          f"are {info.source or 'the full set'} (files changed under the data root meanwhile?); "
                          "run the command again.")
    if runs and runs[0].suite.pretrain.checkpoint:
        model = new_model(runs[0], info, [])
        load_user_checkpoint(model, resolve_path(runs[0].suite.pretrain.checkpoint, suite_dir))
    for run in runs:
        key = (run.method.label, str(run.ratio))
        if key in checked:
            continue
        checked.add(key)
        methods = run.method.build()
        if run.suite.pretrain.checkpoint and any(m.dense_variant() is not None for m in methods):
            raise ConfigError(f"methods: '{run.method.label}' trains its own dense model (its dense variant changes "
                              "dense training), which pretrain.checkpoint cannot provide: the checkpoint was not "
                              "trained that way. Drop pretrain.checkpoint (give a training recipe) or run this "
                              "method in a suite of its own.")
        dense_recipe(run, methods)  # a variant that cannot change this recipe says so now, before any work
        model = new_model(run, info, methods)
        target = prune_target(run, group_plan(model, run, info))
        for method in methods:
            refuse_groups(method, target)
            if masking(run) and type(method).after_slim is not Method.after_slim:
                raise ConfigError(f"methods: '{run.method.label}' changes the model after removal "
                                  f"({getattr(method, 'name', type(method).__name__)}.after_slim), which a masked "
                                  "model does not go through; use prune.mode: remove for it.")
            method.check(model, target, tuple(example_input(info).shape))


def dense_recipe(run: Run, methods: Sequence[Method] = ()) -> Recipe:
    """The suite's pretrain recipe, as the methods' dense variants change it (their own schedule, say)."""
    shared = section_recipe(run.suite.pretrain, run.suite.pretrain.lr, run.suite.performance)
    return with_dense_variants(shared, methods)


def retrain_recipe(run: Run) -> Recipe:
    return section_recipe(run.suite.retrain, run.lr, run.suite.performance)


def suite_performance(recipe: Recipe, run: Run) -> Recipe:
    """``recipe`` with the suite's speed options: they enter the run id, so every phase trains with them, whatever
    recipe a method built (TPP's 110,001-step phase ran fp32, NCHW and uncompiled before this was enforced)."""
    return dataclasses.replace(recipe, performance=run.suite.performance)


def load_user_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a user's dense state_dict (plain, or wrapped in 'state_dict'/'model'; 'module.' prefixes dropped)."""
    try:
        state = load_checkpoint(path)
    except CorruptFileError as err:  # the user's own file: "delete it or run verify --fix" would be wrong advice
        raise CheckpointError(f"pretrain.checkpoint '{path}' cannot be loaded ({err.problem}). It is your file, not "
                              "one the harness made: check that it is complete (its size and sha256 as where it came "
                              "from) and that it was saved with torch.save as a dict of tensors (a state_dict), then "
                              "give its path in pretrain.checkpoint.") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise CheckpointError(f"pretrain.checkpoint '{path}' does not fit this model: {' '.join(first)} "
                              "Check the suite's model and dataset (number of classes).") from None
