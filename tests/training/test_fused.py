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


def counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record every plain call of the grouped route's convolution and its backward (the calls under no vmap)."""
    from bench.training import fused_ops as module

    calls: dict[str, list] = {"forward": [], "backward": []}
    forward, backward = module._GroupedConv2d.forward, module._GroupedConv2d.backward

    def counted_forward(x, weight, bias, stride, padding, dilation, groups):
        calls["forward"].append((tuple(x.shape), tuple(weight.shape), groups))
        return forward(x, weight, bias, stride, padding, dilation, groups)

    def counted_backward(ctx, grad):
        calls["backward"].append(ctx.conv[3])
        return backward(ctx, grad)

    monkeypatch.setattr(module._GroupedConv2d, "forward", staticmethod(counted_forward))
    monkeypatch.setattr(module._GroupedConv2d, "backward", staticmethod(counted_backward))
    return calls


@pytest.mark.parametrize(("shared_input", "groups", "bias"), [
    (True, 1, "member"), (False, 1, None), (True, 2, "shared"), (False, 2, "member")])
def test_the_grouped_route_is_vmaps_conv2d_at_two_levels(monkeypatch: pytest.MonkeyPatch, shared_input: bool,
                                                        groups: int, bias: str | None) -> None:
    """grouped_conv2d under vmap(vmap(...)) (3 seeds x 2 members, the input per seed or per member, grouped filters,
    a bias per member or shared): the output and every gradient equal vmap's own conv2d rule's, through one plain
    grouped convolution of all six members and its backward."""
    from bench.training.fused_ops import grouped_conv2d

    calls = counting(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 9, 9) if shared_input else torch.randn(3, 2, 5, 4, 9, 9)
    weight = torch.randn(3, 2, 6, 4 // groups, 3, 3)
    b = {"member": torch.randn(3, 2, 6), "shared": torch.randn(6), None: None}[bias]

    def through(conv):
        leaves = [t.clone().requires_grad_() for t in (x, weight, b) if t is not None]
        xx, ww, bb = leaves[0], leaves[1], leaves[2] if b is not None else None
        inner = vmap(lambda x, w, b: conv(x, w, b, (2, 1), (1, 0), (1, 1), groups),
                     in_dims=(None if shared_input else 0, 0, 0 if bias == "member" else None))
        out = vmap(inner, in_dims=(0, 0, 0 if bias == "member" else None))(xx, ww, bb)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return out.detach(), [t.grad for t in leaves]

    from torch.func import vmap
    want, want_grads = through(torch.nn.functional.conv2d)
    assert not calls["forward"]
    got, got_grads = through(grouped_conv2d)
    # a shared input and plain filters: each seed's two members side by side (3 groups); else one group per member
    folded = 3 if shared_input and groups == 1 else 3 * 2 * groups
    assert calls["forward"] == [((5, 4 * folded // groups, 9, 9), (3 * 2 * 6, 4 // groups, 3, 3), folded)]
    assert calls["backward"] == [folded]
    assert got.shape == want.shape == (3, 2, 5, 6, 5, 7)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-5)  # vmap adds a per-member bias apart: sums reorder


@pytest.mark.parametrize("seeds", [[0, 0, 1, 1], [0, 0, 1]])
def test_a_fused_resnet20_step_is_the_same_by_either_convolution_route(monkeypatch: pytest.MonkeyPatch,
                                                                       seeds: list[int]) -> None:
    """One fused step of resnet20 (its 19 convolutions), balanced (2 seeds x 2 members: each seed's batch shared)
    and not (each member its own copy): the grouped route's losses and gradients equal vmap's within 1e-5
    relative, and every convolution of the forward went through it (one grouped call each, and its backward); in the
    balanced stack the stem's filters of a seed's members are side by side in one group, as they share its batch."""
    data, base, batch = setting("resnet20")
    models = []
    for i in range(len(seeds)):
        model = copy.deepcopy(base)
        torch.manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        models.append(model.train())
    xs, ys = zip(*(next(iter(data.train_batches(batch, s, CPU))) for s in sorted(set(seeds))))
    xs, ys = torch.stack(xs), torch.stack(ys)
    calls = counting(monkeypatch)
    step = {}
    for route in ("vmap", "grouped"):
        fused_model = FusedModel([copy.deepcopy(m) for m in models], seeds, conv=route)
        losses, _ = fused_model.losses(xs, ys)
        losses.sum().backward()
        step[route] = losses.detach(), {k: v.grad for k, v in fused_model.params.items()}, fused_model.buffers
        if route == "vmap":
            assert not calls["forward"] and not calls["backward"]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in base.modules())
    assert convs == 19 and len(calls["forward"]) == len(calls["backward"]) == convs
    # the stem's input: one group per seed's batch (members sharing it side by side) or per member's copy; then one
    # group per member
    assert [groups for _, _, groups in calls["forward"]] == [fused_model.layout[0]] + [len(seeds)] * (convs - 1)
    (loss_v, grads_v, buffers_v), (loss_g, grads_g, buffers_g) = step["vmap"], step["grouped"]
    torch.testing.assert_close(loss_g, loss_v, rtol=1e-5, atol=0)
    assert grads_v.keys() == grads_g.keys()
    for name, want in grads_v.items():
        assert float((grads_g[name] - want).norm()) <= 1e-5 * float(want.norm()), name
    for name, want in buffers_v.items():  # BatchNorm's running statistics, updated by the forward
        torch.testing.assert_close(buffers_g[name], want, rtol=1e-5, atol=1e-7)


def test_the_convolution_route_is_chosen_by_device_or_named() -> None:
    from bench.training.fused_ops import CONV_ROUTE, GroupedConv2d, conv_route

    _, base, _ = setting("resnet20")
    assert conv_route(CPU) == CONV_ROUTE["cpu"] and conv_route(torch.device("meta")) == "vmap"
    assert FusedModel([copy.deepcopy(base)], [0]).conv == CONV_ROUTE["cpu"]
    grouped = FusedModel([copy.deepcopy(base)], [0], conv="grouped")
    assert all(type(m) is GroupedConv2d for m in grouped.base.modules() if isinstance(m, torch.nn.Conv2d))
    assert not any(type(m) is GroupedConv2d for m in FusedModel([base], [0], conv="vmap").base.modules())
    assert not any(type(m) is GroupedConv2d for m in base.modules())  # the members' own modules are untouched
    with pytest.raises(ValueError, match="unknown convolution route 'cudnn'"):
        FusedModel([base], [0], conv="cudnn")
