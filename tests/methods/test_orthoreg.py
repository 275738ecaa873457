"""OrthoReg: the penalty (zero exactly for orthonormal filters, α weights, smaller-side Gram), the squared Taylor
importance against finite differences, the round fractions, global-with-floor versus layerwise selection, both
protocols through the training loop, and the depthwise pass-through that MobileNet pruning needs."""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench.data  # noqa: F401 - registers the datasets
import bench.models  # noqa: F401 - registers the models
from bench import ConfigError, PruneTarget, Recipe, RunContext, Schedule
from bench.pruning import PruningError, masked, slim, trace_dependencies, zero_pruned_
from bench.registry import DATASETS, MODELS
from bench.train import fit, make_optimizer, make_scheduler
from methods.orthoreg import (
    OrthoPenalty,
    OrthoReg,
    OrthoRegHparams,
    SegmentHooks,
    cumulative_fraction,
    drop_lowest,
    gram_deviation,
    layer_weights,
    orthogonality,
    round_fractions,
    taylor_importance,
)


def orthonormal_conv(out_channels: int, in_channels: int, kernel: int, bias: bool = False) -> nn.Conv2d:
    """A conv whose filter matrix has orthonormal rows (or columns, when it has more rows than columns)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, bias=bias)
    rows, cols = out_channels, in_channels * kernel * kernel + bias
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=torch.Generator().manual_seed(0)))
    matrix = q.t() if rows <= cols else q
    with torch.no_grad():
        conv.weight.copy_(matrix[:, : cols - bias].reshape(conv.weight.shape))
        if bias:
            conv.bias.copy_(matrix[:, -1])
    return conv


@pytest.mark.parametrize(("out_channels", "in_channels", "kernel", "bias"),
                         [(8, 4, 3, False), (8, 4, 3, True), (64, 3, 3, False), (32, 16, 1, False)])
def test_penalty_is_zero_exactly_for_orthonormal_filters(out_channels: int, in_channels: int, kernel: int,
                                                         bias: bool) -> None:
    conv = orthonormal_conv(out_channels, in_channels, kernel, bias)
    assert float(gram_deviation(conv).detach()) == pytest.approx(0.0, abs=1e-4)
    assert orthogonality(conv) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        for param in (conv.weight, conv.bias):  # still orthogonal, no longer unit norm: the penalty sees it
            if param is not None:
                param.mul_(2.0)
    assert float(gram_deviation(conv).detach()) > 1.0 and orthogonality(conv) == pytest.approx(1.0, abs=1e-5)


def test_penalty_is_entrywise_l1_of_the_smaller_gram() -> None:
    conv = nn.Conv2d(2, 3, 1, bias=False)  # 3 filters of length 2: the 2 x 2 column Gram is used
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]).view(3, 2, 1, 1))
    m = conv.weight.flatten(1)
    expected = (m.t() @ m - torch.eye(2)).abs().sum()  # [[2, 1], [1, 5]] - I -> 1 + 1 + 1 + 4
    assert float(gram_deviation(conv).detach()) == pytest.approx(float(expected.detach())) == pytest.approx(7.0)
    assert orthogonality(conv) == pytest.approx(7 / 9)


def test_layer_weights_follow_the_smaller_side() -> None:
    model = MODELS.get("mobilenet_v1").build(num_classes=10, in_channels=3)
    alphas = layer_weights(model)
    assert len(alphas) == 1 + 2 * 13 and sum(alphas.values()) == pytest.approx(1.0)
    # n_l = min(rows, columns): the stem 27, a depthwise conv 9, a pointwise conv its input width.
    ratio = alphas["layers.12.conv2"] / alphas["layers.0.conv1"]
    assert ratio == pytest.approx(math.sqrt(1024) / math.sqrt(9))
    assert alphas["conv1"] / alphas["layers.0.conv1"] == pytest.approx(math.sqrt(27) / 3)


def test_penalty_value_worked_by_hand() -> None:
    """Two layers whose Gram matrices are worked out on paper: λ Σ α_l ‖G_l − I‖₁ with α_l = √n_l / Σ √n_l'."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=True))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))  # 2 x 1: column Gram [10], n = 1
        model[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1))
        model[1].bias.copy_(torch.tensor([0.0, 1.0]))  # rows [1, 1, 0], [1, 0, 1]: row Gram [[2, 1], [1, 2]], n = 2
    # ‖[10] − 1‖₁ = 9; ‖[[1, 1], [1, 1]]‖₁ = 4; α = 1 / (1 + √2) and √2 / (1 + √2)
    expected = 0.1 * (9 * 1 + 4 * math.sqrt(2)) / (1 + math.sqrt(2))
    assert float(OrthoPenalty(0.1).penalty(model, 0).detach()) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.607107, rel=1e-5)


