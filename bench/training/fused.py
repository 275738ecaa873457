"""Horizontally fused training: the runs of one phase that differ only in LR or seed, trained as one model.

The members' parameters and buffers are stacked along a member axis (``torch.func.stack_module_state``) and one
forward pass runs them all (``functional_call`` under ``vmap``: a ``Linear`` becomes one matmul for all members,
a ``Conv2d`` one grouped convolution by either of two routes, BatchNorm keeps statistics per member; the kernels
are bench.training.fused_ops).
Members with one seed share each data batch (an inner ``vmap`` with the batch unbatched); members with different
seeds draw their own order, exactly as their separate runs would. The SGD step is one multi-tensor update of the
stacked tensors with a per-member LR.

Each member keeps its own module, optimizer and LR scheduler (its "shadow"): at each epoch's end the stacked
state is copied into them, the member is evaluated and its hooks' epoch work runs on its own module, and the
checkpoint ``fit`` would write is written, in ``fit``'s format, so a separate run resumes a fused one's checkpoint
and the other way round. A member whose loss goes NaN or infinite gets a ``Diverged`` at that epoch, as its
separate run would, and is frozen: its LR is 0 and nothing of it is saved again.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from bench.core import distributed, faults
from bench.core.store import load_checkpoint, save_checkpoint
from bench.training.fused_ops import batched_copy, conv_route
from bench.training.hooks import BaseHooks, TrainHooks, end_epoch, report_epoch
from bench.training.train import Diverged, Recipe, counted_step, derive_seed, evaluate, make_optimizer, make_scheduler

log = logging.getLogger(__name__)

STEP_METHODS = ("penalty", "after_backward", "after_step")
@dataclass
class Member:
    """One run of a fused group: its own module (pruned, on the device), recipe, seed, hooks and checkpoint."""

    model: nn.Module
    recipe: Recipe
    seed: int
    hooks: Sequence[TrainHooks] = ()
    checkpoint: Path | None = None


def step_hooks(hooks: Sequence[TrainHooks]) -> list[str]:
    """The names of the hooks that act inside a training step (what the fused step cannot run per member)."""
    found = []
    for hook in hooks:
        for name in STEP_METHODS:
            own = getattr(type(hook), name, None)
            if own is not None and own is not getattr(BaseHooks, name):
                found.append(f"{type(hook).__name__}.{name}")
    return found


def architecture(model: nn.Module) -> tuple[Any, ...]:
    """What must be equal for models to stack: the class, and every parameter's and buffer's name, shape, dtype."""
    state = model.state_dict()
    return (type(model).__qualname__, tuple((k, tuple(v.shape), v.dtype) for k, v in state.items()))


def unfusable(members: Sequence[Member]) -> str | None:
    """Why these members cannot train as one fused model, or None when they can."""
    first = members[0]
    if distributed.active():
        return "a data-parallel run"
    if not first.recipe.performance.is_default():
        return "performance options (amp, channels_last, compile, fused_optimizer) are not fused"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in first.model.modules()):
        return "the model has dropout (its random draws differ under vmap)"
    for member in members:
        if hooks := step_hooks(member.hooks):
            return f"a hook acts inside the step ({', '.join(hooks)})"
        if architecture(member.model) != architecture(first.model):
            return "the models' layer widths differ"
        if dataclasses.replace(member.recipe, lr=first.recipe.lr) != first.recipe:
            return "the retraining recipes differ beyond the learning rate"
    return None


class _Shadow:
    """A member's own optimizer, scheduler and training position, resumed from its checkpoint as ``fit`` does."""

    def __init__(self, member: Member, phase: str, device: torch.device) -> None:
        self.member = member
        self.optimizer = make_optimizer(member.model, member.recipe)
        self.scheduler = make_scheduler(self.optimizer, member.recipe)
        self.epoch, self.step, self.history = 0, 0, []
        self.outcome: list[dict[str, Any]] | Diverged | None = None
        if member.checkpoint is not None and member.checkpoint.exists():
            state = load_checkpoint(member.checkpoint, map_location=device)
            member.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            for hook, hook_state in zip(member.hooks, state.get("hooks", [])):
                hook.load_state_dict(hook_state)
            self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
            log.info("%s: member resumed at epoch %d from %s", phase, self.epoch, member.checkpoint)

    def momentum(self) -> dict[str, torch.Tensor | None]:
        """The optimizer's momentum buffer of each parameter, by name (None before its first step)."""
        return {name: self.optimizer.state.get(p, {}).get("momentum_buffer")
                for name, p in self.member.model.named_parameters()}


