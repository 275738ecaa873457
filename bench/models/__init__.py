"""Model zoo: ``ModelEntry`` records registered in ``bench.registry.MODELS`` by ``@register_model``.

Each entry carries what the harness needs besides the builder: the input size a model requires, the activation
gain OrthP re-initialisation uses, and the layers the seed papers prune by default. Importing this package
imports every submodule, so all models are registered.
"""
from __future__ import annotations

from bench.core.registry import MODELS
from bench.models import (  # imported for their registration side effect
    mlp,
    mobilenet,
    resnet34_cifar,
    resnet_cifar,
    torchvision_models,
    vgg,
    vgg_family,
    vit,
)
from bench.models._registry import NONLINEARITIES, ModelEntry, register_model

__all__ = ["MODELS", "NONLINEARITIES", "ModelEntry", "mlp", "mobilenet", "register_model", "resnet34_cifar",
           "resnet_cifar",
           "torchvision_models", "vgg", "vgg_family", "vit"]
