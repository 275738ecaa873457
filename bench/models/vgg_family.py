"""CIFAR VGG-11/13/16: the ``vgg19`` family (same builder, conv-BN-ReLU, global avg pool, one linear) with other cfgs.

The OrthoReg (VGG-13) and RNI (VGG-16) papers' own variants differ in details this family does not copy: their convs
have a bias, OrthoReg's VGG-13 orders conv -> ReLU -> BN, and RNI's VGG-16 pools with AvgPool2d(2) (the same as the
global pool here for 32x32 inputs). Here convs have no bias (the BN shift makes it redundant).
"""
from __future__ import annotations

from torch import nn

from bench.models._registry import register_model
from bench.models.vgg import VGG

CFG11: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
CFG13: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
CFG16: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


@register_model("vgg11", "CIFAR VGG-11 (the vgg19 family: conv-BN-ReLU, global avg pool, 1 linear)",
                default_layers=("features.*",), default_skip=("features.0",))
def vgg11(num_classes: int, in_channels: int) -> nn.Module:
    """Build CIFAR VGG-11 (8 convs)."""
    return VGG(CFG11, num_classes, in_channels)


@register_model("vgg13", "CIFAR VGG-13 (the vgg19 family; OrthoReg's model, here without conv bias)",
                default_layers=("features.*",), default_skip=("features.0",))
def vgg13(num_classes: int, in_channels: int) -> nn.Module:
    """Build CIFAR VGG-13 (10 convs)."""
    return VGG(CFG13, num_classes, in_channels)


@register_model("vgg16", "CIFAR VGG-16 (the vgg19 family; RNI's model, here without conv bias)",
                default_layers=("features.*",), default_skip=("features.0",))
def vgg16(num_classes: int, in_channels: int) -> nn.Module:
    """Build CIFAR VGG-16 (13 convs)."""
    return VGG(CFG16, num_classes, in_channels)