class FusedModel:
    """The members' stacked parameters, buffers and momentum, with their fused forward pass and SGD step.

    Members are ordered by seed; when every seed has the same number of members the stack is viewed as (seeds,
    members per seed) and each seed's batch is shared by its members; otherwise each member gets its own copy of
    its seed's batch. ``conv`` is the route of the convolutions (``CONV_ROUTES``; None: ``conv_route`` of the
    models' device)."""

    def __init__(self, models: Sequence[nn.Module], seeds: Sequence[int], conv: str | None = None) -> None:
        self.order = sorted(range(len(models)), key=lambda i: seeds[i])  # position in the stack -> member index
        self.slot = {member: pos for pos, member in enumerate(self.order)}
        self.seeds = sorted(set(seeds))
        counts = {s: list(seeds).count(s) for s in self.seeds}
        balanced = len(set(counts.values())) == 1
        self.layout = (len(self.seeds), len(models) // len(self.seeds)) if balanced else (len(models), 1)
        self.gather = None if balanced else torch.tensor([self.seeds.index(seeds[i]) for i in self.order])
        device = next(iter(models[0].parameters()), torch.empty(0)).device
        self.conv = conv or conv_route(device)
        self.base = batched_copy(models[0], self.conv)  # its layers batch the members as one kernel (fused_ops)
        params, buffers = stack_module_state([models[i] for i in self.order])
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        self.momentum = {k: torch.zeros_like(v) for k, v in params.items()}

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._forward = vmap(vmap(one, in_dims=(0, 0, None)), in_dims=(0, 0, 0))

    def _view(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.view(*self.layout, *v.shape[1:]) for k, v in tensors.items()}

    def load_member(self, member: int, model: nn.Module, momentum: dict[str, torch.Tensor | None]) -> None:
        """Put one member's module state and momentum into its slot of the stack."""
        pos = self.slot[member]
        with torch.no_grad():
            for name, p in model.named_parameters():
                self.params[name][pos].copy_(p)
                buf = momentum.get(name)
                self.momentum[name][pos].copy_(buf if buf is not None else torch.zeros_like(p))
            for name, b in model.named_buffers():
                self.buffers[name][pos].copy_(b)

    def store_member(self, member: int, model: nn.Module) -> dict[str, torch.Tensor]:
        """Copy one member's slot into its module; returns its momentum buffers by parameter name."""
        pos = self.slot[member]
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.params[name][pos])
            for name, b in model.named_buffers():
                b.copy_(self.buffers[name][pos])
        return {k: v[pos].clone() for k, v in self.momentum.items()}

    def losses(self, xs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's mean cross-entropy on its seed's batch, and its number of correct predictions (stack
        order). ``xs`` and ``y`` hold one batch per seed."""
        if self.gather is not None:
            xs, y = xs.index_select(0, self.gather.to(xs.device)), y.index_select(0, self.gather.to(y.device))
        logits = self._forward(self._view(self.params), self._view(self.buffers), xs)  # (S, K, batch, classes)
        s, k, n, classes = logits.shape
        labels = y[:, None, :].expand(s, k, n)
        per_sample = nn.functional.cross_entropy(logits.float().reshape(-1, classes), labels.reshape(-1),
                                                 reduction="none")
        correct = (logits.detach().argmax(-1) == labels).sum(-1)
        return per_sample.view(s, k, n).mean(-1).reshape(-1), correct.reshape(-1)

    def sgd_step(self, lr: torch.Tensor, recipe: Recipe) -> None:
        """One SGD step of every member at once (momentum, dampening 0, weight decay, Nesterov as
        ``torch.optim.SGD``), ``lr`` per member in stack order (0 freezes a member)."""
        names = list(self.params)
        params = [self.params[k] for k in names]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        with torch.no_grad():
            if recipe.weight_decay:
                grads = torch._foreach_add(grads, params, alpha=recipe.weight_decay)
            if recipe.momentum:
                bufs = [self.momentum[k] for k in names]
                torch._foreach_mul_(bufs, recipe.momentum)
                torch._foreach_add_(bufs, grads)
                steps = torch._foreach_add(grads, bufs, alpha=recipe.momentum) if recipe.nesterov else bufs
            else:
                steps = grads
            scale = [(-lr).view(-1, *([1] * (p.dim() - 1))).to(p.dtype) for p in params]
            torch._foreach_addcmul_(params, scale, steps)
            for p in params:
                p.grad = None


def _batches(data: Any, recipe: Recipe, seeds: Sequence[int], phase: str, epoch: int, device: torch.device):
    """One epoch of batches for every seed at once: (inputs stacked by seed, labels stacked by seed)."""
    iterators = [data.train_batches(recipe.batch_size, derive_seed(seed, phase, epoch), device) for seed in seeds]
    for batch in zip(*iterators):
        if len(batch) == 1:
            yield batch[0][0].unsqueeze(0), batch[0][1].unsqueeze(0)
        else:
            yield torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def fit_fused(members: Sequence[Member], data: Any, *, device: torch.device, phase: str = "retrain",
              eval_batch_size: int = 1000) -> list[list[dict[str, Any]] | Diverged]:
    """Train ``members`` as one fused model; returns, per member, its history (as ``fit`` returns it) or the
    ``Diverged`` its separate run would have raised. Check ``unfusable`` first. An exception inside the fused
    step propagates: it is the whole group's."""
    recipe = members[0].recipe
    for member in members:
        member.model.to(device).train()
    shadows = [_Shadow(m, phase, device) for m in members]
    fused = FusedModel([m.model for m in members], [m.seed for m in members])
    for i, shadow in enumerate(shadows):
        fused.load_member(i, shadow.member.model, shadow.momentum())
    step_flops = counted_step(members[0].model, data, recipe, ())
    total_epochs = recipe.epochs
    if recipe.max_steps is not None:
        total_epochs = math.ceil(recipe.max_steps / max(data.steps_per_epoch(recipe.batch_size), 1))
    start = min(s.epoch for s in shadows)
    ahead = {i for i, s in enumerate(shadows) if s.epoch > start}  # resumed further: they wait for the group
    for epoch in range(start, total_epochs):
        for i in [i for i in ahead if shadows[i].epoch == epoch]:
            fused.load_member(i, shadows[i].member.model, shadows[i].momentum())  # joins now, as saved
            ahead.discard(i)
        active = [i for i, s in enumerate(shadows) if s.outcome is None and s.epoch == epoch
                  and (recipe.max_steps is None or s.step < recipe.max_steps)]
        if not active:
            continue
        lrs = torch.zeros(len(members), dtype=torch.float64, device=device)
        for i in active:
            lrs[fused.slot[i]] = shadows[i].optimizer.param_groups[0]["lr"]
        steps_left = None if recipe.max_steps is None else recipe.max_steps - shadows[active[0]].step
        began = time.perf_counter()
        loss_sum = torch.zeros(len(members), dtype=torch.float64, device=device)
        correct = torch.zeros(len(members), dtype=torch.int64, device=device)
        seen = steps = 0
        for xs, y in _batches(data, recipe, fused.seeds, phase, epoch, device):
            losses, hits = fused.losses(xs, y)
            losses.sum().backward()
            fused.sgd_step(lrs, recipe)
            loss_sum.add_(losses.detach().double(), alpha=y.shape[1])
            correct.add_(hits)
            seen += y.shape[1]
            steps += 1
            if steps_left is not None and steps >= steps_left:
                break
        share = (time.perf_counter() - began) / len(active)
        for i in active:
            _end_member_epoch(shadows[i], fused, i, data, epoch, total_epochs, phase, device, eval_batch_size,
                              float(loss_sum[fused.slot[i]]) / max(seen, 1), int(correct[fused.slot[i]]) / max(seen, 1),
                              steps, seen, step_flops, share)
        faults.point(f"{phase}:epoch:{epoch + 1}")
    return [s.outcome if s.outcome is not None else s.history for s in shadows]


def _end_member_epoch(shadow: _Shadow, fused: FusedModel, i: int, data: Any, epoch: int, total: int, phase: str,
                      device: torch.device, eval_batch_size: int, train_loss: float, train_acc: float, steps: int,
                      seen: int, step_flops: Any, share: float) -> None:
    """What ``fit`` does after a member's epoch: the divergence check, the LR schedule, the test evaluation, the
    history row with the hooks' entries, and the checkpoint."""
    began = time.perf_counter()
    member, history = shadow.member, shadow.history
    lr = shadow.optimizer.param_groups[0]["lr"]
    shadow.step += steps
    shadow.epoch = epoch + 1
    before = history[-1] if history else {"samples": 0, "flops": 0}
    samples = None if before.get("samples") is None else before["samples"] + seen
    flops = None if before.get("flops") is None else before["flops"] + step_flops.total(seen, steps)
    if not math.isfinite(train_loss):
        shadow.outcome = Diverged(phase, epoch + 1, history)
        return
    torch.manual_seed(derive_seed(member.seed, phase, epoch))  # the epoch's random state, as fit sets it
    momentum = fused.store_member(i, member.model)
    with warnings.catch_warnings():  # the member's optimizer never steps itself: the fused step updates it
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
        shadow.scheduler.step()
    test_loss, test_acc = evaluate(member.model, data, eval_batch_size, device)
    row: dict[str, Any] = {"epoch": epoch + 1, "step": shadow.step, "samples": samples, "flops": flops, "lr": lr,
                           "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                           "test_acc": test_acc, "seconds": share}
    end_epoch(member.hooks, member.model, epoch + 1, row)
    row["seconds"] = share + time.perf_counter() - began
    history.append(row)
    report_epoch(member.hooks, member.model, epoch + 1, total, row)
    if member.checkpoint is not None:
        if member.recipe.momentum:
            for name, p in member.model.named_parameters():
                shadow.optimizer.state[p]["momentum_buffer"] = momentum[name]
        save_checkpoint(member.checkpoint, {"model": member.model.state_dict(),
                                            "optimizer": shadow.optimizer.state_dict(),
                                            "scheduler": shadow.scheduler.state_dict(), "epoch": epoch + 1,
                                            "step": shadow.step, "history": history,
                                            "hooks": [h.state_dict() for h in member.hooks]})
