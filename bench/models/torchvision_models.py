"""ImageNet ResNets from torchvision (random init: pretrained weights cannot be downloaded here).

``torchvision.models`` is imported only when one of these models is built: it pulls in ``torch._dynamo`` and
costs seconds at start-up, which every CLI call, pool worker and Slurm task would otherwise pay.
"""
from __future__ import annotations

import importlib

from torch import nn

from bench.models import register_model

BASIC_LAYERS = ("layer*.*.conv1",)
BOTTLENECK_LAYERS = ("layer*.*.conv1", "layer*.*.conv2")


def _build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet ``name``, swapping the stem conv for one taking ``in_channels`` inputs if needed."""
    factory = getattr(importlib.import_module("torchvision.models"), name)
    model = factory(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet18", "torchvision ResNet-18 (ImageNet architecture, random init)", default_layers=BASIC_LAYERS)
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet-18."""
    return _build("resnet18", num_classes, in_channels)


@register_model("resnet34", "torchvision ResNet-34 (ImageNet architecture, random init)", default_layers=BASIC_LAYERS)
def resnet34(num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet-34."""
    return _build("resnet34", num_classes, in_channels)


@register_model(
    "resnet50", "torchvision ResNet-50 (ImageNet architecture, random init)", default_layers=BOTTLENECK_LAYERS
)
def resnet50(num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision ResNet-50."""
    return _build("resnet50", num_classes, in_channels)