class FixedData:
    """One fixed training batch, served as every epoch (no augmentation): importance is then exactly reproducible."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def train_batches(self, batch_size: int, epoch_seed: int, device: torch.device) -> Iterator[tuple]:
        for start in range(0, len(self.y), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]


def test_importance_matches_the_finite_difference_loss_change() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).double()
    with torch.no_grad():
        model[0].weight.mul_(0.05)  # small filters: removing one changes the loss almost linearly
        model[0].bias.mul_(0.05)
    x, y = torch.randn(32, 3, 6, 6, dtype=torch.float64), torch.randint(0, 4, (32,))
    data = FixedData(x, y)
    scores = taylor_importance(model, ["0"], data, samples=32, batch_size=8, seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        base = F.cross_entropy(model(x), y)
        changes = []
        for f in range(6):
            probe = copy.deepcopy(model)
            probe[0].weight[f] = 0.0
            probe[0].bias[f] = 0.0
            changes.append(float(F.cross_entropy(probe(x), y) - base))
    change = torch.tensor(changes, dtype=torch.float64).abs()
    # ḡ is the mean of 4 batch gradients of mean CE = the full-batch gradient, so √I_f = |θ_f·ḡ_f| is the first-order
    # loss change of removing filter f; what is left is the second-order term, O(θ_f²).
    torch.testing.assert_close(scores["0"].double().sqrt(), change, rtol=0.02, atol=0.02 * float(change.max()))
    assert torch.equal(scores["0"].argsort(), change.argsort())
    assert model.training  # the importance pass restores the mode it found


def test_importance_stops_just_past_the_sample_budget() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 4, 4))
    seen = []

    class Counting(FixedData):
        def train_batches(self, batch_size: int, epoch_seed: int, device: torch.device) -> Iterator[tuple]:
            for batch in super().train_batches(batch_size, epoch_seed, device):
                seen.append(len(batch[1]))
                yield batch

    data = Counting(torch.randn(100, 3, 4, 4), torch.randint(0, 2, (100,)))
    taylor_importance(model, ["0"], data, samples=25, batch_size=10, seed=0, device=torch.device("cpu"))
    assert seen == [10, 10, 10]


def test_round_fractions_multiply_to_the_target() -> None:
    assert round_fractions(0.5, 2) == pytest.approx([1 / 3, 1 / 4])
    for p, n in [(0.25, 1), (0.5, 3), (0.75, 4), (0.9, 5)]:
        r = round_fractions(p, n)
        assert math.prod(1 - x for x in r) == pytest.approx(1 - p)
        for k in range(n + 1):
            assert cumulative_fraction(p, n, k) == pytest.approx(1 - math.prod(1 - x for x in r[:k]))


def test_global_ranking_with_floor_differs_from_layerwise() -> None:
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]),
              "b": torch.tensor([100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0])}
    floors = {"a": 2, "b": 2}
    globally = drop_lowest(scores, 10, floors, {})
    assert globally == {"a": set(range(8)), "b": {0, 1}}  # a stops at its floor; b gives the rest
    layerwise = drop_lowest(scores, {"a": 5, "b": 5}, floors, {})
    assert layerwise == {"a": set(range(5)), "b": set(range(5))}
    again = drop_lowest(scores, 1, floors, {"a": {0, 1}, "b": set()})  # already pruned filters are not counted
    assert again == {"a": {0, 1, 2}, "b": set()}


def make_context(model: nn.Module, layers: list[str], ratio: float, data: object, size: int = 8,
                 min_keep: int = 1) -> RunContext:
    """The context the runner would build (layerwise suite; OrthoReg ranks globally by default anyway)."""
    deps = trace_dependencies(model, torch.zeros(1, 3, size, size), layers)
    return RunContext(target=PruneTarget(layers, {n: ratio for n in layers}, "layerwise", min_keep), data=data,
                      device=torch.device("cpu"), seed=0, nonlinearity="relu",
                      batchnorm_of={n: d.batchnorm for n, d in deps.items()},
                      dense_recipe=Recipe(epochs=1, lr=0.05, batch_size=16, weight_decay=1e-4),
                      retrain=Recipe(1, 0.01), input_shape=(1, 3, size, size))


def test_early_bird_variant_turns_weight_decay_off_and_ends_at_a_tenth() -> None:
    suite_recipe = Recipe(25, 0.1, weight_decay=1e-4)  # the baselines': 25 epochs at a constant 0.1
    variant = OrthoReg(OrthoRegHparams()).dense_variant()
    assert variant.key == {"orthoreg": {"lam": 0.01, "weight_decay": 0.0}} and variant.prepare is None
    plain = variant.recipe(suite_recipe)
    assert plain.weight_decay == 0.0 and plain.schedule.name == "constant"
    code = OrthoReg(OrthoRegHparams(dense_low_lr_epochs=1)).dense_variant()
    assert code.key == {"orthoreg": {"lam": 0.01, "weight_decay": 0.0, "low_lr_epochs": 1}}
    recipe = code.recipe(suite_recipe)  # the code's 24 epochs at 0.1, then 1 at 0.01
    assert (recipe.epochs, recipe.lr, recipe.weight_decay) == (25, 0.1, 0.0)
    assert (recipe.schedule.name, recipe.schedule.milestones, recipe.schedule.gamma) == ("step", [24], 0.1)
    with pytest.raises(ConfigError, match="dense_low_lr_epochs 1 .* pretrain.schedule constant"):
        code.recipe(Recipe(25, 0.1, schedule=Schedule(name="cosine")))
    assert OrthoReg(OrthoRegHparams(lam=0)).dense_variant() is None  # the Fisher baseline shares the dense model
    assert OrthoReg(OrthoRegHparams(protocol="iterative")).dense_variant() is None
    assert OrthoReg(OrthoRegHparams()).phase(nn.Linear(1, 1), None) is None


def faint_last_stage(seed: int = 0) -> nn.Module:
    """A ResNet-20 whose last stage's conv1 filters are scaled by 1e-3: their Taylor scores rank lowest of all."""
    torch.manual_seed(seed)
    model = MODELS.get("resnet20").build(num_classes=4, in_channels=3)
    with torch.no_grad():
        for b in range(3):
            model.get_submodule(f"layer3.{b}.conv1").weight.mul_(1e-3)
    return model


