"""The shipped suites: every one validates and expands; the CPU ones run end to end with the numbers their issues ask.

The paper-protocol suites (ResNet56, VGG, ImageNet) need GPUs and the real datasets, so here they are only planned;
the quickstart (real Fashion-MNIST) runs whole, and ``methods_cpu.yaml`` (every regularising method on synthetic data)
too under ``-m slow``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main, prepare
from bench.data import FASHION_MNIST_SYSTEM_DIR
from tests.conftest import PROJECT

SUITES = sorted((PROJECT / "suites").glob("*.yaml"))
# The ImageNet suite starts from torchvision's released ResNet50 weights, a file only its users have.
NEEDS = {"tpp_resnet50_imagenet.yaml": ["--set", "pretrain.checkpoint=null"]}
if not FASHION_MNIST_SYSTEM_DIR.is_dir():  # a budget matched to a method counts the training set: TPP's 18,901 steps
    NEEDS["fair_mlp_budget.yaml"] = ["--set", "budget={steps: 18901}"]
    NEEDS["fair_mlp_budget_stretch.yaml"] = ["--set", "budget={steps: 18901, rule: stretch}"]


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.stem)
def test_every_shipped_suite_validates_and_expands(suite: Path, tmp_path: Path, capsys) -> None:
    assert main(["plan", str(suite), "--results", str(tmp_path), *NEEDS.get(suite.name, [])]) == 0
    out = capsys.readouterr().out
    assert " runs\n" in out and "pending" in out
    assert not any(tmp_path.iterdir())  # planning writes nothing


# The first run id of every method of some shipped suites, pinned: an option added to a method must not move the
# ids of results that already exist (declare it keyed_at_default=False), and nothing else may either.
PINNED = {
    # Re-keyed once on 2026-12-03: the prune key holds the resolved layer names instead of the patterns as written.
    "methods_cpu": {"l1": "020d9f845c5b", "orthoreg": "921d3a6d5c1e", "orthoreg_iterative": "c6843819f737",
                    "fisher": "e04e43344c8f", "rni": "3c3832ed47b6", "slimming": "90596e3a4737",
                    "ucs": "8c60a11ef9b4", "greg": "6aa063d1fb46"},
    "mlp_trainability": {"l1": "2f9be5093b70", "l1+orthp": "ac983f13b237", "random": "61b59861cd77",
                         "scratch": "fd95e8746ab4", "tpp": "267634bf45fd"},
    # a budget's options (budget.rule) must not move the ids of budgeted results made before them
    "fair_mlp_budget": {"l1": "c7e73dedb671", "random": "25899c4fd512", "l1+orthp": "ea0f8ed8e730",
                        "tpp": "e6f154cba58f"},
    "fair_mlp_budget_stretch": {"l1": "9f5e61996e93", "random": "ab4c0c28351c", "l1+orthp": "f1c0314a5c89",
                                "tpp": "87006fffc0b3"},
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_run_ids_are_pinned(name: str) -> None:
    overrides = NEEDS.get(f"{name}.yaml", [])[1::2]  # the values of its --set pairs (the same ids: see NEEDS)
    _, runs, _ = prepare(argparse.Namespace(suite=str(PROJECT / "suites" / f"{name}.yaml"), overrides=overrides,
                                            plugins=[]))
    first: dict[str, str] = {}
    for run in runs:
        first.setdefault(run.method.label, run.run_id)
    assert first == PINNED[name]


def runs_csv(results: Path, suite: str) -> pd.DataFrame:
    assert main(["report", "--results", str(results), "--suite", suite]) == 0
    return pd.read_csv(results / suite / "report" / "runs.csv")


@pytest.mark.slow  # 114 s: every method's shipped smoke suite; selftest --quick covers the phase methods by default
def test_methods_cpu_suite_runs_every_method_end_to_end(tmp_path: Path) -> None:
    assert main(["run", str(PROJECT / "suites" / "methods_cpu.yaml"), "--results", str(tmp_path), "--quiet"]) == 0
    runs = runs_csv(tmp_path, "methods_cpu")
    assert sorted(runs.method) == sorted(["l1", "orthoreg", "orthoreg_iterative", "fisher", "rni", "slimming", "ucs",
                                          "greg"])
    assert (runs.status == "ok").all()
    assert (runs.params_pruned < runs.params_dense).all() and (runs.flops_pruned < runs.flops_dense).all()
    assert runs.jsv_pruned.notna().all() and runs.acc_final.between(0, 1).all()


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; setup.sh does it)")
def test_quickstart_gives_what_the_readme_promises(tmp_path: Path) -> None:
    """The README's first command: 12 runs, all ok, smaller models, above 60% at ratio 0.5 retrained at 0.01, and a
    verdict chosen on its validation split (5,000 images held out: the dense model trained on 55,000)."""
    assert main(["run", str(PROJECT / "suites" / "quickstart.yaml"), "--results", str(tmp_path), "--quiet"]) == 0
    runs = runs_csv(tmp_path, "quickstart")
    assert len(runs) == 12 and (runs.status == "ok").all()
    assert (runs.params_pruned < runs.params_dense).all()
    # What each run spent: TPP's phase is its schedule's t_s + K_s + 1 = 1,000 + 210 + 1 steps; L1's is free.
    assert (runs[runs.method == "tpp"].cost_steps_phase == 1211).all()
    assert (runs[runs.method == "l1"][["cost_steps_phase", "cost_flops_phase"]] == 0).all().all()
    assert (runs.cost_steps_retrain == 6 * 430).all() and (runs.cost_flops_total > 0).all()
    at_half = runs[(runs.ratio_value == 0.5) & (runs.lr == 0.01)]
    assert sorted(at_half.method) == ["l1", "random", "tpp"] and (at_half.acc_final > 0.6).all()
    report = tmp_path / "quickstart" / "report"
    assert (report / "index.html").stat().st_size > 10_000
    assert runs.acc_val_final.between(0, 1).all() and runs.acc_val_pruned.notna().all()
    (dense,) = [json.loads(p.read_text()) for p in (tmp_path / "_dense").glob("*/dense.json")]
    assert dense["num_train"] == 55_000
    verdict = pd.read_csv(report / "tables" / "verdict.csv")
    assert set(verdict.selected_by) == {"validation"} and len(verdict) == 6  # 3 methods x 2 ratios
    # The headline names the largest LR gap and the method with it.
    top = runs.assign(a=runs.acc_final * 100).groupby(["ratio", "method", "lr"]).a.mean().unstack("lr")
    gap = (top.max(axis=1) - top.min(axis=1)).sort_values()
    (ratio, method), size = gap.index[-1], gap.iloc[-1]
    summary = (report / "summary.md").read_text()
    assert (f"The retraining LR alone moves accuracy by up to {size:.1f} points: {method} at ratio {ratio}"
            in summary)
