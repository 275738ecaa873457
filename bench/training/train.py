"""The one training loop every phase uses (dense training, a method's phase, retraining), with one hook list.

Methods never write their own loop: they hand ``fit`` a list of ``TrainHooks`` (bench.training.hooks: a penalty
added to the loss, gradient-side terms after backward, projections after the optimizer step); the epoch-end work
(extra history entries, progress bars) rides in the same list. ``fit`` checkpoints every
epoch and resumes from its checkpoint; each epoch's data order and random state are derived from
(seed, phase, epoch) alone, so a resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import math
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from bench.core import distributed, faults
from bench.core.config import Performance, Schedule
from bench.core.store import load_checkpoint, save_checkpoint
from bench.training.hooks import BaseHooks as BaseHooks  # re-exported: its home before the callback list
from bench.training.hooks import TrainHooks, end_epoch, hooks_flops, report_epoch
from bench.training.measure import training_step_flops

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """A resolved training phase: length in epochs (or a step budget), SGD settings and the LR schedule."""

    epochs: int
    lr: float
    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Schedule = field(default_factory=Schedule)
    max_steps: int | None = None  # stop after this many optimizer steps (phases measured in iterations)
    performance: Performance = field(default_factory=Performance)


def section_recipe(section: Any, lr: float, performance: Performance) -> Recipe:
    """The recipe of a suite's ``pretrain`` or ``retrain`` section at learning rate ``lr``."""
    return Recipe(epochs=section.epochs, lr=lr, batch_size=section.batch_size, momentum=section.momentum,
                  nesterov=section.nesterov, weight_decay=section.weight_decay, schedule=section.schedule,
                  performance=performance)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, phase: str, epoch: int, history: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{phase}: the loss became NaN or infinite in epoch {epoch}")
        self.phase, self.epoch = phase, epoch          # epoch counts from 1, as the history's rows do
        self.history = list(history or [])             # the epochs finished before it
        self.partial: dict[str, Any] = {}              # result.json's metrics and history so far (set by the runner)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across machines and Python runs (unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def make_optimizer(model: nn.Module, recipe: Recipe, param_groups: Sequence[dict[str, Any]] | None = None
                   ) -> torch.optim.SGD:
    """SGD with momentum; ``param_groups`` lets a method give some parameters their own LR or decay."""
    groups = list(param_groups) if param_groups is not None else [{"params": list(model.parameters())}]
    fused = {"fused": True} if recipe.performance.fused_optimizer else {}
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                           weight_decay=recipe.weight_decay, **fused)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch LR schedule of a recipe."""
    s = recipe.schedule
    if s.name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=s.milestones, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(recipe.epochs, 1))
    if s.name == "piecewise":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: s.factors[bisect_right(s.milestones, epoch)])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int, device: torch.device, split: str = "test"
             ) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) on the test split (or ``split="validation"``, the held-out training
    images), in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    count = torch.zeros((), device=device, dtype=torch.int64)
    # data-parallel: each rank evaluates (and loads) only every ranks-th batch; the sums are combined
    for x, y in data.eval_shards(split, batch_size, device, distributed.rank(), distributed.world_size()):
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    distributed.sum_across(loss_sum, correct, count)
    model.train(was_training)
    return float(loss_sum) / max(int(count), 1), int(correct) / max(int(count), 1)


#: torch.compile's backend for ``performance.compile``; tests and ``selftest --quick`` on CPU may pick "eager".
COMPILE_BACKEND = "inductor"


def compile_forward(forward: nn.Module) -> nn.Module:
    """``torch.compile(forward)`` after clearing dynamo's caches.

    Dynamo keys its caches on the code of ``forward`` (shared by every model of a class) and, past its recompile
    limit (8 guard sets), silently runs eager: without the reset, the ninth pruned architecture trained in one
    process (a suite, a pool worker) would say ``compile`` and train uncompiled. The reset also frees the earlier
    models the caches hold; the cost is a compilation per ``fit``, which each new architecture pays anyway.
    """
    torch._dynamo.reset()
    return torch.compile(forward, backend=COMPILE_BACKEND)


def release_memory(device: torch.device) -> None:
    """Free what a finished run leaves behind in a process that goes on to other runs: dynamo's compiled graphs (they
    hold the run's last model and its tensors) and, on CUDA, the allocator's cached blocks, so memory stays flat
    across a suite."""
    if "torch._dynamo" in sys.modules:  # imported only by a compiled run
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a counter that ``torch._dynamo.reset`` leaves alone)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def applied_performance(model: nn.Module, optimizer: torch.optim.Optimizer, autocast: torch.autocast,
                        graphs: int) -> dict[str, Any]:
    """The speed options a phase really trained with, read off the objects it used (not off its recipe): autocast's
    dtype, the memory format of the model's 4-D weights (None without any), the optimizer's fused flag, and
    whether dynamo compiled any graph (``graphs``) during the phase."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return {"amp": "bf16" if autocast._enabled and autocast.fast_dtype == torch.bfloat16 else "off",
            "channels_last": all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
            if weights else None,  # None: no convolution to lay out
            "fused_optimizer": bool(optimizer.defaults.get("fused")),
            "compile": graphs > 0}


