"""The pipeline one run walks: ``setup`` (workspace, model, layers, target, recipes), ``dense`` (the shared dense
model), ``runner`` (phase, selection, removal or masks, retraining, the result; ``execute`` is the entry point) and
``metrics`` (what a model measures); ``trackers`` mirror a run to TensorBoard or MLflow as it trains."""
from __future__ import annotations

from bench.pipeline.dense import (
    MAKE_ATTEMPTS,
    BestCheckpoint,
    load_shared,
    obtain_dense,
    train_dense,
    usable_checkpoint,
)
from bench.pipeline.metrics import (
    jsv,
    jsv_probe,
    measure,
    validation_metrics,
)
from bench.pipeline.runner import (
    FINISHED,
    Pruned,
    base_result,
    execute,
    make_pruned,
    previous_attempts,
    prune_once,
    prune_stage,
    run_context,
    trainability_accuracy,
)
from bench.pipeline.setup import (
    Workspace,
    dense_recipe,
    example_input,
    group_plan,
    load_user_checkpoint,
    masking,
    model_entry,
    new_model,
    prune_target,
    retrain_recipe,
    select_layers,
    suite_performance,
    validate_runs,
)

__all__ = [
    "BestCheckpoint",
    "FINISHED",
    "MAKE_ATTEMPTS",
    "Pruned",
    "Workspace",
    "base_result",
    "dense_recipe",
    "example_input",
    "execute",
    "group_plan",
    "jsv",
    "jsv_probe",
    "load_shared",
    "load_user_checkpoint",
    "make_pruned",
    "masking",
    "measure",
    "model_entry",
    "new_model",
    "obtain_dense",
    "previous_attempts",
    "prune_once",
    "prune_stage",
    "prune_target",
    "retrain_recipe",
    "run_context",
    "select_layers",
    "suite_performance",
    "train_dense",
    "trainability_accuracy",
    "usable_checkpoint",
    "validate_runs",
    "validation_metrics",
]
