"""The structured-pruning benchmark harness. Methods and plugins import only what this module exports."""
from bench.config import Schedule
from bench.deploy import load_model
from bench.errors import ConfigError, UserError
from bench.measure import count_flops, count_parameters, counting_flops
from bench.method import (
                          DenseVariant,
                          Method,
                          NoHparams,
                          Phase,
                          PruneTarget,
                          RunContext,
                          filter_weights,
                          global_ratio,
                          keep_above_quantile,
                          keep_from_scores,
                          register_method,
                          scoped,
)
from bench.schema import field
from bench.train import BaseHooks, Recipe, TrainHooks, derive_seed, evaluate

__all__ = ["BaseHooks", "ConfigError", "DenseVariant", "Method", "NoHparams", "Phase", "PruneTarget", "Recipe",
           "RunContext", "Schedule", "TrainHooks", "UserError", "count_flops", "count_parameters", "counting_flops",
           "derive_seed", "evaluate", "field", "filter_weights", "global_ratio", "keep_above_quantile", "load_model",
           "keep_from_scores", "scoped", "register_method"]
