"""``ModelEntry`` and ``@register_model``: the model registry's record and decorator, apart from the package
``__init__`` so the model modules import it without a loop (timm's ``_registry.py`` habit)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.core.registry import MODELS

NONLINEARITIES = ("linear", "relu")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``build(num_classes, in_channels)`` plus the metadata suites and methods rely on."""

    build: Callable[..., nn.Module]  # build(num_classes: int, in_channels: int) -> nn.Module
    description: str  # one line, shown by `bench.py list models`
    image_size: int | None = None  # input side the model requires (mlp7_*: 32); None = any
    nonlinearity: str = "relu"  # "linear" or "relu": activation gain used by OrthP re-init (1 or sqrt 2)
    default_layers: tuple[str, ...] = ()  # glob patterns of the layers the seed papers prune on this model
    default_skip: tuple[str, ...] = ()  # glob patterns excluded from default_layers (e.g. VGG's first conv)


def register_model(
    name: str,
    description: str,
    image_size: int | None = None,
    nonlinearity: str = "relu",
    default_layers: tuple[str, ...] = (),
    default_skip: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a ``build(num_classes, in_channels)`` function as model ``name`` in ``MODELS``."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"model '{name}': nonlinearity must be one of {NONLINEARITIES}, not {nonlinearity!r}")

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(
            name,
            ModelEntry(build, description, image_size, nonlinearity, tuple(default_layers), tuple(default_skip)),
        )
        return build

    return decorate
