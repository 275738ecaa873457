"""OrthP (exact dynamical isometry of a pruned linear MLP) and Scratch (fresh init, dense recipe, Scratch-B budget)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import PruneTarget, Recipe, RunContext, count_flops, keep_from_scores
from bench.cli import main
from bench.config import Schedule, load_suite
from bench.data import build_dataset
from bench.grid import expand
from bench.pruning import slim, trace_dependencies
from bench.registry import MODELS
from bench.trainability import jacobian_singular_values
from methods.l1 import mean_abs_weight
from methods.orthp import OrthP, OrthPHparams, orthogonal_factor, orthogonalize_
from methods.scratch import Scratch, ScratchHparams, budget_recipe, reinitialize_
from tests.conftest import PROJECT, tiny_suite

HIDDEN = [f"layers.{i}" for i in range(6)]
INPUT_SHAPE = (1, 1, 32, 32)


def l1_pruned_mlp(name: str = "mlp7_linear", ratio: float = 0.9, seed: int = 0) -> nn.Module:
    """A freshly initialised MLP7 (one input channel) with its hidden layers L1-pruned and physically removed."""
    torch.manual_seed(seed)
    model = MODELS.get(name).build(num_classes=10, in_channels=1)
    target = PruneTarget(HIDDEN, {n: ratio for n in HIDDEN}, "layerwise")
    keep = keep_from_scores(mean_abs_weight(model, HIDDEN), target)
    slim(model, keep, trace_dependencies(model, torch.zeros(INPUT_SHAPE), HIDDEN))
    return model


def context(nonlinearity: str = "linear", seed: int = 0, dense: Recipe | None = None,
            retrain: Recipe | None = None) -> RunContext:
    """A run context on tiny synthetic data (512 samples: 8 steps per epoch at batch 64)."""
    data = build_dataset("synthetic", {"num_train": 512, "num_test": 64, "channels": 1}, None, 32)
    return RunContext(target=PruneTarget(HIDDEN, {n: 0.5 for n in HIDDEN}, "layerwise"), data=data,
                      device=torch.device("cpu"), seed=seed, nonlinearity=nonlinearity, batchnorm_of={},
                      dense_recipe=dense or Recipe(epochs=4, lr=0.05, batch_size=64),
                      retrain=retrain or Recipe(epochs=3, lr=0.01, batch_size=64), input_shape=INPUT_SHAPE)


# ------------------------------------------------------------------------------------------------------ OrthP

@pytest.mark.parametrize("shape", [(30, 8), (8, 30), (10, 10), (16, 3, 3, 3), (4, 8, 3, 3)])
def test_orthogonal_factor_is_semi_orthogonal_and_keeps_the_span(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64)
    q = orthogonal_factor(weight)
    assert q.shape == weight.shape
    m, w = q.reshape(shape[0], -1), weight.reshape(shape[0], -1)
    tall = m.shape[0] >= m.shape[1]
    gram = m.t() @ m if tall else m @ m.t()
    torch.testing.assert_close(gram, torch.eye(min(m.shape), dtype=torch.float64))
    # The same column (tall) or row (wide) space as the weight: projecting the weight onto it changes nothing.
    projected = m @ (m.t() @ w) if tall else (w @ m.t()) @ m
    torch.testing.assert_close(projected, w)


def test_orthogonal_factor_fixes_signs_so_an_orthogonal_weight_is_kept() -> None:
    torch.manual_seed(1)
    q0 = torch.linalg.qr(torch.randn(12, 5, dtype=torch.float64)).Q
    q0 = q0 * torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)  # some R diagonals would be negative
    torch.testing.assert_close(orthogonal_factor(q0), q0)
    torch.testing.assert_close(orthogonal_factor(q0.t()), q0.t())  # the wide case goes through the transpose


def test_orthogonal_factor_of_a_rank_deficient_weight_has_no_zero_column() -> None:
    weight = torch.randn(6, 4, dtype=torch.float64)
    weight[:, 2] = weight[:, 0]  # R[2, 2] == 0 up to rounding; sign(0) must not zero the column
    weight[:, 3] = 0.0           # R[3, 3] == 0 exactly
    q = orthogonal_factor(weight)
    torch.testing.assert_close(q.norm(dim=0), torch.ones(4, dtype=torch.float64))


def test_orthp_makes_every_jacobian_singular_value_of_the_pruned_linear_mlp_one() -> None:
    model = l1_pruned_mlp()
    probe = torch.randn(5, *INPUT_SHAPE[1:])
    before = jacobian_singular_values(model, probe)
    assert before.mean() < 0.1  # L1 pruning at 0.9 leaves the net far from isometry
    changed = orthogonalize_(model, 1.0)
    assert changed == [*HIDDEN, "classifier"]
    assert model.layers[0].weight.shape == (10, 1024) and model.classifier.weight.shape == (10, 10)
    sv = jacobian_singular_values(model, probe)
    assert abs(sv.mean().item() - 1.0) < 1e-4
    assert (sv - 1.0).abs().max().item() < 1e-4  # every one, not just the mean
    # The output layer 10 -> 10 is square and orthogonal in both directions.
    w = model.classifier.weight.detach().double()
    torch.testing.assert_close(w.t() @ w, torch.eye(10, dtype=torch.float64), atol=1e-5, rtol=0)


def test_orthp_gain_follows_the_model_or_the_override_and_leaves_biases_alone() -> None:
    model = l1_pruned_mlp("mlp7_relu", ratio=0.5)
    biases = [m.bias.clone() for m in (*model.layers, model.classifier)]
    OrthP(OrthPHparams()).after_slim(model, context("relu"))
    sv = torch.linalg.svdvals(model.layers[1].weight.detach().double())  # 50 x 50
    torch.testing.assert_close(sv, torch.full((50,), math.sqrt(2.0), dtype=torch.float64), atol=1e-5, rtol=0)
    for before, layer in zip(biases, (*model.layers, model.classifier)):
        assert torch.equal(before, layer.bias)
    OrthP(OrthPHparams(gain=0.5)).after_slim(model, context("relu"))
    sv = torch.linalg.svdvals(model.layers[0].weight.detach().double())  # 50 x 1024
    torch.testing.assert_close(sv, torch.full((50,), 0.5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_orthp_leaves_batchnorm_untouched_and_orthogonalises_convs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 6, 6))
    model[1].weight.data.uniform_(0.5, 2.0)
    state = {k: v.clone() for k, v in model[1].state_dict().items()}
    OrthP(OrthPHparams()).after_slim(model, context("relu"))
    for key, value in model[1].state_dict().items():
        assert torch.equal(value, state[key])
    rows = model[0].weight.detach().reshape(8, -1).double()  # 8 x 27: wide, orthonormal rows of norm sqrt(2)
    torch.testing.assert_close(rows @ rows.t(), 2.0 * torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)


def run_suite(write_suite, tmp_path: Path, **changes: object) -> dict[str, dict]:
    """Run a tiny suite through the CLI and return its result.json files by method label and LR."""
    path = write_suite(tiny_suite(**changes))
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--quiet"]) == 0
    found = {}
    for file in results.glob("*/runs/*/result.json"):
        result = json.loads(file.read_text())
        assert result["status"] == "ok", result.get("error")
        found[f"{result['method']}@{result['lr']:g}"] = result
    return found


def test_l1_plus_orthp_end_to_end_gives_jsv_one_just_after_pruning(write_suite, tmp_path: Path) -> None:
    found = run_suite(write_suite, tmp_path, model="mlp7_linear", methods=["l1", "l1 + orthp"],
                      prune={"ratios": [0.9]}, retrain={"epochs": 1, "batch_size": 64, "lr": [0.01]},
                      pretrain={"epochs": 1, "batch_size": 64, "lr": 0.01}, trainability={"samples": 4, "every": 0})
    assert set(found) == {"l1@0.01", "l1+orthp@0.01"}
    orthp, l1 = found["l1+orthp@0.01"]["metrics"], found["l1@0.01"]["metrics"]
    assert abs(orthp["jsv_pruned_mean"] - 1.0) < 1e-4
    assert orthp["jsv_pruned_max"] - orthp["jsv_pruned_min"] < 1e-4
    assert l1["jsv_pruned_mean"] < 0.5
    assert orthp["channels"] == l1["channels"] == {n: [10, 100] for n in HIDDEN}


# ------------------------------------------------------------------------------------------------------ Scratch

def test_reinitialize_is_seeded_resets_batchnorm_and_keeps_the_global_rng() -> None:
    def net() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.Flatten(), nn.Linear(32, 10))

    a, b = net(), net()
    a[1].running_mean.fill_(5.0)
    a[1].weight.data.fill_(3.0)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    reinitialize_(a, seed=7, conv_init="reset")
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG stream is untouched
    reinitialize_(b, seed=7, conv_init="reset")
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), key
    assert torch.equal(a[1].running_mean, torch.zeros(32)) and torch.equal(a[1].weight, torch.ones(32))
    reinitialize_(b, seed=8, conv_init="reset")
    assert not torch.equal(a[0].weight, b[0].weight)
    # Kaiming-normal by fan-in (16*3*3 = 144) with ReLU gain: std sqrt(2/144); PyTorch's default is far smaller.
    reinitialize_(a, seed=7, conv_init="kaiming_fan_in")
    assert a[0].weight.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.05)
    assert b[0].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 144), rel=0.05)
    reinitialize_(a, seed=7, conv_init="kaiming_fan_out")
    assert a[0].weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.05)


def test_scratch_selects_like_l1_and_reinitialises_after_removal() -> None:
    torch.manual_seed(0)
    model = MODELS.get("mlp7_linear").build(num_classes=10, in_channels=1)
    ctx = context(seed=3)
    scratch = Scratch(ScratchHparams())
    keep = scratch.select(model, ctx)
    expected = keep_from_scores(mean_abs_weight(model, HIDDEN), ctx.target)
    assert all(torch.equal(keep[n], expected[n]) for n in HIDDEN)
    slim(model, keep, trace_dependencies(model, torch.zeros(INPUT_SHAPE), HIDDEN))
    inherited = model.layers[2].weight.clone()
    scratch.after_slim(model, ctx)
    assert not torch.equal(model.layers[2].weight, inherited)
    first = model.layers[2].weight.clone()
    Scratch(ScratchHparams()).after_slim(model, ctx)
    assert torch.equal(model.layers[2].weight, first)  # a function of the run seed alone


def test_scratch_e_trains_with_the_dense_recipe_and_swept_lr_is_an_option() -> None:
    dense = Recipe(epochs=4, lr=0.05, batch_size=64, schedule=Schedule("step", [2, 3]))
    ctx = context(dense=dense, retrain=Recipe(epochs=3, lr=0.01, batch_size=64))
    assert Scratch(ScratchHparams()).retrain_recipe(ctx.retrain, ctx) == dense
    swept = Scratch(ScratchHparams(lr="swept")).retrain_recipe(ctx.retrain, ctx)
    assert swept.lr == 0.01 and swept.epochs == 4 and swept.schedule.milestones == [2, 3]


def test_budget_recipe_stretches_steps_and_milestones() -> None:
    dense = Recipe(epochs=10, lr=0.1, schedule=Schedule("step", [5, 8]))
    stretched = budget_recipe(dense, 2.5, steps_per_epoch=7)
    assert stretched.max_steps == 175 and stretched.epochs == 25
    assert stretched.schedule.milestones == [13, 20]  # 12.5 rounds half up; the dense recipe is unchanged
    assert dense.schedule.milestones == [5, 8] and dense.max_steps is None
    odd = budget_recipe(dense, 1.3, steps_per_epoch=7)
    assert odd.max_steps == 91 and odd.epochs == 13  # 91 steps = 13 whole epochs of 7


def test_scratch_b_uses_the_flops_ratio_the_runner_measured() -> None:
    torch.manual_seed(0)
    model = MODELS.get("mlp7_linear").build(num_classes=10, in_channels=1)
    ctx = context(dense=Recipe(epochs=2, lr=0.05, batch_size=64))
    scratch = Scratch(ScratchHparams(budget="B"))
    assert scratch.phase(model, ctx) is None
    dense_flops = count_flops(model, INPUT_SHAPE[1:])
    slim(model, scratch.select(model, ctx), trace_dependencies(model, torch.zeros(INPUT_SHAPE), HIDDEN))
    scratch.after_slim(model, ctx)
    # Multiply-adds: dense 1024*100 + 5*100*100 + 100*10 = 153,400; at 0.5, 1024*50 + 5*50*50 + 50*10 = 64,200.
    assert (dense_flops, count_flops(model, INPUT_SHAPE[1:])) == (2 * 153_400, 2 * 64_200)
    ctx.flops.update(dense=dense_flops, pruned=2 * 64_200)
    recipe = scratch.retrain_recipe(ctx.retrain, ctx)
    assert recipe.max_steps == round(2 * 8 * 153_400 / 64_200) == 38 and recipe.epochs == 5
    capped = Scratch(ScratchHparams(budget="B", max_factor=2)).retrain_recipe(ctx.retrain, ctx)
    assert capped.max_steps == 2 * 2 * 8 and capped.epochs == 4  # FLOPs ratio 2.39, capped at 2


def test_scratch_end_to_end_ignores_the_swept_lr_and_b_trains_longer(write_suite, tmp_path: Path) -> None:
    found = run_suite(write_suite, tmp_path, methods=["scratch", {"scratch": {"budget": "B", "label": "scratch-B"}}],
                      pretrain={"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
                      trainability={"samples": 4, "every": 0})
    a, b = found["scratch@0.05"], found["scratch@0.01"]
    assert a["history"]["retrain"] and len(a["history"]["retrain"]) == 2  # the dense recipe's 2 epochs
    assert [r["lr"] for r in a["history"]["retrain"]] == [0.05, 0.025]  # its LR and cosine schedule
    assert a["metrics"]["acc_final"] == b["metrics"]["acc_final"]
    assert [r["train_loss"] for r in a["history"]["retrain"]] == [r["train_loss"] for r in b["history"]["retrain"]]
    budget = found["scratch-B@0.05"]
    factor = budget["metrics"]["flops_dense"] / budget["metrics"]["flops_pruned"]
    assert budget["history"]["retrain"][-1]["step"] == round(2 * 8 * factor) > 2 * 8


def test_the_mlp_trainability_suite_expands_to_its_grid() -> None:
    suite = load_suite(PROJECT / "suites" / "mlp_trainability.yaml")
    runs = expand(suite)
    labels = sorted({r.method.label for r in runs})
    assert labels == ["l1", "l1+orthp", "random", "scratch", "tpp"]
    assert len(runs) == len(labels) * 1 * 2 * 3  # methods × ratio 0.9 × two LRs × three seeds
    assert {r.lr for r in runs} == {0.01, 0.001} and {r.ratio for r in runs} == {0.9}


def test_scratch_b_killed_after_pruning_resumes_with_its_flops_budget(write_suite, tmp_path: Path) -> None:
    changes = dict(methods=[{"scratch": {"budget": "B"}}], retrain={"epochs": 1, "batch_size": 64, "lr": [0.05]},
                   pretrain={"epochs": 2, "batch_size": 64, "lr": 0.05}, trainability={"samples": 4, "every": 0})
    whole = next(iter(run_suite(write_suite, tmp_path / "whole", **changes).values()))
    suite, results = write_suite(tiny_suite(**changes), "killed.yaml"), tmp_path / "killed"
    command = [sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results", str(results), "--quiet"]
    killed = subprocess.run(command, env=dict(os.environ, BENCH_FAULT="pruned:saved"), capture_output=True)
    assert killed.returncode == -9 and list(results.glob("_pruned/*/pruned.pt"))
    assert subprocess.run(command, capture_output=True).returncode == 0
    resumed = json.loads(next(results.glob("tiny/runs/*/result.json")).read_text())
    assert resumed["status"] == "ok" and len(resumed["attempts"]) == 2
    steps = [row["step"] for row in resumed["history"]["retrain"]]
    assert steps == [row["step"] for row in whole["history"]["retrain"]] and steps[-1] > 2 * 8  # longer than E
    assert resumed["metrics"]["acc_final"] == whole["metrics"]["acc_final"]