def step_settings(performance: Performance, device: torch.device) -> tuple[torch.autocast, torch.memory_format]:
    """The autocast context and the input memory format that ``performance`` asks for on ``device``."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=performance.amp == "bf16")
    return autocast, torch.channels_last if performance.channels_last else torch.contiguous_format


class EpochStats(NamedTuple):
    """What one pass over the training batches measured: mean loss and accuracy, optimizer steps and samples."""

    loss: float
    accuracy: float
    steps: int
    samples: int


def train_epoch(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                batches: Iterable[tuple[torch.Tensor, ...]], optimizer: torch.optim.Optimizer,
                hooks: Sequence[TrainHooks] = (), *, first_step: int = 0, max_steps: int | None = None,
                autocast: torch.autocast | None = None,
                memory_format: torch.memory_format = torch.contiguous_format) -> EpochStats:
    """One pass of SGD steps over ``batches`` (forward, loss, hooks, backward, update): the step every phase runs.

    ``batches`` are (inputs, labels), sliced here for this rank when data-parallel, or already this rank's slice as
    (inputs, labels, global batch size). ``forward`` is the model or its DDP/compiled wrapper; ``first_step`` is
    the global step the hooks see first; stops early after ``max_steps`` (at least 1) steps. Loss and accuracy are
    summed on the device (no host sync per step) and combined across data-parallel ranks. Benchmarks time this same
    function (benchmarks/perf.py).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"train_epoch: max_steps must be at least 1, got {max_steps}")
    device = next(model.parameters()).device
    autocast = autocast or torch.autocast(device.type, enabled=False)
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, step = 0, first_step
    for batch in batches:
        if len(batch) == 3:  # already this rank's slice (``Dataset.train_shards``), with the global batch's size
            x, y, global_batch = batch
        else:
            x, y = batch
            global_batch = y.numel()
            x, y = distributed.shard(x, y)  # data-parallel: this rank's slice of the global batch
        if x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        with autocast:
            logits = forward(x)
            if distributed.active():
                # DDP averages the ranks' gradients; weighting each rank's summed loss by ranks/global_batch
                # makes that average the global batch's mean gradient even when the slices are unequal.
                summed = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                loss = summed * (distributed.world_size() / global_batch)
                loss_sum.add_(summed.detach())
            else:
                loss = nn.functional.cross_entropy(logits.float(), y)
                loss_sum.add_(loss.detach(), alpha=y.numel())  # float64 accumulation, one kernel
        correct.add_((logits.detach().argmax(1) == y).sum())
        seen += y.numel()
        for hook in hooks:
            extra = hook.penalty(model, step)
            if extra is not None:
                loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in hooks:
            hook.after_backward(model, step)
        optimizer.step()
        for hook in hooks:
            hook.after_step(model, step)
        step += 1
        if max_steps is not None and step - first_step >= max_steps:
            break
    seen_t = torch.tensor(seen, device=device, dtype=torch.int64)
    distributed.sum_across(loss_sum, correct, seen_t)
    total = int(seen_t)
    return EpochStats(float(loss_sum) / max(total, 1), int(correct) / max(total, 1), step - first_step, total)


class StepFlops(NamedTuple):
    """A phase's training FLOPs: the model's forward and backward per sample, and its hooks' extra terms per step."""

    per_sample: float
    per_step: int

    def total(self, samples: int, steps: int) -> int:
        return round(self.per_sample * samples) + self.per_step * steps


def recipe_steps(recipe: Recipe, steps_per_epoch: Callable[[int], int]) -> int:
    """Optimizer steps a recipe trains for: its step limit, or its epochs of ``steps_per_epoch(batch_size)``."""
    return recipe.max_steps if recipe.max_steps is not None else recipe.epochs * steps_per_epoch(recipe.batch_size)


def planned_steps(data: Any, recipe: Recipe) -> int:
    """Optimizer steps a recipe trains for on ``data``."""
    return recipe_steps(recipe, data.steps_per_epoch)


