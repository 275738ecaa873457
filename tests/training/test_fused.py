"""Fused training (bench.training.fused): each member of a fused group against its own separate ``fit``.

Tolerances: a member's per-epoch train loss within 1e-4 relative of its separate run's (the MLP reaches ~1e-7:
the batched matmul sums in another order than one member's matmul), its test accuracy within 0.1 points (equal
here). The fused step itself is deterministic: the same group twice gives bit-identical numbers.
"""
from __future__ import annotations

import copy

import pytest
import torch

from bench.core.registry import MODELS
from bench.core.sections import Schedule
from bench.data import build_dataset
from bench.training.fused import FusedModel, Member, fit_fused, unfusable
from bench.training.train import Diverged, Recipe, fit

CPU = torch.device("cpu")


def recipe(lr: float, epochs: int = 3, batch: int = 64) -> Recipe:
    return Recipe(epochs=epochs, lr=lr, batch_size=batch, weight_decay=1e-4,
                  schedule=Schedule(name="step", milestones=[2]))


def setting(name: str) -> tuple[object, torch.nn.Module, int]:
    """Synthetic data and a model to start every member from (the MLP on 32x32 greyscale, resnet20 small)."""
    if name == "resnet20":
        data = build_dataset("synthetic", {"num_train": 128, "num_test": 64, "channels": 3, "size": 16}, None, None)
        batch = 32
    else:
        data = build_dataset("synthetic", {"num_train": 512, "num_test": 256, "channels": 1, "size": 32}, None, 32)
        batch = 64
    torch.manual_seed(0)
    info = data.info
    return data, MODELS.get(name).build(num_classes=info.num_classes, in_channels=info.in_channels), batch


def separate(base: torch.nn.Module, data: object, lr: float, seed: int, batch: int, **kw) -> list[dict] | Diverged:
    try:
        return fit(copy.deepcopy(base), data, recipe(lr, batch=batch), device=CPU, seed=seed, phase="retrain", **kw)
    except Diverged as err:
        return err


def fused(base: torch.nn.Module, data: object, grid: list[tuple[float, int]], batch: int, **kw
          ) -> list[list[dict] | Diverged]:
    members = [Member(copy.deepcopy(base), recipe(lr, batch=batch), seed, **kw) for lr, seed in grid]
    assert unfusable(members) is None
    return fit_fused(members, data, device=CPU)


def assert_follows(got: list[dict], want: list[dict], loss_rtol: float) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert set(a) == set(b)
        assert abs(a["train_loss"] - b["train_loss"]) <= loss_rtol * abs(b["train_loss"])
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.001  # 0.1 points
        assert (a["epoch"], a["step"], a["samples"], a["flops"], a["lr"]) == \
            (b["epoch"], b["step"], b["samples"], b["flops"], b["lr"])


@pytest.mark.parametrize(("name", "grid", "rtol"), [
    # two LRs x two seeds: each seed's batch shared by its two members (the (seeds, members) layout)
    ("mlp7_relu", [(0.05, 0), (0.01, 0), (0.05, 1), (0.01, 1)], 1e-5),
    # unequal members per seed: each member gets its own copy of its seed's batch
    ("mlp7_linear", [(0.05, 0), (0.01, 0), (0.02, 1)], 1e-5),
    # grouped convolutions and BatchNorm statistics per member; at these LRs within 1e-4 (at LR 0.05 on this tiny
    # set the 1e-5 relative gradient differences of grouped convolutions grow to ~3e-3 in three epochs)
    ("resnet20", [(0.01, 0), (0.005, 0), (0.01, 1)], 1e-4),
])
def test_each_member_follows_its_separate_run(name: str, grid: list[tuple[float, int]], rtol: float) -> None:
    data, base, batch = setting(name)
    got = fused(base, data, grid, batch)
    for (lr, seed), history in zip(grid, got):
        assert_follows(history, separate(base, data, lr, seed, batch), rtol)


def test_the_same_group_twice_is_bit_identical() -> None:
    data, base, batch = setting("mlp7_relu")
    grid = [(0.05, 0), (0.01, 1), (0.02, 1)]
    first, second = fused(base, data, grid, batch), fused(base, data, grid, batch)
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in h] for h in first]
    assert strip == [[{k: v for k, v in row.items() if k != "seconds"} for row in h] for h in second]


def test_a_diverging_member_fails_alone_at_its_separate_runs_epoch() -> None:
    """One member at LR 50 goes NaN: Diverged at the epoch its separate run raises, with the same history before
    it; it is frozen (LR 0) and the other members are those of the group without it, to the tolerance."""
    data, base, batch = setting("mlp7_relu")
    grid = [(0.05, 0), (50.0, 0), (0.01, 1)]
    got = fused(base, data, grid, batch)
    alone = separate(base, data, 50.0, 0, batch)
    assert isinstance(alone, Diverged) and isinstance(got[1], Diverged)
    assert (got[1].phase, got[1].epoch) == (alone.phase, alone.epoch)
    assert len(got[1].history) == len(alone.history)
    for i in (0, 2):
        assert_follows(got[i], separate(base, data, *grid[i], batch), 1e-5)
    without = fused(base, data, [grid[0], grid[2]], batch)
    for a, b in zip((got[0], got[2]), without):
        assert_follows(a, b, 1e-6)