@pytest.mark.parametrize(("floor_fraction", "floor_keeps", "floor"), [(0.05, "important", 4), (0.0, "important", 1),
                                                                       (0.05, "index", 4)])
def test_global_selection_stops_each_layer_at_its_floor(floor_fraction: float, floor_keeps: str, floor: int) -> None:
    """ceil(0.6 · 336) = 202 filters go, more than the 3 · 64 faint ones: each faint layer stops at its floor,
    int(0.05 · 64) + 1 = 4 (1 without the fraction), and the others give the rest. ``floor_keeps: index`` keeps
    the 4 highest indices, as the code's constrain_ratios; by default the 4 most important."""
    model = faint_last_stage()
    data = DATASETS.get("synthetic")(root=None, num_train=64, num_test=16, num_classes=4, size=8)
    layers = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    ctx = make_context(model, layers, 0.6, data)
    ctx.target.floor_keeps = floor_keeps
    method = OrthoReg(OrthoRegHparams(floor_fraction=floor_fraction, importance_samples=64, importance_batch_size=32))
    scores = method.importance(copy.deepcopy(model), ctx, 1)  # what select ranks (it zeroes what it prunes)
    keep = method.select(model, ctx)
    assert sum(len(k) for k in keep.values()) == 336 - 202
    faint = [f"layer3.{b}.conv1" for b in range(3)]
    assert [len(keep[n]) for n in faint] == [floor] * 3
    assert min(len(keep[n]) - int(floor_fraction * model.get_submodule(n).weight.shape[0]) for n in layers) >= 1
    for name in faint:
        top = set(scores[name].argsort(descending=True)[:floor].tolist())
        expected = set(range(64 - floor, 64)) if floor_keeps == "index" else top
        assert set(keep[name].tolist()) == expected
    assert top != set(range(60, 64))  # the two rules differ here: the test tells them apart


def test_prune_floor_fraction_adds_to_min_keep_for_every_global_method() -> None:
    """prune.floor_fraction makes the harness's floor int(f · n) + min_keep (the OrthoReg code's 5% + 1 with f = 0.05,
    min_keep 1), for orthoreg with its own floor_fraction at 0 too."""
    target = PruneTarget(["a"], {"a": 0.5}, "global", 1, floor_fraction=0.05)
    assert [target.floor(n) for n in (1, 16, 19, 20, 64, 512)] == [1, 1, 1, 2, 4, 26]
    assert PruneTarget(["a"], {"a": 0.5}, "global", 3).floor(64) == 3  # at its default only the constant
    assert PruneTarget(["a"], {"a": 0.5}, "global", 1, floor_fraction=0.05, floor_keeps="index").protected(64) == {
        60, 61, 62, 63}
    model = faint_last_stage()
    data = DATASETS.get("synthetic")(root=None, num_train=64, num_test=16, num_classes=4, size=8)
    layers = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    ctx = make_context(model, layers, 0.6, data)
    ctx.target.floor_fraction = 0.05
    method = OrthoReg(OrthoRegHparams(floor_fraction=0, importance_samples=64, importance_batch_size=32))
    keep = method.select(model, ctx)
    assert [len(keep[f"layer3.{b}.conv1"]) for b in range(3)] == [4, 4, 4]


def test_iterative_protocol_masks_rounds_in_the_phase_and_selects_the_rest() -> None:
    torch.manual_seed(0)
    model = MODELS.get("resnet20").build(num_classes=4, in_channels=3)
    data = DATASETS.get("synthetic")(root=None, num_train=64, num_test=16, num_classes=4, size=8)
    layers = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    ctx = make_context(model, layers, 0.5, data)
    method = OrthoReg(OrthoRegHparams(protocol="iterative", rounds=2, round_epochs=1, lr=0.01,
                                      importance_samples=32, importance_batch_size=16))
    phase = method.phase(model, ctx)
    assert phase.recipe.weight_decay == 0.0 and phase.recipe.epochs == 2 and phase.recipe.schedule.milestones == [1]
    history = fit(model, data, phase.recipe, device=torch.device("cpu"), seed=0, phase="phase:orthoreg",
                  hooks=phase.hooks)
    # the first round's importance pass (in after_step) counts in the phase's training FLOPs: epoch 1 costs that more
    first, second = history[0]["flops"], history[1]["flops"] - history[0]["flops"]
    assert first - second == phase.hooks[-1].spent_flops() > 0
    total = 3 * (16 + 32 + 64)  # 336 filters
    assert sum(len(s) for s in method.pruned.values()) == round(total / 3)  # round 1 removed r_0 = 1/3
    for name, indices in method.pruned.items():  # masked filters and their BN entries stayed at zero
        index = torch.tensor(sorted(indices), dtype=torch.long)
        assert model.get_submodule(name).weight[index].abs().sum() == 0
        bn = model.get_submodule(ctx.batchnorm_of[name])
        assert bn.weight[index].abs().sum() == 0 and bn.bias[index].abs().sum() == 0
    state = phase.hooks[-1].state_dict()
    first_round = copy.deepcopy(method.pruned)
    keep = method.select(model, ctx)
    assert sum(len(k) for k in keep.values()) == total - math.ceil(0.5 * total)
    for name in layers:  # the final round only adds to the masked filters
        assert first_round[name] <= set(range(model.get_submodule(name).weight.shape[0])) - set(keep[name].tolist())
    method.pruned = {}
    phase.hooks[-1].load_state_dict(state)
    assert method.pruned == first_round


