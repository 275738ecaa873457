"""Registered models: output shapes, parameter counts of the paper configurations, in_channels and module names."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bench.models  # noqa: F401 - registers the models
from bench.models import ModelEntry
from bench.registry import MODELS

EXPECTED = {"mlp7_linear", "mlp7_relu", "resnet20", "resnet56", "vgg19", "resnet18", "resnet34", "resnet50"}


def n_params(model: nn.Module) -> int:
    """Total parameter count."""
    return sum(p.numel() for p in model.parameters())


def input_side(entry: ModelEntry) -> int:
    """A small input side every model accepts."""
    return entry.image_size or 32


def test_all_models_registered() -> None:
    assert EXPECTED <= set(MODELS)
    for name in MODELS:
        entry = MODELS.get(name)
        assert isinstance(entry, ModelEntry) and entry.description and entry.nonlinearity in ("linear", "relu")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("in_channels", [3, 1])
def test_forward_shape(name: str, in_channels: int) -> None:
    entry = MODELS.get(name)
    model = entry.build(num_classes=7, in_channels=in_channels).eval()
    side = input_side(entry)
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, side, side))
    assert out.shape == (2, 7)


def test_resnet56_params_and_names() -> None:
    model = MODELS.get("resnet56").build(10, 3)
    assert 0.84e6 <= n_params(model) <= 0.86e6
    modules = dict(model.named_modules())
    assert isinstance(modules["layer2.3.conv1"], nn.Conv2d)
    assert len([n for n in modules if n.endswith(".conv1") and n.startswith("layer")]) == 27


def test_resnet20_params() -> None:
    assert 0.26e6 <= n_params(MODELS.get("resnet20").build(10, 3)) <= 0.28e6


def test_vgg19_params() -> None:
    assert abs(n_params(MODELS.get("vgg19").build(100, 3)) - 20.08e6) <= 0.05e6


def test_mlp7_structure() -> None:
    model = MODELS.get("mlp7_relu").build(10, 3)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == [f"layers.{i}" for i in range(6)] + ["classifier"]
    assert model.layers[0].in_features == 3 * 1024 and model.classifier.out_features == 10
    assert MODELS.get("mlp7_linear").nonlinearity == "linear" and MODELS.get("mlp7_linear").image_size == 32


def test_torchvision_in_channels() -> None:
    model = MODELS.get("resnet18").build(5, 1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 5
