"""RNI: the receding regulariser's gradient profile, the bounded BatchNorm (forward, swap, slicing through the FX
slicer, slim = masked), the dense variant's optimizer groups, and the global quantile cut with its 3-channel floor."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench.models  # noqa: F401 - registers the models
from bench import ConfigError, PruneTarget, Recipe, RunContext, keep_above_quantile
from bench.cli import main
from bench.config import load_suite
from bench.grid import expand
from bench.method import quantile
from bench.pruning import (
    PruningError,
    channel_counts,
    masked,
    prunable_layers,
    slim,
    trace_dependencies,
    zero_pruned_,
)
from bench.registry import MODELS
from bench.runner import new_model
from bench.store import load_checkpoint
from methods.rni import (
    RNI,
    RecedingHooks,
    RNIHparams,
    SigmoidBatchNorm2d,
    bound_batchnorms_,
    receding_penalty,
)
from tests.conftest import tiny_suite


def penalty_gradient(w: torch.Tensor, shift: float) -> torch.Tensor:
    """dR/dw of every element of ``w`` by autograd."""
    w = w.clone().double().requires_grad_(True)
    receding_penalty(w, shift).backward()
    return w.grad


def test_gradient_peaks_near_0_015_for_b3_and_vanishes_for_important_channels() -> None:
    w = torch.linspace(-12, 6, 18001, dtype=torch.float64)
    grad = penalty_gradient(w, 3.0)
    u = torch.sigmoid(w + 3)
    torch.testing.assert_close(grad, -torch.log(u) * u * (1 - u))  # the closed form of methods.md B.2
    assert (grad >= 0).all()  # gradient descent only ever lowers w
    peak = int(grad.argmax())
    assert w[peak] == pytest.approx(-4.2, abs=0.05)
    assert torch.sigmoid(w[peak]) == pytest.approx(0.015, abs=0.002)
    at = {s: float(penalty_gradient(torch.tensor([math.log(s / (1 - s))]), 3.0)) for s in (0.27, 0.5, 0.9)}
    assert at[0.27] == pytest.approx(0.013, abs=0.001) and at[0.5] == pytest.approx(0.002, abs=0.0005)
    assert at[0.9] < 3e-4 < 0.02 * float(grad.max())
    peak0 = int(penalty_gradient(w, 0.0).argmax())
    assert torch.sigmoid(w[peak0]) == pytest.approx(0.23, abs=0.01)  # b = 0 moves the push to σ(w) ≈ 0.23


def test_penalty_value_and_hook_sum_over_all_bounded_batchnorms() -> None:
    w = torch.tensor([-2.0, 0.0, 1.5])
    u = torch.sigmoid(w + 3)
    assert float(receding_penalty(w, 3.0)) == pytest.approx(float((u * (1 - torch.log(u))).sum()), rel=1e-6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SigmoidBatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 5, 3), SigmoidBatchNorm2d(5))
    scales = torch.cat([model[1].weight, model[4].weight]).detach()
    expected = 1e-3 * float(receding_penalty(scales, 3.0))
    assert float(RecedingHooks(1e-3, 3.0).penalty(model, 0).detach()) == pytest.approx(expected, rel=1e-6)


def test_sigmoid_batchnorm_scales_by_sigmoid_without_shift() -> None:
    torch.manual_seed(0)
    bn = SigmoidBatchNorm2d(4)
    assert bn.bias is None and [n for n, _ in bn.named_parameters()] == ["weight"]
    assert 0.3 < float(bn.weight.detach().std()) < 3  # drawn from N(0, 1), not the plain BN's ones
    x = torch.randn(8, 4, 5, 5) * 3 + 1
    y = bn(x)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = torch.sigmoid(bn.weight).view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + bn.eps)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert bn.num_batches_tracked == 1 and not torch.equal(bn.running_mean, torch.zeros(4))
    bn.eval()
    z = bn(x)
    expected = torch.sigmoid(bn.weight).view(1, -1, 1, 1) * (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps)
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="affine"):
        SigmoidBatchNorm2d(4, affine=False)


def randomize_bounded_(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and scales, so eval-mode BNs are not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SigmoidBatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                m.weight.copy_(torch.randn(c, generator=generator))


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenet_v1"])
def test_bounded_batchnorm_slims_like_masked_and_stays_bounded(name: str) -> None:
    entry = MODELS.get(name)
    torch.manual_seed(0)
    model = entry.build(num_classes=10, in_channels=3)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bound_batchnorms_(model) == n_bn
    assert all(isinstance(m, SigmoidBatchNorm2d) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    g = torch.Generator().manual_seed(0)
    randomize_bounded_(model, g)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=g)
    layers = prunable_layers(model, entry.default_layers, entry.default_skip)
    deps = trace_dependencies(model, x, layers)
    assert all(d.batchnorm is not None for d in deps.values())  # traced as BatchNorms, not through
    keep, pruned = {}, {}
    for layer, n in channel_counts(model, layers).items():
        perm = torch.randperm(n, generator=g)
        pruned[layer], keep[layer] = perm[: n // 2].sort().values, perm[n // 2 :].sort().values
    with torch.no_grad(), masked(model, pruned, deps):
        expected = model(x)
    slimmed = slim(copy.deepcopy(model), keep, deps)
    with torch.no_grad():
        torch.testing.assert_close(slimmed(x), expected, atol=1e-5, rtol=1e-4)
    for layer, d in deps.items():
        for bn_name in [d.batchnorm, *d.passthrough]:
            bn = slimmed.get_submodule(bn_name)
            if isinstance(bn, nn.Conv2d):
                continue
            assert type(bn) is SigmoidBatchNorm2d and bn.bias is None and bn.num_features == len(keep[layer])
            torch.testing.assert_close(bn.weight, model.get_submodule(bn_name).weight[keep[layer]])
    with pytest.raises(PruningError, match="no affine weight and shift"):
        zero_pruned_(model, pruned, deps)  # σ(0) = 0.5: zeroing cannot silence a bounded BN


def make_context(model: nn.Module, layers: list[str], ratio: float, scope: str = "layerwise",
                 min_keep: int = 1) -> RunContext:
    """The context the runner would build for ``model`` (no data needed by RNI's selection)."""
    deps = trace_dependencies(model, torch.zeros(1, 3, 8, 8), layers)
    return RunContext(target=PruneTarget(layers, {n: ratio for n in layers}, scope, min_keep), data=None,
                      device=torch.device("cpu"), seed=0, nonlinearity="relu",
                      batchnorm_of={n: d.batchnorm for n, d in deps.items()}, dense_recipe=Recipe(1, 0.1),
                      retrain=Recipe(1, 0.01))


def two_layer_net(low: torch.Tensor, high: torch.Tensor) -> nn.Module:
    """conv-SigBN-ReLU twice; the first BN's scale parameters are ``low``, the second's ``high``."""
    model = nn.Sequential(nn.Conv2d(3, low.numel(), 3, padding=1), SigmoidBatchNorm2d(low.numel()), nn.ReLU(),
                          nn.Conv2d(low.numel(), high.numel(), 3, padding=1), SigmoidBatchNorm2d(high.numel()),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(high.numel(), 2))
    with torch.no_grad():
        model[1].weight.copy_(low)
        model[4].weight.copy_(high)
    return model


def test_global_threshold_keeps_at_least_three_per_layer_and_differs_from_layerwise() -> None:
    low = torch.linspace(-9, -6, 10)     # receded channels: σ(w) < 0.003
    high = torch.linspace(-1, 4, 20)     # important channels
    model = two_layer_net(low, high)
    layers = ["0", "3"]
    method = RNI(RNIHparams())
    keep = method.select(model, make_context(model, layers, 0.5))
    # Global 0.5-quantile of the 30 scales lies inside the high layer; the low layer keeps only its floor, its top 3.
    assert keep["0"].tolist() == [7, 8, 9]
    scores = torch.sigmoid(torch.cat([low, high]))
    threshold = float(torch.quantile(scores.double(), 0.5))
    assert keep["3"].tolist() == [i for i in range(20) if float(torch.sigmoid(high[i])) > threshold]
    assert len(keep["3"]) == 15
    layerwise = RNI(RNIHparams(scope="layerwise")).select(model, make_context(model, layers, 0.5))
    assert layerwise["0"].tolist() == list(range(5, 10)) and layerwise["3"].tolist() == list(range(10, 20))
    floor5 = RNI(RNIHparams(min_channels=5)).select(model, make_context(model, layers, 0.5))
    assert floor5["0"].tolist() == [5, 6, 7, 8, 9]
    everything = RNI(RNIHparams()).select(model, make_context(model, layers, 0.0))
    assert [len(k) for k in everything.values()] == [10, 20]


def test_the_floor_holds_when_scores_tie_at_the_threshold() -> None:
    # The code's rule counts scores >= threshold but keeps those > threshold: with the global 0.5-quantile equal to
    # a score of layer a, a would keep 2. The floor keeps a's top 3 (ties at the cut by lower index).
    a, b = torch.tensor([.1, .2, .5, .6, .7]), torch.tensor([.01, .02, .03, .04, .8, .81, .82, .83])
    keep = keep_above_quantile({"a": a, "b": b}, PruneTarget(["a", "b"], {"a": 0.5, "b": 0.5}, "global"), 3)
    assert quantile(torch.cat([a, b]), 0.5) == pytest.approx(0.5)
    assert keep["a"].tolist() == [2, 3, 4] and keep["b"].tolist() == [4, 5, 6, 7]
    tied = keep_above_quantile({"t": torch.tensor([.3, .9, .3, .3, .1])}, PruneTarget(["t"], {"t": 0.5}, "layerwise"),
                               3)  # its own median, 0.3, is tied three times
    assert tied["t"].tolist() == [0, 1, 2]


def test_global_scope_rejects_a_per_layer_profile_and_needs_bounded_batchnorms() -> None:
    model = two_layer_net(torch.zeros(6), torch.zeros(6))
    ctx = make_context(model, ["0", "3"], 0.5)
    ctx.target.ratios = {"0": 0.5, "3": 0.2}
    with pytest.raises(ConfigError, match="per-layer profile"):
        RNI(RNIHparams()).check(model, ctx.target, (1, 3, 8, 8))  # before any work
    with pytest.raises(ConfigError, match="per-layer profile"):
        RNI(RNIHparams()).select(model, ctx)
    RNI(RNIHparams(scope="layerwise")).check(model, ctx.target, (1, 3, 8, 8))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    plain(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="not followed by a BatchNorm2d"):
        RNI(RNIHparams()).select(plain, make_context(plain, ["0"], 0.5))


def test_dense_variant_swaps_batchnorms_and_gives_scales_ten_times_the_lr_without_decay() -> None:
    variant = RNI(RNIHparams(lam=1e-3, shift=0.0)).dense_variant()
    assert variant.key == {"rni": {"lam": 1e-3, "shift": 0.0, "bn_lr_factor": 10.0}}
    model = variant.prepare(MODELS.get("resnet20").build(num_classes=10, in_channels=3))
    assert sum(isinstance(m, SigmoidBatchNorm2d) for m in model.modules()) == 1 + 2 * 9
    groups = variant.param_groups(model, Recipe(epochs=1, lr=0.1, weight_decay=1e-4))
    optimizer = torch.optim.SGD(groups, lr=0.1, weight_decay=1e-4, momentum=0.9)
    scale_ids = {id(m.weight) for m in model.modules() if isinstance(m, SigmoidBatchNorm2d)}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == scale_ids
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1.0) and optimizer.param_groups[1]["weight_decay"] == 0
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    (hook,) = variant.hooks
    assert hook.lam == 1e-3 and hook.shift == 0.0
    with pytest.raises(ConfigError, match="no BatchNorm2d"):
        variant.prepare(MODELS.get("mlp7_relu").build(num_classes=10, in_channels=1))


