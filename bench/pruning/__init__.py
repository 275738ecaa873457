"""Structured (filter) pruning of Conv2d / Linear layers, driven by the model's torch.fx graph.

``target`` says which layers a run prunes and how many filters (one count function, a registry of count rules);
``trace`` finds, for each layer to prune, the BatchNorm and the conv/linear layers that read its output channels;
``slice`` then removes channels physically (``slim``), zeroes them with forward hooks (``masked``) or zeroes the
parameters that produce them (``zero_pruned_``); ``groups`` and ``masking`` build coupled groups and masks on them.
"""
from bench.pruning.base import (
    BATCHNORM_TYPES,
    PRUNABLE_TYPES,
    CoupledChannels,
    LayerDeps,
    PruningError,
    ResidualBranch,
    channel_index,
    is_depthwise,
    out_channels,
)
from bench.pruning.slice import (
    masked,
    slim,
    zero_pruned_,
)
from bench.pruning.target import (
    CountRule,
    ceil_count,
    channel_counts,
    layer_ratios,
    num_pruned,
    prunable_layers,
    ratio_count,
    register_count_rule,
    select_layers,
    unmatched_patterns,
)
from bench.pruning.trace import (
    meta_copy,
    trace_dependencies,
)

__all__ = [
    "BATCHNORM_TYPES",
    "CountRule",
    "CoupledChannels",
    "LayerDeps",
    "PRUNABLE_TYPES",
    "PruningError",
    "ResidualBranch",
    "ceil_count",
    "channel_counts",
    "channel_index",
    "is_depthwise",
    "layer_ratios",
    "masked",
    "meta_copy",
    "num_pruned",
    "out_channels",
    "prunable_layers",
    "ratio_count",
    "register_count_rule",
    "select_layers",
    "slim",
    "trace_dependencies",
    "unmatched_patterns",
    "zero_pruned_",
]
