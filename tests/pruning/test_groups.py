"""Coupled channel groups: Torch-Pruning's groups slice exactly, and the in-house chains agree with them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import bench.data  # noqa: F401 - registers the datasets
from bench import PruneTarget, Recipe, RunContext
from bench.groups import GroupPlan, plan_groups, slim_groups, zero_groups_
from bench.models import MODELS
from bench.models.vit import HeadAttention, ViT
from bench.pruning import PruningError, prunable_layers, select_layers
from bench.registry import DATASETS
from methods.greg import GReg, GRegHparams
from methods.l1 import L1
from methods.tpp import TPP, TPPHparams

CIFAR_MODELS = ["mlp7_relu", "mobilenet_v1", "resnet20", "resnet56", "resnet34_cifar", "vgg11", "vgg19"]  # chains only


def halves(plan: GroupPlan, seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A seeded random half of each group's units kept, and the others."""
    gen = torch.Generator().manual_seed(seed)
    keep, pruned = {}, {}
    for name, group in plan.groups.items():
        order = torch.randperm(group.size, generator=gen)
        keep[name] = torch.sort(order[: max(1, group.size // 2)]).values
        pruned[name] = torch.sort(order[max(1, group.size // 2):]).values
    return keep, pruned


def built(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS.get(name).build(num_classes=10, in_channels=3).eval()


def default_layers(model: nn.Module, name: str) -> list[str]:
    entry = MODELS.get(name)
    return select_layers(model, name, None, None, entry.default_layers, entry.default_skip)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_chains_slim_like_torch_pruning(name: str) -> None:
    """On each CIFAR model's default layers the in-house slicer and Torch-Pruning give the same slim model."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours, theirs = built(name), built(name)
    layers = default_layers(ours, name)
    plan = plan_groups(ours, x[:1], layers)
    assert {g.kind for g in plan.groups.values()} == {"chain"}
    tp_plan = plan_groups(theirs, x[:1], layers, coupled_only=True)
    assert {g.kind for g in tp_plan.groups.values()} == {"coupled"}
    assert [(g.name, g.size) for g in plan.groups.values()] == [(g.name, g.size) for g in tp_plan.groups.values()]
    keep, _ = halves(plan)
    slim_groups(ours, plan, keep)
    slim_groups(theirs, tp_plan, keep)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


class Concat(nn.Module):
    """Two conv branches concatenated on channels, read by one conv: the concatenation group type."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn_a = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([torch.relu(self.bn_a(self.a(x))), self.b(x)], dim=1)
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def assert_slim_equals_zeroed(model: nn.Module, layers: list[str], x: Tensor, kind: str) -> nn.Module:
    """Slim a seeded half of each group and check it computes what the unslimmed model with those units zeroed does."""
    plan = plan_groups(model, x[:1], layers)
    assert kind in {g.kind for g in plan.groups.values()}
    zeroed = copy.deepcopy(model)
    keep, pruned = halves(plan)
    zero_groups_(zeroed, plan_groups(zeroed, x[:1], layers), pruned)
    slim_groups(model, plan, keep)
    with torch.no_grad():
        torch.testing.assert_close(model(x), zeroed(x), rtol=1e-4, atol=1e-5)
    return model


def test_residual_stream_group_slims_exactly() -> None:
    """``layer*.*.conv2`` of torchvision's ResNet-18 prunes each stage's residual stream, stem and shortcuts too."""
    import torchvision

    torch.manual_seed(0)
    model = randomised(torchvision.models.resnet18(num_classes=10))
    layers = prunable_layers(model, ["layer*.*.conv2"])
    plan = plan_groups(model, torch.zeros(1, 3, 32, 32), layers)
    assert list(plan.groups) == ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    assert plan.groups["layer1.0.conv2"].producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert plan.groups["layer2.0.conv2"].producers == ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    slimmed = assert_slim_equals_zeroed(model, layers, torch.randn(2, 3, 32, 32), "coupled")
    assert slimmed.conv1.out_channels == 32 and slimmed.layer1[1].conv1.in_channels == 32
    assert slimmed.fc.in_features == 256 and slimmed.layer4[0].downsample[0].out_channels == 256


def test_concatenation_group_slims_exactly() -> None:
    """A branch feeding a concatenation loses its channels and the reader's matching input slice."""
    torch.manual_seed(0)
    model = randomised(Concat())
    slimmed = assert_slim_equals_zeroed(model, ["a", "b"], torch.randn(2, 3, 8, 8), "coupled")
    assert (slimmed.a.out_channels, slimmed.b.out_channels, slimmed.head.in_channels) == (3, 2, 5)


def test_layer_feeding_the_output_is_refused() -> None:
    with pytest.raises(PruningError, match="'fc' feeds the model output"):
        plan_groups(Concat(), torch.zeros(1, 3, 8, 8), ["fc"])


def stream_context(ratio: float = 0.5) -> tuple[nn.Module, RunContext]:
    """torchvision ResNet-18 with its stage-1 residual stream as the one target group, as the runner builds it."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    plan = plan_groups(model, torch.zeros(1, 3, 32, 32), ["layer1.0.conv2", "layer1.1.conv2"])
    target = PruneTarget(plan.leaders, {"layer1.0.conv2": ratio}, "layerwise", groups=dict(plan.groups))
    batchnorm_of = {m: bn for g in plan.groups.values() for m, bn in g.batchnorm_of.items()}
    data = DATASETS.get("synthetic")(root=None, num_train=32, num_test=16)
    ctx = RunContext(target=target, data=data, device=torch.device("cpu"), seed=0, nonlinearity="relu",
                     batchnorm_of=batchnorm_of, dense_recipe=Recipe(1, 0.1), retrain=Recipe(1, 0.01, batch_size=16))
    return model, ctx


def test_group_scores_are_the_mean_over_members_of_each_members_mean_abs_weight() -> None:
    model, ctx = stream_context()
    assert ctx.target.members() == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    expected = torch.stack([model.get_submodule(m).weight.detach().abs().flatten(1).mean(1)
                            for m in ctx.target.members()]).mean(0)
    method = L1(None)
    scores = method.group_scores(method.scores(model, ctx), ctx.target)
    torch.testing.assert_close(scores["layer1.0.conv2"], expected)
    keep = method.select(model, ctx)["layer1.0.conv2"]
    assert keep.tolist() == torch.sort(torch.sort(expected, stable=True).indices[32:]).values.tolist()


def test_greg_and_tpp_regularise_every_member_of_a_picked_group() -> None:
    model, ctx = stream_context()
    (hooks,) = GReg(GRegHparams()).phase(model, ctx).hooks
    assert sorted(hooks.pruned) == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert all(torch.equal(hooks.pruned["conv1"], p) and p.numel() == 32 for p in hooks.pruned.values())
    tpp = TPP(TPPHparams(stabilize=10_000))
    (hooks,) = tpp.phase(model, ctx).hooks
    assert {(layer.name, layer.batchnorm) for layer in hooks.layers} == {
        ("conv1", "bn1"), ("layer1.0.conv2", "layer1.0.bn2"), ("layer1.1.conv2", "layer1.1.bn2")}
    assert torch.equal(hooks.layers[0].pruned, torch.tensor(sorted(
        set(range(64)) - set(tpp.select(model, ctx)["layer1.0.conv2"].tolist()))))


def test_head_attention_computes_what_multihead_attention_does() -> None:
    torch.manual_seed(0)
    ours = HeadAttention(16, 4).eval()
    theirs = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
        x = torch.randn(3, 5, 16)
        torch.testing.assert_close(ours(x), theirs(x, x, x, need_weights=False)[0])


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return ViT(10, 3, image_size=8, patch=4, layers=2, num_heads=4, dim=16, mlp_dim=24).eval()


def test_attention_head_group_slims_exactly() -> None:
    """Whole heads go: a head's rows of q, k and v and its columns of the output projection."""
    layers = prunable_layers(small_vit(), ["encoder.layers.*.self_attention.[qkv]"])
    slimmed = assert_slim_equals_zeroed(small_vit(), layers, torch.randn(2, 3, 8, 8), "heads")
    attention = slimmed.encoder.layers[0].self_attention
    assert (attention.num_heads, attention.q.out_features, attention.out_proj.in_features) == (2, 8, 8)


def test_mlp_hidden_unit_group_slims_exactly() -> None:
    layers = prunable_layers(small_vit(), ["encoder.layers.*.mlp.0"])
    slimmed = assert_slim_equals_zeroed(small_vit(), layers, torch.randn(2, 3, 8, 8), "coupled")
    assert (slimmed.encoder.layers[1].mlp[0].out_features, slimmed.encoder.layers[1].mlp[3].in_features) == (12, 12)


def test_a_residual_width_through_layernorm_is_refused() -> None:
    with pytest.raises(PruningError, match="'conv_proj'.*LayerNorm.*mixes channels"):
        plan_groups(small_vit(), torch.zeros(1, 3, 8, 8), ["conv_proj"])


@pytest.mark.parametrize("name", [
    "mobilenet_v2_cifar",
    "tv:mobilenet_v2",
    "tv:googlenet",
    "tv:densenet121",
    "tv:efficientnet_b0",
])
def test_default_groups_of_grouped_models_slim_exactly(name: str) -> None:
    """One small member per family, default layers (streams, concatenations, squeeze-excitation), 32 px input."""
    model = randomised(built(name))
    assert_slim_equals_zeroed(model, default_layers(model, name), torch.randn(2, 3, 32, 32), "coupled")


def test_torch_pruning_traces_a_meta_copy_and_its_graph_holds_the_models_own_modules(caplog) -> None:
    """The graph is built without arithmetic (on the meta device) and then prunes the real model's modules."""
    import torchvision

    torch.manual_seed(0)
    model = randomised(torchvision.models.resnet18(num_classes=10))
    with caplog.at_level("DEBUG", logger="bench"):
        plan = plan_groups(model, torch.zeros(1, 3, 32, 32), prunable_layers(model, ["layer*.*.conv2"]))
    assert not [r for r in caplog.records if "failed" in r.getMessage()]  # neither fell back to a real forward
    ours = set(model.modules()) | set(model.parameters())
    bound = [n.module for n in plan.graph.module2node.values() if isinstance(n.module, (nn.Conv2d, nn.BatchNorm2d))]
    assert len(bound) == 40 and set(bound) <= ours  # the 20 convs and 20 BatchNorms, not their meta copies
    assert plan.graph.model is model


class ReadsData(nn.Module):
    """A concatenation whose forward reads a value (``.item()``), which the meta device cannot give."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Concat()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * (x.abs().sum().item() * 0 + 1)


def test_a_model_the_meta_device_cannot_run_is_traced_for_real(caplog) -> None:
    torch.manual_seed(0)
    with caplog.at_level("DEBUG", logger="bench"):
        slimmed = assert_slim_equals_zeroed(randomised(ReadsData()), ["inner.a", "inner.b"], torch.randn(2, 3, 8, 8),
                                            "coupled")
    assert sum("on the meta device failed" in r.getMessage() for r in caplog.records) == 4  # shapes and graph, twice
    assert (slimmed.inner.a.out_channels, slimmed.inner.head.in_channels) == (3, 5)
