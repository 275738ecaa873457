"""CIFAR ResNets of He et al. 2016 (6n+2 layers, 16/32/64 channels, option-A shortcuts): resnet20 and resnet56."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models._registry import register_model
from bench.models.init import kaiming_convs_

STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 spatially and zero-pad the new channels (parameter-free)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        half = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a ReLU between, added to the (identity or option-A) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        downsample = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(planes - in_planes) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Stem conv3x3(16)+BN+ReLU, stages ``layer1..layer3`` of ``blocks`` BasicBlocks, global avg pool, ``fc``."""

    def __init__(self, blocks: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        for i, planes in enumerate(STAGE_WIDTHS):
            stage = []
            for j in range(blocks):
                stage.append(BasicBlock(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        kaiming_convs_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model(
    "resnet20",
    "CIFAR ResNet-20 (He et al. 2016, option-A shortcuts, 0.27M params at 10 classes)",
    default_layers=("layer*.*.conv1",),
)
def resnet20(num_classes: int, in_channels: int) -> nn.Module:
    """Build ResNet-20 (3 blocks per stage)."""
    return ResNetCifar(3, num_classes, in_channels)


@register_model(
    "resnet56",
    "CIFAR ResNet-56 (He et al. 2016, option-A shortcuts, 0.85M params at 10 classes)",
    default_layers=("layer*.*.conv1",),
)
def resnet56(num_classes: int, in_channels: int) -> nn.Module:
    """Build ResNet-56 (9 blocks per stage)."""
    return ResNetCifar(9, num_classes, in_channels)
