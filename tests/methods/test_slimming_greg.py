"""Network Slimming (the sign-gradient term drives small BN scales to zero; global versus layerwise |γ| cuts) and
GReg-1 (the growth schedule, the gradient term on the picked filters only, the magnitude-ratio stop, resumable state,
and a short phase through the training loop)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bench.data  # noqa: F401 - registers the datasets
import bench.models  # noqa: F401 - registers the models
from bench import ConfigError, PruneTarget, Recipe, RunContext
from bench.pruning import trace_dependencies
from bench.registry import DATASETS, MODELS
from bench.train import fit
from methods.greg import GReg, GRegHparams, GrowingL2Hooks, GrowthSchedule
from methods.slimming import Slimming, SlimmingHparams, SparsityHooks


def make_context(model: nn.Module, layers: list[str], ratio: float, data: object = None, size: int = 8,
                 min_keep: int = 1, batch_size: int = 16) -> RunContext:
    """The context the runner would build for a layerwise suite."""
    deps = trace_dependencies(model, torch.zeros(1, 3, size, size), layers)
    return RunContext(target=PruneTarget(layers, {n: ratio for n in layers}, "layerwise", min_keep), data=data,
                      device=torch.device("cpu"), seed=0, nonlinearity="relu",
                      batchnorm_of={n: d.batchnorm for n, d in deps.items()}, dense_recipe=Recipe(1, 0.1),
                      retrain=Recipe(1, 0.01, batch_size=batch_size, weight_decay=0.0),
                      input_shape=(1, 3, size, size))


# ----------------------------------------------------------------------------------------- Network Slimming

def test_sparsity_hook_adds_lambda_sign_gamma_to_every_bn_scale_gradient() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3),
                          nn.BatchNorm1d(3))
    model(torch.randn(2, 3, 5, 5))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.2, 0.0, 2.0]))
    model(torch.randn(4, 3, 5, 5)).sum().backward()
    before = [model[1].weight.grad.clone(), model[5].weight.grad.clone(), model[0].weight.grad.clone()]
    SparsityHooks(1e-2).after_backward(model, 0)
    torch.testing.assert_close(model[1].weight.grad - before[0], torch.tensor([1e-2, -1e-2, 0.0, 1e-2]))
    torch.testing.assert_close(model[5].weight.grad - before[1], 1e-2 * torch.sign(model[5].weight.detach()))
    torch.testing.assert_close(model[0].weight.grad, before[2])  # only BN scales get the term


def test_sparsity_training_drives_small_scales_to_zero() -> None:
    data = DATASETS.get("synthetic")(root=None, num_train=128, num_test=16, num_classes=4, size=8)

    def train(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = MODELS.get("resnet20").build(num_classes=4, in_channels=3)
        with torch.no_grad():  # half of each BN's scales small, half large
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(torch.where(torch.arange(m.num_features) % 2 == 0, 0.05, 1.0))
        variant = Slimming(SlimmingHparams(lam=lam)).dense_variant()
        hooks = variant.hooks if variant else []
        fit(model, data, Recipe(epochs=3, lr=0.1, batch_size=32, weight_decay=0.0), device=torch.device("cpu"),
            seed=0, phase="dense", hooks=hooks)
        scales = [m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        return torch.cat([w[::2] for w in scales]), torch.cat([w[1::2] for w in scales])

    (small_plain, large_plain), (small_sparse, large_sparse) = train(0.0), train(1e-2)
    # The small scales collapse towards 0 (most below 0.02, against a few without the term); the large ones stay.
    assert float(small_sparse.median()) < 0.3 * float(small_plain.median())
    assert float((small_sparse < 0.02).float().mean()) > float((small_plain < 0.02).float().mean()) + 0.5
    assert float(large_sparse.median()) > 0.85 and float(large_plain.median()) > 0.85


def bn_net(first: torch.Tensor, second: torch.Tensor) -> nn.Module:
    """conv-BN-ReLU twice with the given BN scales."""
    model = nn.Sequential(nn.Conv2d(3, first.numel(), 3, padding=1), nn.BatchNorm2d(first.numel()), nn.ReLU(),
                          nn.Conv2d(first.numel(), second.numel(), 3, padding=1), nn.BatchNorm2d(second.numel()),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(second.numel(), 2))
    with torch.no_grad():
        model[1].weight.copy_(first)
        model[4].weight.copy_(second)
    return model


def test_global_and_layerwise_cuts_differ_as_specified() -> None:
    first = torch.tensor([0.01, -0.02, 0.03, 0.04, -0.05, 0.06, 0.07, 0.08])  # all small: a sparse layer
    second = torch.tensor([0.9, -1.0, 1.1, 1.2, 0.5, 1.4, -1.5, 1.6])
    model = bn_net(first, second)
    layers = ["0", "3"]
    globally = Slimming(SlimmingHparams()).select(model, make_context(model, layers, 0.5, min_keep=2))
    # ceil(0.5 · 16) = 8 lowest |γ| go: all of the first layer's but its floor of 2 (the largest), then 2 more.
    assert globally["0"].tolist() == [6, 7] and globally["3"].tolist() == [1, 2, 3, 5, 6, 7]
    layerwise = Slimming(SlimmingHparams(scope="layerwise")).select(model, make_context(model, layers, 0.5))
    assert layerwise["0"].tolist() == [4, 5, 6, 7] and layerwise["3"].tolist() == [3, 5, 6, 7]
    ctx = make_context(model, layers, 0.5)
    ctx.target.ratios = {"0": 0.5, "3": 0.25}
    with pytest.raises(ConfigError, match="per-layer profile"):
        Slimming(SlimmingHparams()).select(model, ctx)


def test_quantile_cut_is_the_rni_code_s_rule() -> None:
    """RNI's code keeps |γ| strictly above the p-quantile: 7 of 64 distinct scales at p = 0.9; ceil(p·n) leaves 6."""
    scales = torch.linspace(0.01, 0.64, 64)
    model = bn_net(scales, torch.linspace(0.5, 1.0, 8))
    ctx = make_context(model, ["0"], 0.9, min_keep=3)
    counted = Slimming(SlimmingHparams(lam=0, scope="layerwise")).select(model, ctx)
    above = Slimming(SlimmingHparams(lam=0, scope="layerwise", cut="quantile")).select(model, ctx)
    assert counted["0"].tolist() == list(range(58, 64)) and above["0"].tolist() == list(range(57, 64))
    ctx.target.scope = "global"
    assert Slimming(SlimmingHparams(cut="quantile")).select(model, ctx)["0"].tolist() == list(range(57, 64))


