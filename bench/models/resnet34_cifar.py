"""CIFAR ResNet-34 as OrthoReg uses it: BasicBlocks [3, 4, 6, 3] at 64-512 channels, a 3x3 stride-1 stem without
max-pool, and option-B (1x1 conv + BN) projection shortcuts where the shape changes."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models._registry import register_model
from bench.models.init import kaiming_convs_

WIDTHS = (64, 128, 256, 512)
BLOCKS = (3, 4, 6, 3)


class ProjectionBlock(nn.Module):
    """Two 3x3 conv+BN with a ReLU between, plus the identity or a 1x1 conv+BN ``shortcut``, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet34Cifar(nn.Module):
    """Stem conv3x3(64)+BN+ReLU, stages ``layer1..layer4``, global average pool, ``fc``."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        in_planes = WIDTHS[0]
        for i, (planes, blocks) in enumerate(zip(WIDTHS, BLOCKS)):
            stage = []
            for j in range(blocks):
                stage.append(ProjectionBlock(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        kaiming_convs_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model(
    "resnet34_cifar",
    "CIFAR ResNet-34 (OrthoReg: [3,4,6,3] BasicBlocks, 64-512 channels, 3x3 stem, projection shortcuts)",
    default_layers=("layer*.*.conv1",),
)
def resnet34_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """Build CIFAR ResNet-34."""
    return ResNet34Cifar(num_classes, in_channels)