def test_a_fused_checkpoint_is_a_separate_runs_checkpoint(tmp_path) -> None:
    """A member's per-epoch checkpoint has fit's format: a separate fit resumes it and finishes as the fused
    member did; and a killed group resumed from its members' checkpoints ends bit-identical to an unkilled one."""
    data, base, batch = setting("mlp7_relu")
    grid = [(0.05, 0), (0.01, 1)]
    paths = [tmp_path / f"m{i}.pt" for i in range(2)]
    short = [Member(copy.deepcopy(base), recipe(lr, epochs=3, batch=batch), seed, checkpoint=p)
             for (lr, seed), p in zip(grid, paths)]
    short[0].recipe.max_steps = short[1].recipe.max_steps = 16  # two of the three epochs: a stop inside the phase
    fit_fused(short, data, device=CPU)
    handover = tmp_path / "separate.pt"
    handover.write_bytes(paths[0].read_bytes())
    whole = fused(base, data, grid, batch)
    resumed = [Member(copy.deepcopy(base), recipe(lr, batch=batch), seed, checkpoint=p)
               for (lr, seed), p in zip(grid, paths)]
    again = fit_fused(resumed, data, device=CPU)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert [strip(h) for h in again] == [strip(h) for h in whole]
    assert torch.load(handover, weights_only=False)["epoch"] == 2
    history = fit(copy.deepcopy(base), data, recipe(0.05, batch=batch), device=CPU, seed=0, phase="retrain",
                  checkpoint=handover)
    assert strip(history[:2]) == strip(whole[0][:2])  # read back from the fused checkpoint
    assert_follows(history, whole[0], 1e-5)  # and its third epoch trained separately


def test_an_exception_in_the_fused_step_is_the_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    data, base, batch = setting("mlp7_relu")

    def broken(self, lr, recipe):
        raise RuntimeError("the fused step broke")

    monkeypatch.setattr(FusedModel, "sgd_step", broken)
    with pytest.raises(RuntimeError, match="the fused step broke"):
        fused(base, data, [(0.05, 0), (0.01, 0)], batch)


def test_what_cannot_fuse_says_why() -> None:
    data, base, batch = setting("mlp7_relu")
    one = Member(copy.deepcopy(base), recipe(0.05, batch=batch), 0)
    other_recipe = Member(copy.deepcopy(base), recipe(0.05, epochs=4, batch=batch), 0)
    assert "recipes differ" in unfusable([one, other_recipe])
    narrower = copy.deepcopy(base)
    narrower.classifier = torch.nn.Linear(100, 5)
    assert "widths differ" in unfusable([one, Member(narrower, recipe(0.01, batch=batch), 0)])

    from bench.training.hooks import BaseHooks

    class StepHook(BaseHooks):
        def after_step(self, model, step):
            return None

    assert "StepHook.after_step" in unfusable([one, Member(copy.deepcopy(base), recipe(0.01, batch=batch), 0,
                                                           hooks=[StepHook()])])


def test_a_member_resumed_ahead_of_the_others_waits_and_rejoins(tmp_path) -> None:
    """A kill between two members' checkpoint writes leaves one a epoch ahead: resumed, the group trains the other
    member's missing epoch while the one ahead waits (LR 0), then it rejoins from its checkpoint; both end as the
    uninterrupted group did, bit for bit (the same members, the same kernels)."""
    data, base, batch = setting("mlp7_relu")
    grid = [(0.05, 0), (0.01, 1)]
    paths = [tmp_path / f"m{i}.pt" for i in range(2)]

    def group(steps: list[int | None]) -> list:
        members = [Member(copy.deepcopy(base), recipe(lr, batch=batch), seed, checkpoint=p)
                   for (lr, seed), p in zip(grid, paths)]
        for member, limit in zip(members, steps):
            member.recipe.max_steps = limit
        return fit_fused(members, data, device=CPU)

    group([8, 8])       # both at epoch 1 (8 steps an epoch)
    digest = paths[1].with_name(paths[1].name + ".sha256")
    epoch1 = paths[1].read_bytes(), digest.read_bytes()
    group([16, 16])     # both at epoch 2
    paths[1].write_bytes(epoch1[0])  # as a kill after the first member's epoch-2 checkpoint, before the second's
    digest.write_bytes(epoch1[1])
    assert [torch.load(p, weights_only=False)["epoch"] for p in paths] == [2, 1]
    resumed = group([None, None])
    whole = fused(base, data, grid, batch)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert [strip(h) for h in resumed] == [strip(h) for h in whole]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [(None, 0), (0, 0), (1, 0), (0, None)])
def test_member_linear_batches_as_vmap_does(dims: tuple[int | None, int | None], bias: bool) -> None:
    """MemberLinear's batching rule (a shared input against the members' weights side by side; own inputs as one
    batched multiply) gives F.linear's values and gradients under vmap, nested as the fused model nests it."""
    from torch.func import vmap

    from bench.training.fused_ops import MemberLinear

    torch.manual_seed(0)
    seeds, members, batch, inner, outer = 2, 3, 5, 7, 4
    x_shape = {None: (seeds, batch, inner), 0: (seeds, members, batch, inner), 1: (seeds, batch, members, inner)}
    x = torch.randn(*x_shape[dims[0]], requires_grad=True)
    w_shape = (seeds, members, outer, inner) if dims[1] == 0 else (seeds, outer, inner)
    w = torch.randn(*w_shape, requires_grad=True)
    b = torch.randn(*w_shape[:-1], requires_grad=True) if bias else None
    layer = MemberLinear(inner, outer, bias=bias)
    b_dim = dims[1] if bias else None

    def plain(x, w, b):
        return torch.nn.functional.linear(x, w, b)

    def ours(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, **({"bias": b} if bias else {})}, (x,))

    results = []
    for f in (plain, ours):
        out = vmap(vmap(f, in_dims=(dims[0], dims[1], b_dim)), in_dims=(0, 0, 0 if bias else None))(x, w, b)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                    [t for t in (x, w, b) if t is not None])
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert out_a.shape == out_b.shape
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-6)
