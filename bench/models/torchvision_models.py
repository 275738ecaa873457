"""Torchvision classification models (random init: pretrained weights cannot be downloaded here).

Every builder is registered as ``tv:<name>`` from a static list; the older names ``resnet18/34/50`` stay as they
were (their run ids too). ``torchvision.models`` is imported only when one of these models is built: it pulls in
``torch._dynamo`` and costs seconds at start-up, which every CLI call, pool worker and Slurm task would otherwise
pay (listing its builders would cost that on every command).
"""
from __future__ import annotations

import importlib
from functools import partial

from torch import nn

from bench.models._registry import register_model

BASIC_LAYERS = ("layer*.*.conv1",)
BOTTLENECK_LAYERS = ("layer*.*.conv1", "layer*.*.conv2")


# torchvision 0.29's classification builders (torchvision.models.list_models(module=torchvision.models)).
TORCHVISION_CLASSIFIERS = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121", "densenet161",
    "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l",
    "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75",
    "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf",
    "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf",
    "regnet_y_800mf", "regnet_y_8gf", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t",
    "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)  # fmt: skip
# Per family (name prefix): the output layer (never pruned), the default layers and a fixed input size. By default
# every other Conv2d/Linear is pruned, in coupled groups where channels are shared; transformers default to their
# MLP hidden units (their residual width passes through LayerNorms, which mix channels).
_FAMILIES: dict[str, tuple[str, tuple[str, ...], int | None]] = {
    "alexnet": ("classifier.6", ("*",), None), "vgg": ("classifier.6", ("*",), None),
    "convnext": ("classifier.2", ("features.*.*.block.3",), None), "densenet": ("classifier", ("*",), None),
    "efficientnet": ("classifier.1", ("*",), None), "googlenet": ("fc", ("*",), None),
    "inception": ("fc", ("*",), 299), "maxvit": ("classifier.5", ("*",), 224),
    "mnasnet": ("classifier.1", ("*",), None),
    "mobilenet_v2": ("classifier.1", ("*",), None), "mobilenet_v3": ("classifier.3", ("*",), None),
    "regnet": ("fc", ("*",), None), "resne": ("fc", ("*",), None), "wide_resnet": ("fc", ("*",), None),
    "shufflenet": ("fc", ("*",), None), "squeezenet": ("classifier.1", ("*",), None),
    "swin": ("head", ("features.*.*.mlp.0",), 224), "vit": ("heads.head", ("encoder.layers.*.mlp.0",), 224),
}  # fmt: skip
_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True},
            "inception_v3": {"aux_logits": False, "init_weights": True}}


def _build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build torchvision model ``name``, swapping its first conv for one taking ``in_channels`` inputs if needed."""
    factory = getattr(importlib.import_module("torchvision.models"), name)
    model = factory(weights=None, num_classes=num_classes, **_OPTIONS.get(name, {}))
    if in_channels != 3:
        first, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        parent, _, child = first.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _family(name: str) -> tuple[str, tuple[str, ...], int | None]:
    return next(v for k, v in sorted(_FAMILIES.items(), key=lambda kv: -len(kv[0])) if name.startswith(k))


def _register(name: str) -> None:
    output, layers, size = _family(name)
    register_model(f"tv:{name}", f"torchvision {name} (random init)", image_size=size, default_layers=layers,
                   default_skip=(output,))(partial(_build, name))


for _name in TORCHVISION_CLASSIFIERS:
    _register(_name)


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


@register_model("mobilenet_v2_cifar",
                "CIFAR MobileNet-V2 (torchvision's blocks; stride-1 stem and second stage for 32x32 inputs)",
                image_size=None, default_layers=("*",), default_skip=("classifier.1",))
def mobilenet_v2_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision MobileNet-V2 with the two first downsamplings removed (the usual CIFAR variant: 4x4 at the end)."""
    settings = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                [6, 320, 1, 1]]
    mobilenetv2 = importlib.import_module("torchvision.models.mobilenetv2")
    model = mobilenetv2.MobileNetV2(num_classes=num_classes, inverted_residual_setting=settings)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model
