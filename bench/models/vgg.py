"""CIFAR VGG-19 in the EigenDamage / TPP ``vgg19_C`` style: conv-BN-ReLU stack, global average pool, one linear.

Convs have no bias (the BatchNorm shift makes it redundant); with 100 classes this gives 20,081,188 parameters
(BN affine included), the 20.08M the papers report. With conv biases it would be 20.087M.
"""
from __future__ import annotations

from torch import Tensor, nn

from bench.models._registry import register_model
from bench.models.init import kaiming_convs_

CFG19: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip


class VGG(nn.Module):
    """``features`` (Conv2d(bias=False)+BN+ReLU per number, MaxPool2d(2) per "M"), avg pool, ``classifier``."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_convs_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model(
    "vgg19",
    "CIFAR VGG-19 (EigenDamage/TPP vgg19_C: conv-BN-ReLU, global avg pool, 1 linear; 20.08M params at 100 classes)",
    default_layers=("features.*",),
    default_skip=("features.0",),
)
def vgg19(num_classes: int, in_channels: int) -> nn.Module:
    """Build CIFAR VGG-19."""
    return VGG(CFG19, num_classes, in_channels)