def test_depthwise_convs_pass_through_and_are_sliced_with_their_producer() -> None:
    model = MODELS.get("mobilenet_v1").build(num_classes=10, in_channels=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    deps = trace_dependencies(model, x, ["layers.0.conv2", "layers.12.conv2", "conv1"])
    assert deps["layers.0.conv2"].passthrough == ["layers.1.conv1", "layers.1.bn1"]
    assert deps["layers.0.conv2"].consumers == [("layers.1.conv2", 1)]
    assert deps["layers.12.conv2"].passthrough == [] and deps["layers.12.conv2"].consumers == [("linear", 1)]
    assert deps["conv1"].passthrough == ["layers.0.conv1", "layers.0.bn1"]
    with pytest.raises(PruningError, match="depthwise convolution 'layers.1.conv1'.*pruned along with"):
        trace_dependencies(model, x, ["layers.1.conv1"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.bias.normal_(0, 0.5, generator=g)  # a shift: a zero channel does not stay zero through the BN
    model.eval()
    pruned = {"layers.0.conv2": torch.arange(0, 64, 2), "conv1": torch.arange(5)}
    keep = {"layers.0.conv2": torch.arange(1, 64, 2), "conv1": torch.arange(5, 32)}
    with torch.no_grad(), masked(model, pruned, deps):
        expected = model(x)
    slimmed = slim(copy.deepcopy(model), keep, {n: deps[n] for n in keep})
    dw = slimmed.get_submodule("layers.1.conv1")
    assert dw.groups == dw.in_channels == dw.out_channels == 32
    assert slimmed.get_submodule("layers.1.bn1").num_features == 32
    with torch.no_grad():
        torch.testing.assert_close(slimmed(x), expected, atol=1e-5, rtol=1e-4)
    zeroed = copy.deepcopy(model)
    zero_pruned_(zeroed, pruned, deps)
    with torch.no_grad():
        torch.testing.assert_close(zeroed(x), expected, atol=1e-5, rtol=1e-4)


def test_fisher_baseline_keeps_weight_decay_in_the_iterative_phase() -> None:
    method = OrthoReg(OrthoRegHparams(lam=0, protocol="iterative", rounds=3, round_epochs=2))
    ctx = SimpleNamespace(target=SimpleNamespace(layers=["a"]), data=SimpleNamespace(steps_per_epoch=lambda b: 4),
                          dense_recipe=Recipe(epochs=1, lr=0.1, batch_size=16, weight_decay=1e-4))
    phase = method.phase(nn.Linear(2, 2), ctx)
    assert phase.recipe.weight_decay == 1e-4 and len(phase.hooks) == 1 and phase.recipe.epochs == 6
    assert phase.hooks[0].ends == {7: 1, 15: 2}  # the last steps of rounds 1 and 2 (8 steps a round)


def epoch_lrs(recipe: Recipe) -> list[float]:
    """The LR of every epoch of ``recipe``, read off the scheduler the training loop builds."""
    optimizer = make_optimizer(nn.Linear(1, 1), recipe)
    scheduler = make_scheduler(optimizer, recipe)
    lrs = []
    for _ in range(recipe.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_code_iterative_protocol_on_vgg_schedules_every_round() -> None:
    """``between: [35, 35, 10]`` is the code's VGG path for 2 rounds: 25 ortho epochs (24 at 0.1, 1 at 0.01, wd 0),
    prune round 1, 80 epochs without the term (35 / 35 / 10 at 0.1 / 0.01 / 0.001, wd 1e-4), 25 ortho epochs again;
    round 2 is the selection."""
    method = OrthoReg(OrthoRegHparams(protocol="iterative", rounds=2, round_epochs=25, between=[35, 35, 10]))
    ctx = SimpleNamespace(target=SimpleNamespace(layers=["a"]), data=SimpleNamespace(steps_per_epoch=lambda b: 4),
                          dense_recipe=Recipe(epochs=160, lr=0.1, batch_size=128, weight_decay=1e-4))
    phase = method.phase(nn.Linear(2, 2), ctx)
    assert (phase.recipe.epochs, phase.recipe.lr, phase.recipe.weight_decay) == (130, 0.1, 0.0)
    lrs = epoch_lrs(phase.recipe)
    expected = [0.1] * 24 + [0.01] + [0.1] * 35 + [0.01] * 35 + [0.001] * 10 + [0.1] * 24 + [0.01]
    assert lrs == pytest.approx(expected)
    segments, rounds = phase.hooks
    assert segments.regularised == [True] * 25 + [False] * 80 + [True] * 25 and segments.weight_decay == 1e-4
    assert rounds.ends == {25 * 4 - 1: 1}  # after the 100th step: the end of the first 25 epochs


def test_segment_hooks_add_sgd_weight_decay_off_the_term_and_the_term_on_it() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))

    def one_step(weight_decay: float, hooks: list, step: int) -> nn.Module:
        model = copy.deepcopy(base)
        optimizer = make_optimizer(model, Recipe(1, 0.1, weight_decay=weight_decay))
        loss = F.cross_entropy(model(x), y)
        for hook in hooks:
            extra = hook.penalty(model, step)
            loss = loss if extra is None else loss + extra
        loss.backward()
        for hook in hooks:
            hook.after_backward(model, step)
        optimizer.step()
        return model

    hooks = [SegmentHooks(0.01, 1e-2, [True, False], steps_per_epoch=2)]
    off = one_step(0.0, hooks, step=2)  # epoch 1: no term, weight decay in the gradients
    sgd = one_step(1e-2, [], step=2)
    for a, b in zip(off.parameters(), sgd.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    on = one_step(0.0, hooks, step=1)  # epoch 0: the ortho term, no weight decay
    ortho = one_step(0.0, [OrthoPenalty(0.01)], step=1)
    for a, b in zip(on.parameters(), ortho.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(on[0].weight, sgd[0].weight)


@pytest.mark.parametrize("lam", [1e-2, 0.0])
def test_code_iterative_protocol_through_the_training_loop(lam: float) -> None:
    """Two rounds to 50 %: round 1 prunes a third (after the first ortho epoch; for the λ = 0 baseline on the dense
    model before any epoch), the masks stay at zero through the unregularised epochs, selection reaches 50 %."""
    torch.manual_seed(0)
    model = MODELS.get("resnet20").build(num_classes=4, in_channels=3)
    data = DATASETS.get("synthetic")(root=None, num_train=64, num_test=16, num_classes=4, size=8)
    layers = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    ctx = make_context(model, layers, 0.5, data)
    method = OrthoReg(OrthoRegHparams(lam=lam, protocol="iterative", rounds=2, round_epochs=1, between=[1], lr=0.01,
                                      importance_samples=32, importance_batch_size=16))
    phase = method.phase(model, ctx)
    total = 3 * (16 + 32 + 64)
    assert phase.recipe.epochs == (3 if lam else 1)
    assert sum(len(s) for s in method.pruned.values()) == (0 if lam else round(total / 3))
    fit(model, data, phase.recipe, device=torch.device("cpu"), seed=0, phase="phase:orthoreg", hooks=phase.hooks)
    assert sum(len(s) for s in method.pruned.values()) == round(total / 3)
    for name, indices in method.pruned.items():
        assert model.get_submodule(name).weight[torch.tensor(sorted(indices), dtype=torch.long)].abs().sum() == 0
    keep = method.select(model, ctx)
    assert sum(len(k) for k in keep.values()) == total - math.ceil(0.5 * total)


def test_phase_steps_counts_the_codes_iterative_segments() -> None:
    """With ``between`` the phase is the code's: 25 ortho epochs, 80 plain (35 + 35 + 10), 25 ortho again for two
    rounds (130 epochs); the baselines (lam 0) have only the 80 plain epochs. Budgets rely on this count."""
    dense = Recipe(epochs=25, lr=0.1, batch_size=64)

    def per_epoch(batch: int) -> int:
        return 782 if batch == 64 else 391

    code = OrthoReg(OrthoRegHparams(protocol="iterative", rounds=2, round_epochs=25, between=[35, 35, 10]))
    assert code.phase_steps(dense, dense, per_epoch) == (130 * 782, 64)
    baseline = OrthoReg(OrthoRegHparams(protocol="iterative", rounds=2, round_epochs=25, between=[40, 40, 20], lam=0))
    assert baseline.phase_steps(dense, dense, per_epoch) == (100 * 782, 64)
    plain = OrthoReg(OrthoRegHparams(protocol="iterative", rounds=3, round_epochs=10))
    assert plain.phase_steps(dense, dense, per_epoch) == (30 * 782, 64)


# ----------------------------------------------------------------------------------------- the code's init

@pytest.mark.parametrize("model_name", ["vgg13", "mobilenet_v1", "resnet34_cifar"])
def test_torch_default_init_draws_the_first_layer_as_nn_conv2d_does(model_name: str) -> None:
    """``pretrain.init: torch_default`` (the OrthoReg code sets no init) gives the first conv nn.Conv2d's own default:
    U(−1/√fan_in, 1/√fan_in), std 1/√(3·fan_in), a filter row's squared norm about 1/3; the model's own Kaiming-normal
    fan-in init has std √(2/fan_in) (√6 ≈ 2.45× larger) and squared row norms about 2. BatchNorm: scale 1, shift 0."""
    from bench.models.init import initialise_

    torch.manual_seed(0)
    own = MODELS.get(model_name).build(num_classes=100, in_channels=3)
    default = initialise_(copy.deepcopy(own), "torch_default")
    first = next(m for m in default.modules() if isinstance(m, nn.Conv2d))
    first_own = next(m for m in own.modules() if isinstance(m, nn.Conv2d))
    torch.manual_seed(1)
    reference = nn.Conv2d(3, first.out_channels, 3, padding=1, bias=False)  # PyTorch's default, another draw
    fan_in = first.weight[0].numel()
    bound = 1 / math.sqrt(fan_in)
    w = first.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
    assert w.std().item() == pytest.approx(reference.weight.std().item(), rel=0.06)
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.06)
    assert w.flatten(1).square().sum(1).mean().item() == pytest.approx(1 / 3, rel=0.08)
    assert w.mean().item() == pytest.approx(0.0, abs=0.1 * bound)
    # the model's own init is the one it replaces: 2.45x the weight scale, squared row norms near 2
    assert first_own.weight.std().item() / w.std().item() == pytest.approx(math.sqrt(6), rel=0.1)
    assert first_own.weight.detach().flatten(1).square().sum(1).mean().item() == pytest.approx(2.0, rel=0.15)
    for m in default.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.abs().max() <= 1 / math.sqrt(m.weight[0].numel())
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, nn.Linear):
            assert m.weight.abs().max() <= 1 / math.sqrt(m.in_features)
            assert m.bias.abs().max() <= 1 / math.sqrt(m.in_features) and m.bias.abs().max() > 0


# ----------------------------------------------------------------------------------------- the code's α, budget, floor

def test_code_alpha_per_layer_on_resnet34() -> None:
    """``alpha: code`` is res_train_ortho's: the stem √64 (ours √27), conv1/conv2 √min(rows, columns), a projection
    shortcut weighted with its block conv1's √C_out but counted with its own √C_in in the normaliser."""
    model = MODELS.get("resnet34_cifar").build(num_classes=100, in_channels=3)
    code, ours = layer_weights(model, "code"), layer_weights(model)
    # the normaliser: stem 8; 6 convs √64; 8 √128 + shortcut √64; 12 √256 + shortcut √128; 6 √512 + shortcut √256
    total = 8 + 6 * 8 + 8 * math.sqrt(128) + 8 + 12 * 16 + math.sqrt(128) + 6 * math.sqrt(512) + 16
    assert total == pytest.approx(272 + 9 * math.sqrt(128) + 6 * math.sqrt(512))
    expected = {"conv1": 8, "layer1.0.conv1": 8, "layer1.2.conv2": 8, "layer2.0.conv1": math.sqrt(128),
                "layer2.0.shortcut.0": math.sqrt(128), "layer3.0.shortcut.0": 16, "layer4.0.shortcut.0": math.sqrt(512),
                "layer4.2.conv2": math.sqrt(512)}
    for name, numerator in expected.items():
        assert code[name] == pytest.approx(numerator / total, rel=1e-12), name
    assert len(code) == 1 + 2 * 16 + 3
    assert sum(code.values()) == pytest.approx((total - 8 - math.sqrt(128) - 16 + math.sqrt(128) + 16
                                                + math.sqrt(512)) / total)  # > 1: the shortcuts' swap
    ours_total = math.sqrt(27) + total - 8
    assert ours["conv1"] == pytest.approx(math.sqrt(27) / ours_total)
    assert ours["layer2.0.shortcut.0"] == pytest.approx(8 / ours_total)
    # the code's stem weight is about 1.53x ours, its shortcut's about 1.41x (the normalisers differ by 0.6 %)
    assert code["conv1"] / ours["conv1"] == pytest.approx(8 / math.sqrt(27) * ours_total / total)
    assert code["layer2.0.shortcut.0"] / ours["layer2.0.shortcut.0"] == pytest.approx(1.406, abs=0.005)


def test_code_alpha_per_layer_on_mobilenet() -> None:
    """``alpha: code`` is mobile_train_ortho's: the stem √32 (ours √27), each depthwise conv √C (ours √9), each
    pointwise conv √C_in (as ours); the normaliser is the sum of the same numerators."""
    model = MODELS.get("mobilenet_v1").build(num_classes=100, in_channels=3)
    code, ours = layer_weights(model, "code"), layer_weights(model)
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024]  # each block's input
    total = math.sqrt(32) + 2 * sum(math.sqrt(c) for c in widths)
    assert code["conv1"] == pytest.approx(math.sqrt(32) / total)
    for i, c in enumerate(widths):
        assert code[f"layers.{i}.conv1"] == pytest.approx(math.sqrt(c) / total)
        assert code[f"layers.{i}.conv2"] == pytest.approx(math.sqrt(c) / total)
    assert sum(code.values()) == pytest.approx(1.0)
    ours_total = math.sqrt(27) + 13 * 3 + sum(math.sqrt(c) for c in widths)
    assert ours["layers.12.conv1"] == pytest.approx(3 / ours_total)
    assert code["layers.12.conv1"] / ours["layers.12.conv1"] == pytest.approx(32 / 3 * ours_total / total)
    with pytest.raises(ValueError, match="unknown α rule"):
        layer_weights(model, "fan_in")


def test_code_alpha_reaches_the_penalty_and_the_dense_key() -> None:
    """The rule is what OrthoPenalty sums with, and it keys the early-bird dense model (the default stays unkeyed)."""
    torch.manual_seed(0)
    model = MODELS.get("mobilenet_v1").build(num_classes=10, in_channels=3)
    deviations = {n: float(gram_deviation(m).detach()) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for rule in ("smaller_side", "code"):
        expected = 1e-3 * sum(a * deviations[n] for n, a in layer_weights(model, rule).items())
        assert float(OrthoPenalty(1e-3, rule).penalty(model, 0).detach()) == pytest.approx(expected, rel=1e-5)
    assert OrthoPenalty(1e-3, "code").penalty(model, 0) < 0.8 * OrthoPenalty(1e-3).penalty(model, 0)
    assert OrthoReg(OrthoRegHparams(alpha="code")).dense_variant().key == {
        "orthoreg": {"lam": 0.01, "weight_decay": 0.0, "alpha": "code"}}


def code_mobile_counts(scores: list[torch.Tensor], ratio: float) -> list[int]:
    """The released code's MobileNet count, written out as main.py and pruner.py do it: every layer's scores, each
    depthwise conv given a copy of the previous layer's; the floor's highest indices set to 1e7 (constrain_ratios);
    int(p · entries) lowest entries, in a stable order; each real layer loses its own entries among them."""
    entries = []  # (layer id, index, score): 0 the stem, odd the depthwise copies, even > 0 the pointwise convs
    for i, s in enumerate(scores):
        if i:
            entries += [(2 * i - 1, j, float(v)) for j, v in enumerate(scores[i - 1])]
        entries += [(2 * i, j, float(v)) for j, v in enumerate(s)]
    sizes: dict[int, int] = {}
    for layer, _, _ in entries:
        sizes[layer] = sizes.get(layer, 0) + 1
    floor = {layer: int(0.05 * n) + 1 for layer, n in sizes.items()}
    entries = [(layer, j, 1e7 if j >= sizes[layer] - floor[layer] else v) for layer, j, v in entries]
    lowest = sorted(range(len(entries)), key=lambda k: entries[k][2])[: int(ratio * len(entries))]
    return [sum(entries[k][0] == 2 * i for k in lowest) for i in range(len(scores))]


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_mobilenet_budget_in_bn_channels_matches_the_codes_count(ratio: float) -> None:
    """``budget: bn_channels`` on the MobileNet suite: p of the 10,944 BN channels (not of the 5,984 channels) go, a
    channel feeding a depthwise conv costing two; per layer the counts equal the code's procedure, written out above,
    on random scores with the code's index floor, the last layer's lowest. ``channels`` removes ceil(p · 5,984),
    fewer channels here: the last pointwise conv's cost one unit each, the others two."""
    from tests.suite.test_orthoreg_suites import suite_runs

    run = next(r for r in suite_runs("orthoreg_mobilenet_cifar100") if r.method.label == "fisher" and r.ratio == ratio)
    (method,) = run.method.build()
    assert method.hparams.budget == "bn_channels"
    from bench.runner import dense_recipe, group_plan, prune_target, retrain_recipe

    info = SimpleNamespace(num_classes=100, in_channels=3, image_size=32)
    model = MODELS.get("mobilenet_v1").build(num_classes=100, in_channels=3)
    plan = group_plan(model, run, info)
    target = prune_target(run, plan)
    target.floor_keeps = "index"  # the code's floor, so the written-out procedure applies as it is
    ctx = RunContext(target=target, data=None, device=torch.device("cpu"), seed=0, nonlinearity="relu",
                     batchnorm_of={m: bn for g in plan.groups.values() for m, bn in g.batchnorm_of.items()},
                     dense_recipe=dense_recipe(run, [method]), retrain=retrain_recipe(run))
    generator = torch.Generator().manual_seed(int(ratio * 100))
    scores = {n: torch.rand(model.get_submodule(n).weight.shape[0], generator=generator) for n in target.layers}
    scores["layers.12.conv2"] *= 0.01  # the one-unit channels rank lowest: the two budgets then part clearly
    costs = method.unit_costs(ctx, target.layers)
    assert sum(model.get_submodule(n).weight.shape[0] * costs[n] for n in target.layers) == 10944
    assert costs["layers.12.conv2"] == 1 and set(costs.values()) == {1, 2}
    method.importance = lambda model, ctx, round_index: scores  # the ranking, not the Taylor pass, is under test
    keep = method.select(model, ctx)
    pruned = [scores[n].numel() - len(keep[n]) for n in target.layers]
    assert pruned == code_mobile_counts(list(scores.values()), ratio)
    units = sum(p * costs[n] for p, n in zip(pruned, target.layers))
    assert int(ratio * 10944) <= units <= int(ratio * 10944) + 1
    method.hparams = dataclasses.replace(method.hparams, budget="channels")
    plain = method.select(model, ctx)
    assert sum(scores[n].numel() - len(plain[n]) for n in target.layers) == math.ceil(ratio * 5984) < sum(pruned)


def test_unspent_drop_keeps_one_filter_without_reassigning_its_budget() -> None:
    """``unspent: drop`` is the code's ResNet rule (main.py: a layer the global cut empties has its count lowered by
    one): the n lowest filters are taken, a layer keeps its most important one, and nothing else goes in its place.
    ``reassign`` (the default) removes the next lowest filter elsewhere instead."""
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 1.0, 6.0, 7.0, 8.0]),
              "c": torch.tensor([0.5, 9.0, 0.05])}
    floors = dict.fromkeys(scores, 1)
    dropped = drop_lowest(scores, 6, floors, {}, reassign=False)
    # the 6 lowest: c2, a0..a3, c0; a keeps a3 (its most important): 5 go, not 6
    assert dropped == {"a": {0, 1, 2}, "b": set(), "c": {0, 2}}
    reassigned = drop_lowest(scores, 6, floors, {})
    assert reassigned == {"a": {0, 1, 2}, "b": {1}, "c": {0, 2}}

    def code_rule(n: int) -> dict[str, int]:  # the code: counts from the n lowest, then a full layer gives one back
        lowest = sorted((float(v), name) for name, s in scores.items() for v in s)[:n]
        counts = {name: sum(1 for _, m in lowest if m == name) for name in scores}
        return {name: c - (c == scores[name].numel()) for name, c in counts.items()}

    for n in range(13):
        assert {k: len(v) for k, v in drop_lowest(scores, n, floors, {}, reassign=False).items()} == code_rule(n)


