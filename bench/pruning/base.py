"""What every part of structured pruning shares: the prunable layer types, the errors, a layer's traced
dependencies, and the index helpers the slicing, coupled groups and masks use."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bench.core.errors import UserError

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


class PruningError(UserError, ValueError):
    """A user-facing pruning problem; the message names the offending layer."""


class CoupledChannels(PruningError):
    """The layer's channels meet other layers' (a residual add, a concat, a token-wise linear): a coupled group."""


class ResidualBranch(CoupledChannels):
    """The layer's channels reach a residual addition; ``deps`` holds what was found on the way (its BatchNorm)."""

    def __init__(self, message: str, deps: LayerDeps) -> None:
        super().__init__(message)
        self.deps = deps


@dataclass
class LayerDeps:
    """What must change when output channels of ``layer`` are removed."""

    layer: str  # the producing conv/linear
    batchnorm: str | None  # the BatchNorm applied (through channel-preserving ops) to its output, if any
    # (conv/linear whose INPUT channels come from this layer's output, spatial factor: 1 for conv consumers;
    #  for a Linear after flatten of C x H x W, H*W)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    # depthwise convs (groups == in == out channels) on the way to the consumers, and the BatchNorms after them:
    # channel-preserving, so they lose the same channels as the layer (MobileNet's pointwise -> depthwise)
    passthrough: list[str] = field(default_factory=list)


def is_depthwise(module: nn.Module | None) -> bool:
    """A depthwise conv (groups == in == out channels): it maps each channel to itself, so it can pass through."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def out_channels(name: str, module: nn.Module) -> int:
    """Output channels/features of a Conv2d or Linear."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise PruningError(f"layer '{name}' is a {type(module).__name__}, not an nn.Conv2d or nn.Linear")


def channel_index(name: str, indices: Tensor, n: int, keep: bool) -> Tensor:
    """Validated, sorted, unique LongTensor of channel indices in [0, n); a keep set must be non-empty."""
    index = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
    unique = torch.unique(index)
    if unique.numel() != index.numel():
        raise PruningError(f"layer '{name}': duplicate channel indices")
    if unique.numel() and (unique[0] < 0 or unique[-1] >= n):
        raise PruningError(f"layer '{name}': channel indices must lie in [0, {n})")
    if keep and not unique.numel():
        raise PruningError(f"layer '{name}': at least one channel must be kept")
    return unique
