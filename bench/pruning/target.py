"""Which layers a run prunes and how many filters: layer globs, per-layer ratios, and the registry of count rules
(``num_pruned`` is the one place a ratio becomes a count)."""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from bench.core.errors import ConfigError
from bench.core.registry import COUNT_RULES
from bench.pruning.base import PRUNABLE_TYPES, PruningError, out_channels

CountRule = Callable[[int, float], int]   # (n filters, ratio) -> filters removed


def prunable_layers(model: nn.Module, patterns: Sequence[str], skip: Sequence[str] = ()) -> list[str]:
    """Names of Conv2d/Linear modules matching any fnmatch ``patterns`` and no ``skip`` pattern, in module order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
        and any(fnmatch.fnmatchcase(name, p) for p in patterns)
        and not any(fnmatch.fnmatchcase(name, s) for s in skip)
    ]


def select_layers(model: nn.Module, model_name: str, layers: Sequence[str] | None, skip: Sequence[str] | None,
                  default_layers: Sequence[str], default_skip: Sequence[str]) -> list[str]:
    """The prunable layers a suite names (``layers``/``skip`` patterns, or the model's defaults when ``layers`` is
    None), in module order; a pattern that matches nothing, or nothing left to prune, is a ConfigError."""
    patterns = list(layers) if layers is not None else list(default_layers)
    skipped = list(skip) if skip is not None else ([] if layers is not None else list(default_skip))
    missing = unmatched_patterns(model, patterns)
    if missing:
        examples = ", ".join(prunable_layers(model, ["*"])[:6])
        raise ConfigError(f"prune.layers: {', '.join(repr(p) for p in missing)} match no Conv2d or Linear layer of "
                          f"model '{model_name}'. Layer names look like: {examples}, ...")
    selected = prunable_layers(model, patterns, skipped)
    if not selected:
        raise ConfigError(f"prune.layers/skip: no layer of model '{model_name}' is left to prune.")
    return selected


def unmatched_patterns(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The patterns that match no Conv2d/Linear module, so configs can reject typos with a clear message."""
    names = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
    return [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]


def layer_ratios(layers: list[str], ratio: float | Mapping[str, float]) -> dict[str, float]:
    """Per-layer ratios: a float applies to every layer; a mapping gives the first matching pattern's ratio, else 0."""
    if not isinstance(ratio, Mapping):
        return {layer: float(ratio) for layer in layers}
    return {
        layer: next((float(r) for p, r in ratio.items() if fnmatch.fnmatchcase(layer, p)), 0.0) for layer in layers
    }


def register_count_rule(name: str) -> Callable[[CountRule], CountRule]:
    """Decorator: make ``rule(n, ratio) -> filters removed`` available to suites as ``prune.count_rule: name``."""
    def decorate(rule: CountRule) -> CountRule:
        COUNT_RULES.add(name, rule)
        return rule

    return decorate


def ratio_count(ratio: float, n: int) -> int:
    """ceil(ratio·n) of the product rounded to 6 decimals, so float noise (0.3·10 = 3.0000000000000004) does not
    count: the arithmetic of every ratio-to-count rule here, and of methods that count filters themselves."""
    return math.ceil(round(ratio * n, 6))


@register_count_rule("ceil")
def ceil_count(n: int, ratio: float) -> int:
    """The harness's rule: ``ratio_count``, at most n - 1."""
    return max(0, min(ratio_count(ratio, n), n - 1))


def num_pruned(n: int, ratio: float, rule: str = "ceil") -> int:
    """Filters to remove out of ``n`` at ``ratio`` by the registered count rule ``rule`` (``prune.count_rule``):
    the one place a ratio becomes a count."""
    if not 0.0 <= ratio <= 1.0:
        raise PruningError(f"pruning ratio must be in [0, 1], got {ratio}")
    if rule not in COUNT_RULES:
        raise PruningError(COUNT_RULES.unknown_message(rule))
    return COUNT_RULES.get(rule)(n, ratio)


def channel_counts(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """Output channels (Conv2d) or features (Linear) of each named layer."""
    return {name: out_channels(name, model.get_submodule(name)) for name in layers}
