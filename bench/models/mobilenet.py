"""CIFAR MobileNet-V1 as OrthoReg uses it: a 3x3 stride-1 stem of 32 channels, 13 depthwise-separable blocks
(widths 64, 128s2, 128, 256s2, 256, 512s2, 512 x5, 1024s2, 1024), global average pool, one linear.

The pruned layers are the stem and the pointwise convs; each depthwise conv loses the channels of the layer feeding
it (``bench.pruning`` passes depthwise convs through), as in OrthoReg where the depthwise conv inherits them.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models._registry import register_model
from bench.models.init import kaiming_convs_

CFG: tuple[int | tuple[int, int], ...] = (
    64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024,
)  # fmt: skip


class SeparableBlock(nn.Module):
    """Depthwise 3x3 ``conv1`` + BN + ReLU, then pointwise 1x1 ``conv2`` + BN + ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride=stride, padding=1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MobileNetV1Cifar(nn.Module):
    """Stem conv3x3(32)+BN+ReLU, ``layers`` of separable blocks, global average pool, ``linear``."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks = []
        in_planes = 32
        for entry in CFG:
            planes, stride = entry if isinstance(entry, tuple) else (entry, 1)
            blocks.append(SeparableBlock(in_planes, planes, stride))
            in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        kaiming_convs_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(self.avgpool(x).flatten(1))


@register_model(
    "mobilenet_v1",
    "CIFAR MobileNet-V1 (OrthoReg: 32-channel stride-1 stem, 13 depthwise-separable blocks to 1024, 1 linear)",
    default_layers=("conv1", "layers.*.conv2"),
)
def mobilenet_v1(num_classes: int, in_channels: int) -> nn.Module:
    """Build CIFAR MobileNet-V1."""
    return MobileNetV1Cifar(num_classes, in_channels)
