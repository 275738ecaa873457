"""Physical pruning: slimmed models must compute what masked ones do, on every registered model and edge cases."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import bench.models  # noqa: F401 - registers the models
from bench.method import PruneTarget, keep_from_scores
from bench.pruning import (
    PruningError,
    channel_counts,
    layer_ratios,
    masked,
    num_pruned,
    prunable_layers,
    slim,
    trace_dependencies,
    unmatched_patterns,
    zero_pruned_,
)
from bench.registry import MODELS


def n_params(model: nn.Module) -> int:
    """Total parameter count."""
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine params so it is not the identity in eval."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))


def random_split(
    model: nn.Module, layers: list[str], ratio: float, generator: torch.Generator
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Random (keep, pruned) sorted index sets per layer at ``ratio``."""
    keep, pruned = {}, {}
    for name, n in channel_counts(model, layers).items():
        perm = torch.randperm(n, generator=generator)
        k = num_pruned(n, ratio)
        pruned[name], keep[name] = perm[:k].sort().values, perm[k:].sort().values
    return keep, pruned


def assert_slim_matches_masked(model: nn.Module, x: Tensor, layers: list[str], seed: int = 0) -> nn.Module:
    """Slim a copy of ``model`` at ratio 0.5 and check it equals the masked original; returns the slim model."""
    g = torch.Generator().manual_seed(seed)
    randomize_batchnorm_(model, g)
    model.eval()
    deps = trace_dependencies(model, x, layers)
    keep, pruned = random_split(model, layers, 0.5, g)
    with torch.no_grad(), masked(model, pruned, deps):
        expected = model(x)
    slimmed = slim(copy.deepcopy(model), keep, deps)
    with torch.no_grad():
        actual = slimmed(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, atol=1e-5 * max(scale, 1.0), rtol=1e-4)
    assert n_params(slimmed) < n_params(model)
    assert channel_counts(slimmed, layers) == {name: len(idx) for name, idx in keep.items()}
    return slimmed


# Models whose default layers form coupled groups (residual streams, heads): tests/pruning/test_groups.py covers them.
GROUPED = ("mobilenet_v2_cifar", "vit_cifar")


@pytest.mark.parametrize("name", [n for n in sorted(MODELS) if not n.startswith("tv:") and n not in GROUPED])
def test_slim_equals_masked_on_registered_models(name: str) -> None:
    entry = MODELS.get(name)
    torch.manual_seed(0)
    model = entry.build(num_classes=10, in_channels=3)
    layers = prunable_layers(model, entry.default_layers, entry.default_skip)
    assert layers, f"{name}: default_layers match nothing"
    side = entry.image_size or 32
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    assert_slim_matches_masked(model, x, layers)


def test_zero_pruned_equals_masked() -> None:
    model = MODELS.get("resnet20").build(10, 3)
    g = torch.Generator().manual_seed(0)
    randomize_batchnorm_(model, g)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=g)
    layers = prunable_layers(model, ["layer*.*.conv1"])
    deps = trace_dependencies(model, x, layers)
    _, pruned = random_split(model, layers, 0.5, g)
    with torch.no_grad(), masked(model, pruned, deps):
        expected = model(x)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed on exit
    zero_pruned_(model, pruned, deps)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)


def test_num_pruned() -> None:
    assert num_pruned(16, 0.5) == 8
    assert num_pruned(16, 0.95) == 15
    assert num_pruned(16, 0.0) == 0
    assert num_pruned(1, 0.5) == 0
    assert num_pruned(10, 0.3) == 3  # 0.3*10 = 3.0000000000000004 must not round up to 4
    with pytest.raises(PruningError):
        num_pruned(16, 1.5)


def test_the_tpp_code_count_rule_differs_where_the_float_product_overshoots() -> None:
    """prune.count_rule: tpp_code counts as TPP's released code, min(ceil(r*N), int(0.995*N)) on the unrounded
    product: 0.28*25 = 7.000000000000001 removes 8 there and 7 here, 0.56*50 removes 29 and 28."""
    assert (num_pruned(25, 0.28, "tpp_code"), num_pruned(25, 0.28)) == (8, 7)
    assert (num_pruned(50, 0.56, "tpp_code"), num_pruned(50, 0.56)) == (29, 28)
    assert (num_pruned(16, 0.5, "tpp_code"), num_pruned(10, 0.5, "tpp_code")) == (8, 5)  # exact products agree
    assert num_pruned(1, 0.5, "tpp_code") == 0 and num_pruned(16, 0.99, "tpp_code") == 15  # int(0.995*N) caps
    assert (num_pruned(400, 0.999, "tpp_code"), num_pruned(400, 0.999)) == (398, 399)  # wide layers keep 0.5%
    scores = {"a": torch.arange(25.0)}
    kept = {rule: keep_from_scores(scores, PruneTarget(["a"], {"a": 0.28}, "layerwise", count_rule=rule))["a"]
            for rule in ("ceil", "tpp_code")}
    assert kept["ceil"].tolist() == list(range(7, 25)) and kept["tpp_code"].tolist() == list(range(8, 25))


