"""The one callback list of the training loop: ``TrainHooks``, the no-op ``BaseHooks`` to subclass, and helpers.

Everything that plugs into ``fit`` is a hook in one list, as OpenLTH's loop takes one callback list: a method's
step-side terms (a penalty added to the loss, gradient-side terms after backward, projections after the optimizer
step) and the epoch-end work (entries added to an epoch's history row, a progress bar, a best-epoch tracker). A
hook's ``state_dict`` rides in ``fit``'s checkpoint, so a resumed phase continues with the hooks' state.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn


class TrainHooks(Protocol):
    """What may plug into the loop; every method is optional (see ``BaseHooks``).

    Per step: ``penalty`` (added to the loss), ``after_backward``, ``after_step``. Per epoch, in list order:
    ``epoch_metrics`` of every hook (entries added to the epoch's history row), then, once the row is complete and
    in the history, ``after_epoch`` of every hook (it sees the row: a progress bar, the best epoch so far)."""

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor | None: ...
    def after_backward(self, model: nn.Module, step: int) -> None: ...
    def after_step(self, model: nn.Module, step: int) -> None: ...
    def epoch_metrics(self, model: nn.Module, epoch: int) -> dict[str, Any]: ...
    def after_epoch(self, model: nn.Module, epoch: int, total: int, row: dict[str, Any]) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def spent_flops(self) -> int: ...


class BaseHooks:
    """No-op hooks to subclass."""

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        return None

    def epoch_metrics(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Entries to add to the history row of ``epoch`` (counted from 1), measured after the test evaluation."""
        return {}

    def after_epoch(self, model: nn.Module, epoch: int, total: int, row: dict[str, Any]) -> None:
        """Called with the finished row of ``epoch`` of ``total``, before the epoch's checkpoint is saved."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def spent_flops(self) -> int:
        """FLOPs of work the hook did itself so far in this process (a scoring pass in ``after_step``, counted with
        ``bench.measure.counting_flops``): added to the phase's training cost."""
        return 0


class EpochHooks(BaseHooks):
    """Epoch-end work given as functions: ``metrics(model, epoch)`` returns entries for the epoch's history row,
    ``report(epoch, total, row)`` sees the finished row (a progress bar, a live log). Holds no state."""

    def __init__(self, metrics: Callable[[nn.Module, int], dict[str, Any]] | None = None,
                 report: Callable[[int, int, dict[str, Any]], None] | None = None) -> None:
        self.metrics, self.report = metrics, report

    def epoch_metrics(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        return self.metrics(model, epoch) if self.metrics is not None else {}

    def after_epoch(self, model: nn.Module, epoch: int, total: int, row: dict[str, Any]) -> None:
        if self.report is not None:
            self.report(epoch, total, row)


def hooks_flops(hooks: Sequence[TrainHooks]) -> int:
    """What the hooks counted of their own work so far (a hook without ``spent_flops`` counts nothing)."""
    return sum(int(getattr(hook, "spent_flops", lambda: 0)()) for hook in hooks)


def end_epoch(hooks: Sequence[TrainHooks], model: nn.Module, epoch: int, row: dict[str, Any]) -> None:
    """Add every hook's ``epoch_metrics`` to ``row``, in list order (a hook written before hooks had epoch-end
    methods, without ``BaseHooks``, adds nothing)."""
    for hook in hooks:
        metrics = getattr(hook, "epoch_metrics", None)
        if metrics is not None:
            row.update(metrics(model, epoch))


def report_epoch(hooks: Sequence[TrainHooks], model: nn.Module, epoch: int, total: int, row: dict[str, Any]) -> None:
    """Hand the finished ``row`` to every hook's ``after_epoch``, in list order."""
    for hook in hooks:
        after = getattr(hook, "after_epoch", None)
        if after is not None:
            after(model, epoch, total, row)