@pytest.mark.parametrize("between", [[], [1, 1]])
def test_iterative_protocol_starts_from_the_dense_model_it_is_given(between: list[int]) -> None:
    """By default (``start: dense``) the iterative phase trains the shared dense model as it comes, as the code at
    dc8391b starts from its 160-epoch base model: no dense variant, and building the phase re-initialises nothing."""
    torch.manual_seed(0)
    model = MODELS.get("resnet20").build(num_classes=4, in_channels=3)
    data = DATASETS.get("synthetic")(root=None, num_train=64, num_test=16, num_classes=4, size=8)
    layers = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    method = OrthoReg(OrthoRegHparams(protocol="iterative", rounds=2, round_epochs=1, between=between))
    assert method.dense_variant() is None  # it trains on the suite's shared dense model
    before = copy.deepcopy(model.state_dict())
    phase = method.phase(model, make_context(model, layers, 0.5, data))
    assert phase is not None and phase.recipe.epochs == 2 + sum(between)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("model_name", "code_over_ours", "kaiming_over_default"),
                         [("vgg13", 0.984, 4.91), ("mobilenet_v1", 0.615, 5.68), ("resnet34_cifar", 1.034, 4.90)])
def test_penalty_at_initialisation_under_the_two_rules_and_inits(model_name: str, code_over_ours: float,
                                                                  kaiming_over_default: float) -> None:
    """The measured effect docs/methods.md quotes: Σ α_l ‖G_l − I‖₁ of a seed-0 model under PyTorch's default init,
    the code's α over ours; and the models' own Kaiming-normal init over PyTorch's default (both with our α)."""
    from bench.models.init import initialise_

    def penalty(init: str, rule: str) -> float:
        torch.manual_seed(0)
        model = initialise_(MODELS.get(model_name).build(num_classes=100, in_channels=3), init)
        return float(OrthoPenalty(1.0, rule).penalty(model, 0).detach())

    default = penalty("torch_default", "smaller_side")
    assert penalty("torch_default", "code") / default == pytest.approx(code_over_ours, abs=0.0015)
    assert penalty("model", "smaller_side") / default == pytest.approx(kaiming_over_default, abs=0.015)