def test_slimming_dense_variant_only_with_a_penalty_and_needs_batchnorms() -> None:
    variant = Slimming(SlimmingHparams(lam=1e-5)).dense_variant()
    assert variant.key == {"slimming": {"lam": 1e-5}} and variant.prepare is None and variant.param_groups is None
    assert Slimming(SlimmingHparams(lam=0)).dense_variant() is None
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="'0' is not followed by an affine BatchNorm"):
        Slimming(SlimmingHparams()).select(model, make_context(model, ["0"], 0.5))


# ----------------------------------------------------------------------------------------- GReg-1

def test_growth_schedule_stops_at_the_ceiling_one_update_before_the_code() -> None:
    """λ grows every K_u iterations from t = 0 and stops when it reaches the ceiling: 10,000 updates of 1e-4 to 1.0.
    A documented deviation (methods/greg.py, docs/methods.md fidelity table): the code tests λ > ceiling and grows
    once more (10,001 updates, λ = 1.0001); this pins ours."""
    s = GrowthSchedule(delta=1e-4, ceiling=1.0, update_interval=10, stabilize=10000)
    assert s.max_updates == 10000 and s.total_steps == 9999 * 10 + 10000 + 1
    assert [s.updates(t, None) for t in (0, 9, 10, 99_989, 99_990, 200_000)] == [1, 1, 2, 9999, 10000, 10000]
    assert s.updates(500, stopped_at=7) == 7 and s.updates(30, stopped_at=7) == 4
    assert GrowthSchedule(0.3, 1.0, 1, 0).max_updates == 4  # λ = 0.3, 0.6, 0.9, then 1.2 >= 1 stops the growth


