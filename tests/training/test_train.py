"""The training step every phase runs (bench.train.train_epoch): what it measures, where it stops, the fused SGD."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench.config import Performance
from bench.plugins import load_builtin
from bench.registry import DATASETS
from bench.train import BaseHooks, Recipe, fit, make_optimizer, train_epoch


def batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random (inputs, labels) batches of the given sizes: 6 features, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


class StepRecorder(BaseHooks):
    """Hooks that note the step numbers the loop hands them."""

    def __init__(self) -> None:
        self.penalty_steps: list[int] = []
        self.after_step_steps: list[int] = []

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor | None:
        self.penalty_steps.append(step)
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        self.after_step_steps.append(step)


def test_an_epoch_measures_the_loss_and_accuracy_of_the_steps_it_took() -> None:
    """Sample-weighted mean loss and accuracy over the batches actually trained on (uneven sizes), each measured
    before its own update, as a plain replay of the same SGD steps computes them; it stops after max_steps."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    replay = copy.deepcopy(model)
    data = batches([5, 3, 4, 7])
    hooks = StepRecorder()
    recipe = Recipe(epochs=1, lr=0.1)
    stats = train_epoch(model, model, data, make_optimizer(model, recipe), [hooks], first_step=10, max_steps=3)

    optimizer = make_optimizer(replay, recipe)
    loss_sum, correct = 0.0, 0
    for x, y in data[:3]:
        logits = replay(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert stats.steps == 3 and stats.samples == 12
    assert abs(stats.loss - loss_sum / 12) < 1e-6 and stats.accuracy == correct / 12
    assert hooks.penalty_steps == hooks.after_step_steps == [10, 11, 12]  # global step numbers
    assert torch.equal(model.weight, replay.weight)  # the fourth batch was not trained on


def test_fused_sgd_follows_the_default_sgd() -> None:
    """performance.fused_optimizer (CPU too): the same update as the default SGD, up to rounding."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    fused = copy.deepcopy(plain)
    data = batches([8] * 20, seed=1)
    results = []
    for model, performance in ((plain, Performance()), (fused, Performance(fused_optimizer=True))):
        optimizer = make_optimizer(model, Recipe(epochs=1, lr=0.1, performance=performance))
        assert optimizer.defaults.get("fused") is (True if performance.fused_optimizer else None)
        results.append(train_epoch(model, model, data, optimizer))
    assert abs(results[0].loss - results[1].loss) < 1e-5
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("max_steps", "steps_per_epoch_row"), [(None, [4, 8, 12]), (9, [4, 8, 9]), (8, [4, 8]),
                                                                 (5, [4, 5])])
def test_fit_stops_after_max_steps_mid_epoch_or_at_a_boundary(max_steps: int | None,
                                                               steps_per_epoch_row: list[int]) -> None:
    """100 samples at batch 32 is 4 steps an epoch (the last batch partial); a step budget ends the phase where it
    runs out, and an epoch boundary reached exactly ends it without an empty epoch."""
    load_builtin()
    data = DATASETS.get("synthetic")(root=None, num_train=100, num_test=20, channels=1, size=8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    recipe = Recipe(epochs=3, lr=0.05, batch_size=32, max_steps=max_steps)
    history = fit(model, data, recipe, device=torch.device("cpu"), seed=0, phase="test")
    assert [row["step"] for row in history] == steps_per_epoch_row


def test_a_step_budget_below_one_is_refused() -> None:
    model = nn.Linear(6, 3)
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        train_epoch(model, model, batches([4]), make_optimizer(model, Recipe(epochs=1, lr=0.1)), max_steps=0)


def test_the_tenth_architecture_in_one_process_still_compiles(monkeypatch) -> None:
    """performance.compile on ten architectures trained one after another in one process (a suite's pruned models
    in one worker): each fit compiles its own graph. Dynamo's recompile limit (8) would otherwise send the ninth and
    tenth to eager while their runs say ``compile``. The eager backend keeps the test fast; the caching is dynamo's."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr("bench.train.COMPILE_BACKEND", "eager", raising=False)
    load_builtin()
    data = DATASETS.get("synthetic")(root=None, num_train=16, num_test=8, channels=1, size=4)
    recipe = Recipe(epochs=1, lr=0.05, batch_size=16, performance=Performance(compile=True))
    compiled = []
    for width in range(2, 12):  # ten hidden widths: ten architectures sharing nn.Sequential.forward's code
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 10))
        before = counters["stats"]["unique_graphs"]
        (row,) = fit(model, data, recipe, device=torch.device("cpu"), seed=0, phase="test")
        compiled.append(counters["stats"]["unique_graphs"] > before)
        assert row["performance"]["compile"] == compiled[-1]
    assert compiled == [True] * 10


