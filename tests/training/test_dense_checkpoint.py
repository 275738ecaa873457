"""Which dense checkpoint is pruned (``pretrain.best_on``): the final one by default, or the best test- or
validation-accuracy epoch as the released codes do; labelled in result.json, runs.csv and the report, and never
pooled with final-checkpoint runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.config import load_suite
from bench.grid import expand
from tests.conftest import PROJECT, tiny_suite

DATA = {"name": "synthetic", "num_train": 512, "num_test": 256, "channels": 1, "size": 32, "validation": 64}


def suite(best_on: str | None, dataset: dict | None = None) -> dict:
    """Six dense epochs at a constant LR of 0.2, whose test accuracy peaks at epoch 4 (seeded), then ratio 0: the
    'pruned' model is the dense checkpoint itself."""
    pretrain = {"epochs": 6, "batch_size": 64, "lr": 0.2, "schedule": "constant"}
    if best_on is not None:
        pretrain["best_on"] = best_on
    return tiny_suite(dataset=dataset or DATA, pretrain=pretrain, prune={"ratios": [0.0]}, methods=["l1"],
                      retrain={"epochs": 0, "lr": [0.01]})


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite run with the final checkpoint, then with best_on: test, into one results folder."""
    root = tmp_path_factory.mktemp("best_on")
    for best_on in ("final", "test"):
        (root / "suite.yaml").write_text(json.dumps(suite(best_on)))
        assert main(["run", str(root / "suite.yaml"), "--results", str(root / "results"), "--quiet"]) == 0
    return root


def dense_records(root: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (root / "results/_dense").glob("*/dense.json")]
    return {r["checkpoint"]["best_on"]: r for r in records}


def test_best_on_test_prunes_the_best_test_epoch(both: Path) -> None:
    dense = dense_records(both)
    assert sorted(dense) == ["final", "test"]
    accs = [row["test_acc"] for row in dense["test"]["history"]]
    assert accs == [row["test_acc"] for row in dense["final"]["history"]]  # the same training, another choice
    best = accs.index(max(accs)) + 1
    assert best < len(accs) and max(accs) > accs[-1]  # a setting where the choice matters
    assert dense["test"]["checkpoint"] == {"best_on": "test", "epoch": best, "epochs": 6}
    assert dense["final"]["checkpoint"] == {"best_on": "final", "epoch": 6, "epochs": 6}
    assert (dense["test"]["acc"], dense["final"]["acc"]) == (max(accs), accs[-1])
    results = {r["config"]["dense"]["pretrain"].get("best_on", "final"): r["metrics"] for r in
               (json.loads(p.read_text()) for p in (both / "results/tiny/runs").glob("*/result.json"))}
    # Ratio 0 removes nothing: the model evaluated after 'pruning' is the checkpoint that was loaded.
    assert results["test"]["acc_pruned"] == max(accs) and results["final"]["acc_pruned"] == accs[-1]
    assert results["test"]["dense_checkpoint"] == {"best_on": "test", "epoch": best, "epochs": 6}


def test_the_report_labels_the_choice_and_keeps_final_runs_apart(both: Path) -> None:
    assert main(["report", "--results", str(both / "results")]) == 0
    report = both / "results/tiny/report"
    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 1 and runs.dense_checkpoint.tolist() == ["best_on_test"]
    assert runs.dense_epoch.tolist() == [dense_records(both)["test"]["checkpoint"]["epoch"]]
    summary = (report / "summary.md").read_text()
    assert "Dense checkpoint: the epoch of dense training with the best test accuracy" in summary
    # The final-checkpoint run left in the folder is listed apart, named by the difference.
    assert "another configuration: pretrain.best_on — (suite: test)" in summary


def test_dense_training_killed_after_its_best_epoch_resumes_knowing_it(both: Path, tmp_path: Path) -> None:
    """Killed at the end of epoch 5, after the best test epoch (4): the rerun resumes from the checkpoint, whose hook
    state holds the best epoch's weights, and prunes those, as the uninterrupted run did."""
    (tmp_path / "suite.yaml").write_text(json.dumps(suite("test")))
    command = [sys.executable, str(PROJECT / "bench.py"), "run", str(tmp_path / "suite.yaml"), "--results",
               str(tmp_path / "results"), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = subprocess.run(command, env=dict(env, BENCH_FAULT="dense:epoch:5"), capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert not list((tmp_path / "results/_dense").glob("*/dense.json"))  # dense training was cut short
    assert subprocess.run(command, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    (resumed,) = dense_records(tmp_path).values()
    expected = dense_records(both)["test"]
    assert resumed["checkpoint"] == expected["checkpoint"] and resumed["checkpoint"]["epoch"] < 5
    assert resumed["acc"] == expected["acc"]
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in expected["history"]]
    (result,) = (json.loads(p.read_text()) for p in (tmp_path / "results/tiny/runs").glob("*/result.json"))
    assert result["metrics"]["acc_pruned"] == expected["acc"]  # ratio 0: the restored best epoch itself


def test_best_on_validation_picks_on_the_split(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(json.dumps(suite("validation")))
    assert main(["run", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "results"), "--quiet"]) == 0
    (record,) = dense_records(tmp_path).values()
    val = [row["val_acc"] for row in record["history"]]
    assert record["checkpoint"]["epoch"] == val.index(max(val)) + 1 < len(val)  # a setting where the choice matters
    assert record["acc"] == record["history"][record["checkpoint"]["epoch"] - 1]["test_acc"]


def test_best_on_validation_without_a_split_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    no_split = {k: v for k, v in DATA.items() if k != "validation"}
    (tmp_path / "suite.yaml").write_text(json.dumps(suite("validation", no_split)))
    assert main(["run", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "pretrain.best_on: validation" in err and "validation: N" in err
    assert "Traceback" not in err and not (tmp_path / "results").exists()


def test_best_on_enters_the_dense_id_only_when_set(write_suite) -> None:
    ids = {name: [(r.dense_id, r.run_id) for r in expand(load_suite(write_suite(suite(best_on), name=f"{name}.yaml")))]
           for name, best_on in (("unset", None), ("final", "final"), ("test", "test"))}
    assert ids["unset"] == ids["final"]
    assert ids["test"][0][0] != ids["final"][0][0] and ids["test"][0][1] != ids["final"][0][1]


def test_a_loaded_checkpoint_refuses_best_on_and_init(tmp_path: Path, capsys) -> None:
    """pretrain.checkpoint loads a trained model: nothing is trained, so there is no epoch to pick or init to apply."""
    weights = tmp_path / "dense.pt"
    weights.write_bytes(b"not read: the suite is refused first")
    for option in ({"best_on": "test"}, {"init": "fan_out"}):
        (tmp_path / "suite.yaml").write_text(json.dumps(tiny_suite(pretrain={"checkpoint": str(weights), **option})))
        assert main(["plan", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "results")]) == 2
        err = capsys.readouterr().err
        assert "'pretrain.checkpoint' loads a trained dense model" in err and "Traceback" not in err