def test_growing_l2_acts_on_the_picked_filters_only_and_stops_on_the_magnitude_ratio() -> None:
    layer = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4, [0.001] * 4, [3.0] * 4]))
    hooks = GrowingL2Hooks(GrowthSchedule(0.1, 1.0, 2, 3), stop_ratio=1000.0, pruned={"0": torch.tensor([2])})
    layer.weight.grad = torch.zeros(4, 4)
    hooks.after_backward(model, 0)
    assert hooks.ratio_average == {"0": pytest.approx(2000.0)}  # mean |w| kept 2 / pruned 0.001
    assert hooks.stopped_at == 1  # every layer already past 1000: growth ends at its first update
    expected = torch.zeros(4, 4)
    expected[2] = 0.1 * 0.001
    torch.testing.assert_close(layer.weight.grad, expected)
    layer.weight.grad = torch.zeros(4, 4)
    hooks.after_backward(model, 6)
    torch.testing.assert_close(layer.weight.grad, expected)  # λ held at 0.1 from then on
    state = hooks.state_dict()
    fresh = GrowingL2Hooks(GrowthSchedule(0.1, 1.0, 2, 3), 1000.0, {"0": torch.tensor([2])})
    fresh.load_state_dict(state)
    assert fresh.stopped_at == 1 and fresh.strength(100) == pytest.approx(0.1)
    unstopped = GrowingL2Hooks(GrowthSchedule(0.1, 1.0, 2, 3), 1e9, {"0": torch.tensor([2])})
    layer.weight.grad = torch.zeros(4, 4)
    unstopped.after_backward(model, 6)  # updates at t = 0, 2, 4, 6 (only t = 6 ran here): λ = 0.4
    assert unstopped.stopped_at is None and unstopped.strength(6) == pytest.approx(0.4)
    assert float(layer.weight.grad[2, 0]) == pytest.approx(0.4 * 0.001)


def test_greg_phase_picks_by_l1_shrinks_the_picked_filters_and_selects_them() -> None:
    torch.manual_seed(0)
    model = MODELS.get("resnet20").build(num_classes=4, in_channels=3)
    data = DATASETS.get("synthetic")(root=None, num_train=64, num_test=16, num_classes=4, size=8)
    layers = ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    ctx = make_context(model, layers, 0.5, data)
    magnitude = {n: model.get_submodule(n).weight.detach().abs().mean((1, 2, 3)) for n in layers}
    method = GReg(GRegHparams(delta=0.5, ceiling=2.0, update_interval=1, stabilize=5, lr=0.05))
    phase = method.phase(model, ctx)
    assert phase.recipe.max_steps == 3 * 1 + 5 + 1 and phase.recipe.lr == 0.05 and phase.recipe.weight_decay == 0.0
    assert phase.recipe.epochs == math.ceil(9 / 4)
    (hooks,) = phase.hooks
    for name in layers:  # the lower half by mean |w| of the dense model, fixed from the start
        n = magnitude[name].numel()
        assert set(hooks.pruned[name].tolist()) == set(magnitude[name].argsort()[: n // 2].tolist())
    fit(model, data, phase.recipe, device=torch.device("cpu"), seed=0, phase="phase:greg", hooks=phase.hooks)
    for name in layers:
        after = model.get_submodule(name).weight.detach().abs().mean((1, 2, 3))
        picked = hooks.pruned[name]
        kept = torch.ones_like(after, dtype=torch.bool)
        kept[picked] = False
        shrink_picked = float((after[picked] / magnitude[name][picked]).mean())
        shrink_kept = float((after[kept] / magnitude[name][kept]).mean())
        assert shrink_picked < 0.7 * shrink_kept  # λ up to 2 at lr 0.05: the picked filters decay much faster
    keep = method.select(model, ctx)
    assert all(set(keep[n].tolist()).isdisjoint(hooks.pruned[n].tolist()) for n in layers)
    assert [len(keep[n]) for n in layers] == [8, 16, 32]
