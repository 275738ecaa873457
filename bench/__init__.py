"""The structured-pruning benchmark harness. Methods and plugins import only what this module exports."""
from bench import legacy
from bench.core.config import Schedule
from bench.core.errors import ConfigError, UserError
from bench.core.schema import field
from bench.method import (
                          DenseVariant,
                          Method,
                          NoHparams,
                          Phase,
                          PruneTarget,
                          RunContext,
                          global_ratio,
                          keep_above_quantile,
                          keep_from_scores,
                          register_method,
                          scoped,
)
from bench.pipeline.deploy import load_model
from bench.pruning import ratio_count, register_count_rule
from bench.pruning.scores import filter_magnitude, filter_weights
from bench.training.hooks import BaseHooks, TrainHooks
from bench.training.measure import count_flops, count_parameters, counting_flops
from bench.training.ramp import Ramp
from bench.training.train import Recipe, derive_seed, evaluate

__all__ = ["BaseHooks", "ConfigError", "DenseVariant", "Method", "NoHparams", "Phase", "PruneTarget", "Ramp", "Recipe",
           "RunContext", "Schedule", "TrainHooks", "UserError", "count_flops", "count_parameters", "counting_flops",
           "derive_seed", "evaluate", "field", "filter_magnitude", "filter_weights", "global_ratio",
           "keep_above_quantile", "keep_from_scores", "load_model", "ratio_count", "scoped", "register_count_rule",
           "register_method"]

legacy.install()