def test_training_with_the_regulariser_recedes_only_unimportant_channels() -> None:
    """Only the penalty acts (no data loss): channels at σ(w) ≈ 0.02 fall well below, those at 0.9 barely move."""
    w = torch.tensor([-4.0, -4.0, 2.2, 2.2], requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=10.0)
    for _ in range(200):
        optimizer.zero_grad()
        receding_penalty(w, 3.0).backward()
        optimizer.step()
    importance = torch.sigmoid(w.detach())
    assert (importance[:2] < 0.005).all()
    assert (importance[2:] > 0.85).all()
    assert F.l1_loss(importance[2:], torch.sigmoid(torch.tensor([2.2, 2.2]))) < 0.05


@pytest.mark.parametrize("retrain_groups", [True, False])
def test_retraining_uses_the_bn_groups_of_the_released_code_unless_switched_off(retrain_groups: bool, write_suite,
                                                                                tmp_path: Path) -> None:
    suite = tiny_suite(model="resnet20", methods=[{"rni": {"retrain_groups": retrain_groups}}],
                       dataset={"name": "synthetic", "num_train": 64, "num_test": 32}, prune={"ratios": [0.5]},
                       pretrain={"epochs": 1, "batch_size": 32, "lr": 0.05},
                       retrain={"epochs": 2, "batch_size": 32, "lr": [0.02], "schedule": {"name": "step",
                                                                                           "milestones": [1]}},
                       trainability={"enabled": False}, latency={"enabled": False},
                       storage={"keep_checkpoints": True})
    results = tmp_path / "results"
    assert main(["run", str(write_suite(suite)), "--results", str(results), "--quiet"]) == 0
    (checkpoint,) = results.glob("tiny/runs/*/checkpoint.pt")
    groups = load_checkpoint(checkpoint)["optimizer"]["param_groups"]
    if retrain_groups:  # after the milestone: both groups decayed by 0.1, the scales still at 10x, without decay
        assert [g["lr"] for g in groups] == pytest.approx([0.002, 0.02])
        assert [g["weight_decay"] for g in groups] == [5e-4, 0.0] and len(groups[1]["params"]) == 1 + 2 * 9
    else:
        assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(0.002)