class HostSyncCounter(TorchDispatchMode):
    """Counts the operations that make the host wait for the device (or copy host data to it) on a GPU: reading a
    value back, indexing with a boolean mask (a hidden nonzero), creating a tensor from Python data."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or [])
        if name in ("_local_scalar_dense", "lift_fresh", "nonzero", "masked_select") or boolean_index:
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def test_regularisers_add_no_host_sync_to_a_step() -> None:
    """GReg's growing L2 (magnitude ratios and its early stop included) and OrthoReg's iterative rounds (keeping the
    pruned filters at zero, switching between the ortho term and weight decay) make no step wait for the device: over
    8 steps (4 of GReg's ratio updates) they issue exactly the host syncs of a plain SGD step, which reads its loss
    back once, at the end of the epoch."""
    from types import SimpleNamespace

    from methods.greg import GrowingL2Hooks, GrowthSchedule
    from methods.orthoreg import OrthoPenalty, OrthoReg, OrthoRegHparams, RoundHooks, SegmentHooks

    def syncs(hooks: list[BaseHooks]) -> list[str]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(8)]
        optimizer = make_optimizer(model, Recipe(epochs=1, lr=0.01))
        train_epoch(model, model, data[:1], optimizer, hooks)  # binds the hooks to the model (once per phase)
        with HostSyncCounter() as counter:
            train_epoch(model, model, data, optimizer, hooks, first_step=1)
        return counter.syncs

    orthoreg = OrthoReg(OrthoRegHparams(protocol="iterative"))
    orthoreg.pruned = {"0": {1, 3}}
    rounds = RoundHooks(orthoreg, SimpleNamespace(batchnorm_of={"0": "1"}), ends={1000: 1})
    greg = GrowingL2Hooks(GrowthSchedule(0.1, 1.0, 2, 3), 1e9, {"0": torch.tensor([1, 3])})
    plain = syncs([])
    assert syncs([greg]) == plain
    assert syncs([OrthoPenalty(0.01), rounds]) == plain
    # the code's iterative phase: the ortho term for 4 steps, then weight decay added to the gradients
    assert syncs([SegmentHooks(0.01, 1e-4, [True] * 5 + [False] * 5, steps_per_epoch=1), rounds]) == plain


class EpochRecorder(BaseHooks):
    """An epoch-end hook: adds an entry to each row, notes the finished rows and keeps a count in its state."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls, self.seen = name, calls, 0

    def epoch_metrics(self, model: nn.Module, epoch: int) -> dict[str, object]:
        self.calls.append(f"{self.name}.metrics:{epoch}")
        return {self.name: epoch}

    def after_epoch(self, model: nn.Module, epoch: int, total: int, row: dict[str, object]) -> None:
        self.calls.append(f"{self.name}.after:{epoch}/{total}:{sorted(k for k in row if k in ('a', 'b'))}")
        self.seen += 1

    def state_dict(self) -> dict[str, object]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.seen = int(state["seen"])


class StepOnly:
    """A hook written against the protocol before it had epoch-end methods, without ``BaseHooks``."""

    def penalty(self, model: nn.Module, step: int) -> None:
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        return None

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        return None


def test_one_hook_list_carries_the_epoch_end_work_and_its_state_resumes(tmp_path) -> None:
    """``fit`` takes one hook list: every hook's ``epoch_metrics`` adds to the row, in list order, before any
    ``after_epoch`` sees the finished row; a hook without the epoch-end methods still runs; the hooks' state rides in
    the checkpoint, so a resumed phase goes on counting."""
    load_builtin()
    data = DATASETS.get("synthetic")(root=None, num_train=32, num_test=8, channels=1, size=4)
    recipe = Recipe(epochs=2, lr=0.05, batch_size=16)
    calls: list[str] = []
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    hooks = [StepOnly(), EpochRecorder("a", calls), EpochRecorder("b", calls)]
    history = fit(model, data, recipe, device=torch.device("cpu"), seed=0, phase="test", hooks=hooks,
                  checkpoint=tmp_path / "ckpt.pt")
    assert calls == ["a.metrics:1", "b.metrics:1", "a.after:1/2:['a', 'b']", "b.after:1/2:['a', 'b']",
                     "a.metrics:2", "b.metrics:2", "a.after:2/2:['a', 'b']", "b.after:2/2:['a', 'b']"]
    assert [(row["a"], row["b"]) for row in history] == [(1, 1), (2, 2)]
    assert list(history[0])[-2:] == ["a", "b"]  # after the loop's own entries
    resumed = [StepOnly(), EpochRecorder("a", []), EpochRecorder("b", [])]
    fit(model, data, recipe, device=torch.device("cpu"), seed=0, phase="test", hooks=resumed,
        checkpoint=tmp_path / "ckpt.pt")
    assert [h.seen for h in resumed[1:]] == [2, 2]  # loaded from the checkpoint; no epoch left to train
