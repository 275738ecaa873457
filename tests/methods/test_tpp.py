"""TPP: the Gram penalty and its gradient in closed form, the gradient-side terms, the strength schedule, zeroing
then removal on every supported model, resumability, and a tiny run through the command line."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench.data  # noqa: F401 - registers the datasets
import bench.models  # noqa: F401 - registers the models
from bench import ConfigError, PruneTarget, Recipe, RunContext
from bench.cli import main
from bench.pruning import prunable_layers, slim, trace_dependencies
from bench.registry import DATASETS, MODELS
from bench.train import fit, make_optimizer
from methods.tpp import (
    TPP,
    PrunedLayer,
    StrengthSchedule,
    TPPHooks,
    TPPHparams,
    decorrelation_mask,
    forward_order,
    gram_penalty,
)
from tests.conftest import tiny_suite

# A schedule short enough for tests: r = 0.25·t until t_s = 4, then stabilize.
TINY = {"delta": 0.25, "update_interval": 1, "zero_out_interval": 1}


def make_context(model_name: str, ratio: float = 0.5, size: int = 32, channels: int = 3, num_train: int = 32,
                 batch_size: int = 8) -> tuple[nn.Module, RunContext]:
    """A seeded dense model of a registered architecture and the context the runner would give TPP for it."""
    entry = MODELS.get(model_name)
    torch.manual_seed(0)
    model = entry.build(num_classes=10, in_channels=channels)
    layers = prunable_layers(model, entry.default_layers, entry.default_skip)
    shape = (1, channels, size, size)
    deps = trace_dependencies(model, torch.zeros(shape), layers)
    data = DATASETS.get("synthetic")(root=None, num_train=num_train, num_test=16, channels=channels, size=size)
    ctx = RunContext(target=PruneTarget(layers, {n: ratio for n in layers}, "layerwise"), data=data,
                     device=torch.device("cpu"), seed=0, nonlinearity=entry.nonlinearity,
                     batchnorm_of={n: d.batchnorm for n, d in deps.items()}, dense_recipe=Recipe(1, 0.1),
                     retrain=Recipe(1, 0.01, batch_size=batch_size, weight_decay=5e-4), input_shape=shape)
    return model, ctx


# ------------------------------------------------------------------------------------------------- the Gram term

def test_gram_penalty_and_gradient_match_the_closed_form_and_the_released_code() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    pruned = torch.tensor([1, 4])
    mask = decorrelation_mask(6, pruned).double()
    value = gram_penalty(weight, mask)
    (grad,) = torch.autograd.grad(value, weight)

    w = weight.detach().flatten(1)
    gram = w @ w.t()
    assert value.item() == pytest.approx(((gram * mask) ** 2).sum().item() / 36, rel=1e-12)
    assert torch.allclose(grad.flatten(1), 4 / 36 * (gram * mask) @ w, atol=1e-12)

    # The released code (opp_scheme v5): MSE of the live Gram matrix against a detached copy, pruned rows/cols zeroed.
    live = weight.flatten(1) @ weight.flatten(1).t()
    target = live.detach().clone()
    target[pruned, :] = 0
    target[:, pruned] = 0
    code_value = F.mse_loss(live, target)
    (code_grad,) = torch.autograd.grad(code_value, weight)
    assert value.item() == pytest.approx(code_value.item(), rel=1e-12)
    assert torch.allclose(grad, code_grad, atol=1e-12)


def test_kept_versus_kept_entries_get_no_penalty() -> None:
    pruned = torch.tensor([0, 3])
    mask = decorrelation_mask(5, pruned)
    kept = [1, 2, 4]
    assert all(mask[i, j] == (0 if i in kept and j in kept else 1) for i in range(5) for j in range(5))
    # Strongly correlated kept filters and zero pruned ones: nothing to penalise, no gradient.
    weight = torch.ones(5, 7)
    weight[pruned] = 0
    weight.requires_grad_(True)
    value = gram_penalty(weight, mask)
    (grad,) = torch.autograd.grad(value, weight)
    assert value.item() == 0 and not grad.any()
    # A pruned filter correlated with the kept ones is penalised, and so are the kept ones (pushed away from it).
    weight = torch.ones(5, 7, requires_grad=True)
    (grad,) = torch.autograd.grad(gram_penalty(weight, mask), weight)
    assert grad[kept].abs().sum() > 0 and grad[pruned].abs().sum() > 0


# ------------------------------------------------------------------------------------------------- the schedule

def test_schedule_reaches_the_ceiling_at_tau_over_delta_times_k_u() -> None:
    cifar = TPP(TPPHparams()).schedule()
    assert cifar.ramp_end == 100_000 and cifar.total_steps == 100_000 + 10_000 + 1
    assert cifar.strength(0) == cifar.strength(9) == 0
    assert cifar.strength(10) == pytest.approx(1e-4) and cifar.strength(19) == cifar.strength(10)
    assert cifar.strength(99_999) < 1 <= cifar.strength(100_000)
    assert cifar.strength(100_000) == pytest.approx(1.0) and cifar.strength(10**7) == cifar.strength(100_000)
    assert cifar.stabilize_elapsed(99_999) is None and cifar.stabilize_elapsed(100_123) == 123
    imagenet = TPP(TPPHparams(update_interval=5, stabilize=40_000)).schedule()
    assert imagenet.ramp_end == 50_000 and imagenet.total_steps == 90_001
    odd = StrengthSchedule(delta=0.3, ceiling=1.0, update_interval=2, stabilize=0)
    assert odd.ramp_end == 8 and odd.strength(7) == pytest.approx(0.9) and odd.strength(8) == pytest.approx(1.2)


# ------------------------------------------------------------------------------------------------- gradient-side terms

def small_conv_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-1, 1)
    return net


@pytest.mark.parametrize(("weight_reg", "bn_reg"), [(True, True), (False, True), (True, False)])
def test_after_backward_adds_r_times_the_pruned_parameters(weight_reg: bool, bn_reg: bool) -> None:
    net = small_conv_net()
    pruned = torch.tensor([1, 3])
    hparams = TPPHparams(**TINY, stabilize=5, weight_reg=weight_reg, bn_reg=bn_reg)
    hooks = TPPHooks(hparams, TPP(hparams).schedule(), [PrunedLayer("0", "1", 0, pruned)])
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    hooks.after_backward(net, step=2)  # r = 0.5
    for param, on in ((net[0].weight, weight_reg), (net[0].bias, weight_reg), (net[1].weight, bn_reg),
                      (net[1].bias, bn_reg)):
        expected = torch.zeros_like(param)
        if on:
            expected[pruned] = 0.5 * param.detach()[pruned]
        assert torch.equal(param.grad, expected)
    assert not net[3].weight.grad.any()
    for p in net.parameters():
        p.grad.zero_()
    hooks.after_backward(net, step=0)  # r = 0: nothing
    assert not any(p.grad.any() for p in net.parameters())


def test_penalty_is_lambda_times_r_times_the_gram_terms() -> None:
    net = small_conv_net()
    pruned = torch.tensor([0, 2])
    hparams = TPPHparams(**TINY, stabilize=5)
    hooks = TPPHooks(hparams, TPP(hparams).schedule(), [PrunedLayer("0", "1", 0, pruned)])
    expected = 1000 * 0.75 * gram_penalty(net[0].weight, decorrelation_mask(4, pruned))
    assert hooks.penalty(net, step=3).item() == pytest.approx(expected.item(), rel=1e-6)
    assert hooks.penalty(net, step=0) is None
    off = TPPHooks(dataclasses.replace(hparams, gram=False), hooks.schedule, hooks.layers)
    assert off.penalty(net, step=3) is None


def test_zeroing_goes_layer_by_layer_from_the_start_of_stabilize() -> None:
    net = small_conv_net()
    hparams = TPPHparams(delta=0.5, update_interval=1, zero_out_interval=3, stabilize=10)
    layers = [PrunedLayer("0", "1", 0, torch.tensor([1])), PrunedLayer("3", None, 1, torch.tensor([2]))]
    hooks = TPPHooks(hparams, TPP(hparams).schedule(), layers)  # t_s = 2: layer 0 from step 5, layer 1 from step 8
    for step, zero0, zero1 in ((1, False, False), (4, False, False), (5, True, False), (7, True, False),
                               (8, True, True)):
        test_net = copy.deepcopy(net)
        hooks.after_step(test_net, step)
        assert (not test_net[0].weight[1].any() and test_net[0].bias[1] == 0 and test_net[1].weight[1] == 0
                and test_net[1].bias[1] == 0) == zero0
        assert (not test_net[3].weight[2].any() and test_net[3].bias[2] == 0) == zero1
        assert test_net[0].weight[0].any() and test_net[3].weight[1].any()  # kept filters untouched


# ------------------------------------------------------------------------------------------------- on real models

def test_forward_order_counts_every_conv_and_linear() -> None:
    model, ctx = make_context("resnet56")
    order = forward_order(model, ctx.input_shape)
    assert len(order) == 56 and order[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"] and order[-1] == "fc"
    resnet50 = MODELS.get("resnet50").build(num_classes=10, in_channels=3)
    order = forward_order(resnet50, (1, 3, 32, 32))
    assert len(order) == 54 and order.index("layer1.0.downsample.0") == order.index("layer1.0.conv3") + 1


def test_too_short_stabilize_is_refused() -> None:
    model, ctx = make_context("resnet56")
    with pytest.raises(ConfigError, match=r"stabilize = 5000 .* 100 × 56 = 5600"):
        TPP(TPPHparams(stabilize=5000)).phase(model, ctx)


def test_too_short_stabilize_is_refused_before_any_work(write_suite, tmp_path: Path, capsys) -> None:
    suite = tiny_suite(model="mlp7_linear", methods=["l1", {"tpp": {**TINY, "zero_out_interval": 2, "stabilize": 13}}])
    results = tmp_path / "results"
    assert main(["run", str(write_suite(suite)), "--results", str(results), "--quiet"]) == 2
    assert "stabilize = 13 is shorter than zero_out_interval × conv/linear layers = 2 × 7" in capsys.readouterr().err
    assert not results.exists()


@pytest.mark.parametrize(("model_name", "channels", "expected_layers"),
                         [("mlp7_linear", 1, 6), ("resnet56", 3, 27), ("vgg19", 3, 15), ("resnet50", 3, 32)])
def test_final_step_zeroes_everything_and_removal_keeps_outputs(model_name: str, channels: int,
                                                                expected_layers: int) -> None:
    model, ctx = make_context(model_name, ratio=0.5, channels=channels)
    method = TPP(TPPHparams(**TINY, stabilize=60))
    phase = method.phase(model, ctx)
    (hooks,) = phase.hooks
    assert len(hooks.layers) == expected_layers
    assert phase.recipe.max_steps == 4 + 60 + 1 and phase.recipe.lr == 1e-3 and phase.recipe.weight_decay == 5e-4
    optimizer = make_optimizer(model, phase.recipe)
    step = phase.recipe.max_steps - 1
    x, y = torch.randn(4, channels, 32, 32), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(model(x), y) + hooks.penalty(model, step)
    optimizer.zero_grad()
    loss.backward()
    hooks.after_backward(model, step)
    optimizer.step()
    hooks.after_step(model, step)

    keep = method.select(model, ctx)
    for layer in hooks.layers:
        assert not model.get_submodule(layer.name).weight[layer.pruned].any()
        assert set(layer.pruned.tolist()).isdisjoint(keep[layer.name].tolist())
        if layer.batchnorm:
            bn = model.get_submodule(layer.batchnorm)
            assert not bn.weight[layer.pruned].any() and not bn.bias[layer.pruned].any()
    model.eval()
    probe = torch.randn(3, channels, 32, 32)
    with torch.no_grad():
        before = model(probe)
        slim(model, keep, trace_dependencies(model, torch.zeros(ctx.input_shape), ctx.target.layers))
        after = model(probe)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)


def test_the_phase_resumes_to_the_same_weights(tmp_path: Path) -> None:
    dense, ctx = make_context("resnet20", size=16, num_train=32, batch_size=8)  # 4 steps per epoch
    hparams = TPPHparams(**TINY, stabilize=22)  # 20 conv/linear layers; 4 + 22 + 1 = 27 steps, 7 epochs

    def run(checkpoint: Path | None, max_steps: int | None = None) -> tuple[nn.Module, TPP]:
        model, method = copy.deepcopy(dense), TPP(hparams)
        phase = method.phase(model, ctx)
        recipe = phase.recipe if max_steps is None else dataclasses.replace(phase.recipe, max_steps=max_steps)
        fit(model, ctx.data, recipe, device=ctx.device, seed=0, phase="phase:tpp", hooks=phase.hooks,
            checkpoint=checkpoint)
        return model, method

    whole, method = run(None)
    assert method.select(whole, ctx) is method._keep
    path = tmp_path / "phase.pt"
    run(path, max_steps=8)  # stopped after two epochs
    resumed, resumed_method = run(path)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    keep, resumed_keep = method.select(whole, ctx), resumed_method.select(resumed, ctx)
    assert all(torch.equal(keep[n], resumed_keep[n]) for n in ctx.target.layers)


# ------------------------------------------------------------------------------------------------- through the CLI

def test_tiny_run_through_the_harness(write_suite, tmp_path: Path) -> None:
    tpp = {**TINY, "zero_out_interval": 2, "stabilize": 14}  # 7 linear layers; 4 + 14 + 1 = 19 steps
    suite = tiny_suite(model="mlp7_linear", methods=[{"tpp": tpp}, "l1"], pretrain={"epochs": 1, "batch_size": 64,
                       "lr": 0.05}, retrain={"epochs": 1, "batch_size": 64, "lr": [0.01]})
    results = tmp_path / "results"
    assert main(["run", str(write_suite(suite)), "--results", str(results), "--quiet"]) == 0
    by_method = {}
    for path in results.glob("tiny/runs/*/result.json"):
        result = json.loads(path.read_text())
        by_method[result["method"]] = result
    tpp_result = by_method["tpp"]
    assert tpp_result["status"] == "ok"
    phase = tpp_result["history"]["phase"]
    assert len(phase) == 3 and phase[-1]["step"] == 19  # 8 steps per epoch (512 samples, batch 64)
    assert tpp_result["metrics"]["channels"]["layers.0"] == [50, 100]
    assert by_method["l1"]["history"]["phase"] == []
