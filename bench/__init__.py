"""The structured-pruning benchmark harness. Methods import only what this module exports."""
from bench.method import (
                          DenseVariant,
                          Method,
                          NoHparams,
                          Phase,
                          PruneTarget,
                          RunContext,
                          filter_weights,
                          keep_from_scores,
                          register_method,
)
from bench.schema import field
from bench.train import BaseHooks, Recipe, TrainHooks

__all__ = ["BaseHooks", "DenseVariant", "Method", "NoHparams", "Phase", "PruneTarget", "Recipe", "RunContext",
           "TrainHooks", "field", "filter_weights", "keep_from_scores", "register_method"]