def test_pretrain_init_fan_out_is_the_rni_codes_init_model(write_suite) -> None:
    """pretrain.init: fan_out (the RNI suites): convs N(0, √(2/(k²·C_out))), linears N(0, 0.01) with zero bias, plain
    BN γ 0.5 and β 0; RNI's bounded BN, built afterwards by its dense variant, keeps its N(0, 1) scales."""
    info = SimpleNamespace(num_classes=10, in_channels=3)
    models = {}
    for method in ("l1", "rni"):
        suite = tiny_suite(model="vgg16", methods=[method], pretrain={"epochs": 0, "init": "fan_out"})
        run = expand(load_suite(write_suite(suite, name=f"{method}.yaml")))[0]
        models[method] = new_model(run, info, run.method.build())
    plain = models["l1"]
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    for conv in (convs[0], convs[-1]):  # 64 and 512 filters: the std follows the fan-out, not the fan-in
        expected = math.sqrt(2.0 / (9 * conv.out_channels))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    (linear,) = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.1) and not linear.bias.any()
    bns = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((bn.weight == 0.5).all()) and not bn.bias.any() for bn in bns)
    bounded = [m for m in models["rni"].modules() if isinstance(m, SigmoidBatchNorm2d)]
    scales = torch.cat([bn.weight.detach() for bn in bounded])
    assert len(bounded) == len(bns) and scales.std().item() == pytest.approx(1.0, rel=0.1)
    default = new_model(expand(load_suite(write_suite(tiny_suite(model="vgg16", pretrain={"epochs": 0}))))[0], info, [])
    first = next(m for m in default.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.std().item() == pytest.approx(math.sqrt(2.0 / 27), rel=0.2)  # the model's own: fan-in