def test_layer_ratios() -> None:
    layers = ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    assert layer_ratios(layers, 0.3) == dict.fromkeys(layers, 0.3)
    ratios = layer_ratios(layers, {"layer1.*": 0.2, "layer*.0.*": 0.7})
    assert ratios == {"layer1.0.conv1": 0.2, "layer2.0.conv1": 0.7, "layer3.0.conv1": 0.7}
    assert layer_ratios(layers, {"layer2.*": 0.5}) == {
        "layer1.0.conv1": 0.0, "layer2.0.conv1": 0.5, "layer3.0.conv1": 0.0,
    }  # fmt: skip


def test_prunable_layers_and_unmatched() -> None:
    model = MODELS.get("resnet20").build(10, 3)
    layers = prunable_layers(model, ["layer*.*.conv1"], skip=["layer3.*"])
    assert layers == [f"layer{s}.{b}.conv1" for s in (1, 2) for b in range(3)]
    assert prunable_layers(model, ["layer1.0.*"]) == ["layer1.0.conv1", "layer1.0.conv2"]  # BN excluded
    assert prunable_layers(model, ["fc", "conv1"]) == ["conv1", "fc"]  # module order, not pattern order
    assert unmatched_patterns(model, ["layer*.*.conv1", "layer9.*", "layer1.0.bn1"]) == ["layer9.*", "layer1.0.bn1"]


@pytest.mark.parametrize(
    ("model_name", "layer", "what"),
    [
        ("resnet56", "layer1.0.conv2", "residual addition"),
        ("resnet56", "conv1", "residual addition"),
        ("resnet18", "layer2.0.downsample.0", "residual addition"),
        ("resnet20", "fc", "model output"),
    ],
)
def test_blocked_layers_raise(model_name: str, layer: str, what: str) -> None:
    model = MODELS.get(model_name).build(10, 3)
    with pytest.raises(PruningError, match=rf"'{layer}' feeds .*{what}.*prune\.skip"):
        trace_dependencies(model, torch.randn(1, 3, 32, 32), [layer])


def test_unknown_layer_raises() -> None:
    model = MODELS.get("resnet20").build(10, 3)
    with pytest.raises(PruningError, match="layer1.0.bn1"):
        trace_dependencies(model, torch.randn(1, 3, 32, 32), ["layer1.0.bn1"])


class TinyVGG(nn.Module):
    """conv-BN-ReLU x2 at 2x2 output, flattened (512x2x2) into a two-layer classifier."""

    def __init__(self, use_view: bool) -> None:
        super().__init__()
        self.use_view = use_view
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 512, 3, padding=1), nn.BatchNorm2d(512), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(512 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1) if self.use_view else self.flatten(x)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("use_view", [False, True])
def test_flatten_into_linear(use_view: bool) -> None:
    model = TinyVGG(use_view)
    x = torch.randn(3, 3, 4, 4)
    layers = ["features.0", "features.4", "fc1"]
    deps = trace_dependencies(model, x, layers)
    assert deps["features.0"].batchnorm == "features.1" and deps["features.0"].consumers == [("features.4", 1)]
    assert deps["features.4"].batchnorm == "features.5" and deps["features.4"].consumers == [("fc1", 4)]
    assert deps["fc1"].batchnorm is None and deps["fc1"].consumers == [("fc2", 1)]
    slimmed = assert_slim_matches_masked(model, x, layers)
    assert slimmed.features[4].in_channels == 8 and slimmed.fc1.in_features == 256 * 4 and slimmed.fc2.in_features == 16
    assert slimmed.features[5].num_features == 256


def test_grouped_conv_raises() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(PruningError, match="grouped convolution"):
        trace_dependencies(model, torch.randn(1, 3, 8, 8), ["0"])


def test_untraceable_model_raises() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(PruningError, match="torch.fx"):
        trace_dependencies(Branchy(), torch.randn(1, 3, 4, 4), ["conv"])


def test_trace_keeps_training_mode_and_stats() -> None:
    model = MODELS.get("resnet20").build(10, 3).train()
    before = model.bn1.running_mean.clone()
    trace_dependencies(model, torch.randn(2, 3, 32, 32), ["layer1.0.conv1"])
    assert model.training and model.bn1.training and torch.equal(model.bn1.running_mean, before)


def test_slim_rejects_empty_keep() -> None:
    model = MODELS.get("resnet20").build(10, 3)
    deps = trace_dependencies(model, torch.randn(1, 3, 32, 32), ["layer1.0.conv1"])
    with pytest.raises(PruningError, match="layer1.0.conv1"):
        slim(model, {"layer1.0.conv1": torch.tensor([], dtype=torch.long)}, deps)
