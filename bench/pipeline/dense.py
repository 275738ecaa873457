"""The dense model a run starts from: shared between runs, made once under a lock, trained from scratch or loaded
from a user's checkpoint, resumable, and moved aside and made again when found corrupt."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core import distributed
from bench.core.errors import CheckpointError
from bench.core.store import (
    CorruptFileError,
    DenseDir,
    PrunedDir,
    file_lock,
    load_checkpoint,
    load_with_digest,
    making,
    move_aside,
    read_json,
    remove_checkpoint,
    save_checkpoint,
    write_json,
)
from bench.method import Method
from bench.pipeline.metrics import validation_metrics
from bench.pipeline.setup import Workspace, dense_recipe, load_user_checkpoint, new_model
from bench.suite.grid import Run, resolve_path
from bench.training.hooks import BaseHooks, EpochHooks, TrainHooks
from bench.training.train import Diverged, Recipe, evaluate, fit, make_optimizer

log = logging.getLogger(__name__)


MAKE_ATTEMPTS = 3  # a shared model found corrupt is made again; one still corrupt after that is a disk problem


def obtain_dense(run: Run, ws: Workspace, methods: list[Method]) -> tuple[nn.Module, dict[str, Any]]:
    """The dense model of a run: loaded from the cache, or trained once (other processes wait on the lock); a
    corrupt cached model is moved aside and trained again. The returned record holds its ``sha256``."""
    dense = DenseDir(ws.results, run.dense_id)
    for _ in range(MAKE_ATTEMPTS):
        model = new_model(run, ws.data.info, methods)  # afresh: an attempt that found its model corrupt trained this
        with making(dense) as here:
            if here:
                if (err := ws.dense_failed.get(run.dense_id)) is not None:  # its fused group's, as if its own
                    raise Diverged(err.phase, err.epoch, err.history) if isinstance(err, Diverged) else err
                train_dense(run, ws, methods, model, dense)
        loaded = load_shared(dense)
        if loaded is not None:
            model.load_state_dict(loaded[0]["model"])
            return model.to(ws.device), {**read_json(dense.meta), "sha256": loaded[1]}
    raise CheckpointError(f"the dense model '{dense.model}' was made again but is still unreadable; check the disk.")


def load_shared(cache: DenseDir | PrunedDir) -> tuple[dict[str, Any], str] | None:
    """A cached model's state and sha256, or None when it was corrupt: then it is moved aside (under the cache's
    lock, unless another process made it again meanwhile) with a warning, for the caller to make it again."""
    try:
        return load_with_digest(cache.model)
    except CorruptFileError:
        pass
    except CheckpointError:  # gone since it was found made: another process found it corrupt and moved it aside
        return None
    with file_lock(cache.lock, blocking=True):
        try:
            return load_with_digest(cache.model)  # made again by another process while we waited for the lock
        except CorruptFileError as err:
            problem = err.problem
        except CheckpointError:  # moved aside by another process, which has not made it again yet
            return None
        target = move_aside(cache.model)
    log.warning("%s was corrupt (%s): moved aside to %s; making it again", cache.model, problem, target)
    return None


def usable_checkpoint(path: Path, restart: str) -> Path:
    """A stage's resumable checkpoint ``path``; when it exists but is corrupt it is moved aside with a warning and the
    stage restarts (``restart``: from where, in words). Call holding the stage's lock."""
    if not distributed.agree(path.exists()):
        return path
    try:
        load_checkpoint(path)
    except CorruptFileError as err:
        target = move_aside(path)
        log.warning("%s was corrupt (%s): moved aside to %s; %s", path, err.problem, target, restart)
    return path