def test_iterative_start_scratch_is_the_code_at_869f049() -> None:
    """``start: scratch``: the code at 869f049 (base-model load commented out) trains its first 25 ortho epochs from
    scratch (24 at 0.1, 1 at 0.01, wd 0) whatever the base model's recipe: that is the dense variant; the phase then
    prunes round 1 at once and runs the 80 plain epochs (the retraining recipe's weight decay, the code's wd 1e-4)
    and the next 25 ortho epochs; round 2 is the selection."""
    hp = OrthoRegHparams(protocol="iterative", rounds=2, round_epochs=25, between=[35, 35, 10], start="scratch")
    method = OrthoReg(hp)
    variant = method.dense_variant()
    assert variant.key == {"orthoreg": {"lam": 0.01, "weight_decay": 0.0, "start": "scratch", "epochs": 25,
                                        "lr": 0.1}}
    base = Recipe(epochs=160, lr=0.1, batch_size=128, weight_decay=1e-4,
                  schedule=Schedule(name="step", milestones=[80, 120], gamma=0.1))  # the Fisher baseline's base model
    dense = variant.recipe(base)
    assert (dense.epochs, dense.lr, dense.weight_decay, dense.batch_size) == (25, 0.1, 0.0, 128)
    assert (dense.schedule.name, dense.schedule.milestones, dense.schedule.gamma) == ("step", [24], 0.1)
    pruned_first = []
    method.prune_round = lambda model, ctx, done: pruned_first.append(done)
    ctx = SimpleNamespace(target=SimpleNamespace(layers=["a"]), data=SimpleNamespace(steps_per_epoch=lambda b: 4),
                          dense_recipe=dense, retrain=Recipe(140, 0.1, weight_decay=1e-4))
    phase = method.phase(nn.Linear(2, 2), ctx)
    assert pruned_first == [1]  # round 1 prunes the ortho dense model before the phase's first step
    assert epoch_lrs(phase.recipe) == pytest.approx([0.1] * 35 + [0.01] * 35 + [0.001] * 10 + [0.1] * 24 + [0.01])
    segments, rounds = phase.hooks
    assert segments.regularised == [False] * 80 + [True] * 25 and segments.weight_decay == 1e-4
    assert rounds.ends == {} and method.phase_steps(base, base, lambda b: 4) == (105 * 4, 128)
    three = OrthoReg(dataclasses.replace(hp, rounds=3))
    three.prune_round = lambda model, ctx, done: None
    assert three.phase(nn.Linear(2, 2), ctx).hooks[1].ends == {105 * 4 - 1: 2}  # round 2 after 80 + 25 epochs
    assert OrthoReg(dataclasses.replace(hp, start="dense")).dense_variant() is None
    for bad in (dict(between=[]), dict(protocol="early_bird")):
        with pytest.raises(ConfigError, match="start: scratch is the code's iterative path"):
            OrthoReg(dataclasses.replace(hp, **bad)).dense_variant()
