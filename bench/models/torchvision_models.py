"""ImageNet ResNets from torchvision (random init: pretrained weights cannot be downloaded here)."""
from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from bench.models import register_model

BASIC_LAYERS = ("layer*.*.conv1",)
BOTTLENECK_LAYERS = ("layer*.*.conv1", "layer*.*.conv2")


def _build(factory: Callable[..., torchvision.models.ResNet], num_classes: int, in_channels: int) -> nn.Module:
    """Build a torchvision ResNet, swapping the stem conv for one taking ``in_channels`` inputs when needed."""
    model = factory(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet18", "torchvision ResNet-18 (ImageNet architecture, random init)", default_layers=BASIC_LAYERS)
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet-18."""
    return _build(torchvision.models.resnet18, num_classes, in_channels)


@register_model("resnet34", "torchvision ResNet-34 (ImageNet architecture, random init)", default_layers=BASIC_LAYERS)
def resnet34(num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet-34."""
    return _build(torchvision.models.resnet34, num_classes, in_channels)


@register_model(
    "resnet50", "torchvision ResNet-50 (ImageNet architecture, random init)", default_layers=BOTTLENECK_LAYERS
)
def resnet50(num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet-50."""
    return _build(torchvision.models.resnet50, num_classes, in_channels)
