"""Named initialisations a suite can ask for instead of a model's own (``pretrain.init``).

``fan_out`` is the RNI code's (``init_model`` in its vgg16.py and resnet56.py): convolutions Kaiming-normal on
fan-out, N(0, √(2 / (k²·C_out))); linear layers N(0, 0.01) with zero bias; plain BatchNorm scale 0.5 and shift 0.
Applied in that order, before any method's dense variant (RNI's bounded BatchNorm then draws its own scales).

``torch_default`` is the OrthoReg code's (its ``models.py`` sets no init): every module with ``reset_parameters``
draws PyTorch's default again, so a conv or linear weight is U(−1/√fan_in, 1/√fan_in) (``kaiming_uniform_`` with
a = √5) and a bias U(−1/√fan_in, 1/√fan_in), a BatchNorm scale 1 and shift 0. It replaces the Kaiming-normal
fan-in init our CIFAR models set, whose weights are √6 ≈ 2.45× larger.
"""
from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("model", "fan_out", "torch_default")


@torch.no_grad()
def kaiming_convs_(model: nn.Module) -> nn.Module:
    """The CIFAR models' own initialisation of their convolutions: Kaiming-normal on fan-in for ReLU (the rest keeps
    PyTorch's defaults); one loop the ResNets, VGGs and MobileNet share."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model


@torch.no_grad()
def initialise_(model: nn.Module, name: str) -> nn.Module:
    """Re-initialise ``model`` in place with the named scheme (``model``: leave it as built); returns it."""
    if name == "model":
        return model
    if name not in INITS:
        raise ValueError(f"unknown initialisation {name!r}; known: {', '.join(INITS)}")
    if name == "torch_default":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()
        return model
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.normal_(0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 0.01)
            if m.bias is not None:
                m.bias.zero_()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            m.weight.fill_(0.5)
            m.bias.zero_()
    return model