def counted_step(model: nn.Module, data: Any, recipe: Recipe, hooks: Sequence[TrainHooks]) -> StepFlops:
    """The FLOPs of one step of this phase, counted on a copy before training (bench.measure.training_step_flops):
    the hooks' penalties at the phase's last step, where a ramped regulariser is at full strength (TPP's Gram
    term is absent while its strength is 0). Gradient-side hooks (after_backward) add no matmul FLOPs."""
    steps = planned_steps(data, recipe)
    if steps == 0:
        return StepFlops(0.0, 0)
    info = data.info
    last = steps - 1
    model_flops, extra = training_step_flops(
        model, (info.in_channels, info.image_size, info.image_size), recipe.batch_size,
        lambda twin: [hook.penalty(twin, last) for hook in hooks])
    return StepFlops(model_flops / recipe.batch_size, extra)


def fit(model: nn.Module, data: Any, recipe: Recipe, *, device: torch.device, seed: int, phase: str,
        hooks: Sequence[TrainHooks] = (), checkpoint: Path | None = None,
        optimizer: torch.optim.Optimizer | None = None, eval_batch_size: int = 1000) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``recipe`` and return the per-epoch history.

    ``hooks`` is the one callback list (bench.training.hooks): step terms, and at each epoch's end entries added
    to its history row (e.g. Jacobian statistics) and the finished row handed on (a progress bar). Resumes from
    ``checkpoint`` when it exists and saves it, with the hooks' state, after every epoch. Raises ``Diverged`` on
    a NaN loss.
    """
    perf = recipe.performance
    autocast, memory_format = step_settings(perf, device)
    model.to(device, memory_format=memory_format)
    step_flops = counted_step(model, data, recipe, hooks)
    forward = distributed.wrap(model, device, perf.sync_batchnorm)  # DDP when data-parallel, else the model
    forward = compile_forward(forward) if perf.compile else forward
    graphs_before = compiled_graphs()
    optimizer = optimizer or make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    if checkpoint is not None and distributed.agree(checkpoint.exists()):
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for hook, hook_state in zip(hooks, state.get("hooks", [])):
            hook.load_state_dict(hook_state)
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        log.info("%s: resumed at epoch %d from %s", phase, start_epoch, checkpoint)
    total_epochs = recipe.epochs
    if recipe.max_steps is not None:
        total_epochs = math.ceil(recipe.max_steps / max(data.steps_per_epoch(recipe.batch_size), 1))
    for epoch in range(start_epoch, total_epochs):
        if recipe.max_steps is not None and step >= recipe.max_steps:
            break
        epoch_seed = derive_seed(seed, phase, epoch)
        torch.manual_seed(epoch_seed)  # dropout and any other randomness: a function of the epoch only
        began = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        steps_left = None if recipe.max_steps is None else recipe.max_steps - step
        # The batch generator is passed, not kept: one stopped early (max_steps) is closed on return, with any
        # DataLoader workers it holds.
        batches = (data.train_shards(recipe.batch_size, epoch_seed, device, distributed.rank(),
                                     distributed.world_size()) if distributed.active()
                   else data.train_batches(recipe.batch_size, epoch_seed, device))
        hooks_before = hooks_flops(hooks)
        stats = train_epoch(forward, model, batches, optimizer,
                            hooks, first_step=step, max_steps=steps_left, autocast=autocast,
                            memory_format=memory_format)
        step += stats.steps
        # cumulative over the phase; None when resumed from a checkpoint written before they were counted
        before = history[-1] if history else {"samples": 0, "flops": 0}
        samples = None if before.get("samples") is None else before["samples"] + stats.samples
        flops = None if before.get("flops") is None else (before["flops"] + step_flops.total(stats.samples, stats.steps)
                                                          + hooks_flops(hooks) - hooks_before)
        train_loss = stats.loss
        if not math.isfinite(train_loss):
            raise Diverged(phase, epoch + 1, history)
        scheduler.step()
        test_loss, test_acc = evaluate(model, data, eval_batch_size, device)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "samples": samples, "flops": flops, "lr": lr,
                               "train_loss": train_loss,
                               "train_acc": stats.accuracy, "test_loss": test_loss,
                               "test_acc": test_acc, "seconds": time.perf_counter() - began}
        if not perf.is_default():  # what really ran: a phase that ignored the options would show here
            row["performance"] = applied_performance(model, optimizer, autocast, compiled_graphs() - graphs_before)
        end_epoch(hooks, model, epoch + 1, row)
        history.append(row)
        report_epoch(hooks, model, epoch + 1, total_epochs, row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                                         "history": history, "hooks": [h.state_dict() for h in hooks]})
            faults.point(f"{phase}:epoch:{epoch + 1}")
    distributed.unwrap(model)  # a failed phase ends its run, so only the normal exit needs the modules back
    return history
