"""Seven-layer MLPs on 32x32 inputs: the trainability testbed of the TPP paper (linear and ReLU variants)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.models._registry import register_model

INPUT_SIDE = 32
WIDTH = 100
HIDDEN_LAYERS = 6


class MLP7(nn.Module):
    """Flatten -> ``layers.0`` (in->100) -> ``layers.1..5`` (100->100) -> ``classifier`` (100->num_classes).

    ``act`` (identity or ReLU) follows every hidden linear; biases on, no BatchNorm, PyTorch default init.
    """

    def __init__(self, num_classes: int, in_channels: int, activation: nn.Module) -> None:
        super().__init__()
        widths = [INPUT_SIDE * INPUT_SIDE * in_channels] + [WIDTH] * HIDDEN_LAYERS
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = activation
        self.classifier = nn.Linear(WIDTH, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.classifier(x)


@register_model(
    "mlp7_linear",
    "7-layer linear MLP (1024*C-100x6-classes, identity activations), TPP trainability testbed; 32x32 input",
    image_size=INPUT_SIDE,
    nonlinearity="linear",
    default_layers=("layers.*",),
)
def mlp7_linear(num_classes: int, in_channels: int) -> nn.Module:
    """Build the identity-activation MLP7."""
    return MLP7(num_classes, in_channels, nn.Identity())


@register_model(
    "mlp7_relu",
    "7-layer ReLU MLP (1024*C-100x6-classes), TPP trainability testbed; 32x32 input",
    image_size=INPUT_SIDE,
    nonlinearity="relu",
    default_layers=("layers.*",),
)
def mlp7_relu(num_classes: int, in_channels: int) -> nn.Module:
    """Build the ReLU MLP7."""
    return MLP7(num_classes, in_channels, nn.ReLU())