class BestCheckpoint(BaseHooks):
    """The weights of the dense epoch with the highest ``metric`` (``test_acc`` or ``val_acc``; the first on ties).

    A hook without step work: ``measure(model)``, when given, adds the metric's entries to every epoch's row (the
    validation split's, which ``fit`` does not evaluate itself); each finished row is ``offer``ed. Its state rides in
    ``fit``'s checkpoint, so a resumed dense training still knows the best epoch before the kill."""

    def __init__(self, metric: str, measure: Callable[[nn.Module], dict[str, Any]] | None = None) -> None:
        self.metric, self.epoch, self.score, self.measure = metric, 0, -math.inf, measure
        self.weights: dict[str, torch.Tensor] | None = None

    def offer(self, model: nn.Module, epoch: int, row: dict[str, Any]) -> None:
        if row[self.metric] > self.score:
            self.epoch, self.score = epoch, row[self.metric]
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def epoch_metrics(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        return self.measure(model) if self.measure is not None else {}

    def after_epoch(self, model: nn.Module, epoch: int, total: int, row: dict[str, Any]) -> None:
        self.offer(model, epoch, row)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.score, self.weights = state["epoch"], state["score"], state["weights"]


@dataclass
class DenseTraining:
    """A dense model ready to train (or loaded from the user's checkpoint: then ``recipe`` is None), with its hooks and
    optimizer, and what finishing it writes: the same for a separate training (``train_dense``) and a member of a
    fused group (bench.pipeline.dense_fusion)."""

    run: Run
    ws: Workspace
    model: nn.Module
    dense: DenseDir
    recipe: Recipe | None
    hooks: list[TrainHooks]
    optimizer: torch.optim.Optimizer | None  # a dense variant's own param groups; None: the recipe's SGD
    best: BestCheckpoint | None  # pretrain.best_on's epoch-end hook
    close: Callable[[], None]  # the progress bar's end
    began: float = field(default_factory=time.perf_counter)

    def checkpoint(self) -> Path:
        """Its resumable checkpoint (moved aside, with a warning, when corrupt). Call holding its lock."""
        return usable_checkpoint(self.dense.checkpoint, "dense training restarts")

    def finish(self, history: list[dict[str, Any]], seconds: float | None = None,
               extra: dict[str, Any] | None = None) -> None:
        """Choose the epoch (the last, or the best by ``pretrain.best_on``), save the model, write ``dense.json``
        (``seconds``: the training's own time, else the time since this was prepared; ``extra`` entries added) and
        remove the checkpoint."""
        run, ws, model, dense, best = self.run, self.ws, self.model, self.dense, self.best
        finishing = time.perf_counter()
        best_on = run.suite.pretrain.best_on
        # Which epoch's weights are pruned: the last one, or the best one by pretrain.best_on.
        chosen = {"best_on": best_on if best is not None and best.weights is not None else "final",
                  "epoch": len(history), "epochs": len(history)}
        if best is not None and chosen["best_on"] != "final":
            model.load_state_dict(best.weights)
            chosen["epoch"] = best.epoch
        model.to(ws.device)
        # The chosen epoch already evaluated this very model; evaluate only when nothing was trained here.
        acc = history[chosen["epoch"] - 1]["test_acc"] if history else evaluate(model, ws.data, 1000, ws.device)[1]
        save_checkpoint(dense.model, {"model": model.state_dict()})
        # The images it trained on: the training set less any validation split (none when loaded from a checkpoint).
        trained_on = None if run.suite.pretrain.checkpoint else ws.data.info.num_train
        spent = time.perf_counter() - self.began if seconds is None else seconds + time.perf_counter() - finishing
        write_json(dense.meta, {"dense_id": run.dense_id, "key": run.dense_key, "acc": acc, "checkpoint": chosen,
                                "history": history, "num_train": trained_on, "seconds": spent, **(extra or {})})
        remove_checkpoint(dense.checkpoint)
        log.info("dense model %s: test accuracy %.4f (%s checkpoint, epoch %d of %d)", run.dense_id, acc,
                 chosen["best_on"], chosen["epoch"], chosen["epochs"])


def prepare_dense(run: Run, ws: Workspace, methods: list[Method], model: nn.Module, dense: DenseDir,
                  label: str | None = None) -> DenseTraining:
    """The run's dense model (``model``, fresh) ready to train: its recipe, the dense variants' hooks and param
    groups, pretrain.best_on's hook and a progress bar (``label``; when ``ws`` has progress); or loaded from
    ``pretrain.checkpoint``, with nothing to train."""
    began = time.perf_counter()
    if run.suite.pretrain.checkpoint:
        load_user_checkpoint(model, resolve_path(run.suite.pretrain.checkpoint, ws.suite_dir))
        return DenseTraining(run, ws, model, dense, None, [], None, None, lambda: None, began)
    best_on = run.suite.pretrain.best_on
    recipe = dense_recipe(run, methods)
    variants = [v for v in (m.dense_variant() for m in methods) if v is not None]
    hooks = [h for v in variants for h in v.hooks]
    optimizer = None
    groups = [v.param_groups for v in variants if v.param_groups is not None]
    if groups:
        optimizer = make_optimizer(model, recipe, groups[-1](model, recipe))
    best = None
    if best_on == "validation":
        best = BestCheckpoint("val_acc", measure=lambda net: validation_metrics(net, ws))
    elif best_on != "final":
        best = BestCheckpoint("test_acc")
    if best is not None:
        hooks.append(best)
    bar = ws.progress.phase(label or f"dense {run.suite.model} seed {run.seed}") if ws.progress else None
    if bar:
        hooks.append(EpochHooks(report=bar))  # after the others: their state's place in the checkpoint stays
    return DenseTraining(run, ws, model, dense, recipe, hooks, optimizer, best, bar.close if bar else lambda: None,
                         began)


def train_dense(run: Run, ws: Workspace, methods: list[Method], model: nn.Module, dense: DenseDir) -> None:
    """Train (or load) the run's dense model alone and write it; raises ``Diverged`` as ``fit`` does."""
    job = prepare_dense(run, ws, methods, model, dense)
    history: list[dict[str, Any]] = []
    if job.recipe is not None:
        try:
            history = fit(model, ws.data, job.recipe, device=ws.device, seed=run.seed, phase="dense", hooks=job.hooks,
                          checkpoint=job.checkpoint(), optimizer=job.optimizer)
        finally:
            job.close()
    job.finish(history)
