"""The validation split (dataset option ``validation``): which images it holds out, that training never sees them,
what runs record about it, and how bad values are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import load_suite
from bench.data import FASHION_MNIST_SYSTEM_DIR, build_dataset
from bench.data.base import validation_split
from bench.grid import expand
from tests.conftest import PROJECT, tiny_suite

SYNTHETIC = {"num_train": 512, "num_test": 256, "channels": 1, "size": 32}


def test_split_is_stratified_exact_disjoint_and_seeded_by_name_and_size_alone() -> None:
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 150 + [3] * 50)  # shares 0.5, 0.3, 0.15, 0.05
    rest, held = validation_split("toy", labels, 101, 4)
    assert len(held) == 101 and len(rest) == 899
    assert sorted(torch.cat([rest, held]).tolist()) == list(range(1000))  # disjoint, nothing lost
    # 101 * shares = 50.5, 30.3, 15.15, 5.05: floors 50, 30, 15, 5 (100), the one left goes to the largest remainder
    assert torch.bincount(labels[held], minlength=4).tolist() == [51, 30, 15, 5]
    again_rest, again_held = validation_split("toy", labels, 101, 4)
    assert torch.equal(held, again_held) and torch.equal(rest, again_rest)
    assert not torch.equal(validation_split("other", labels, 101, 4)[1], held)  # the name seeds the draw
    assert not torch.equal(validation_split("toy", labels, 102, 4)[1][:101], held)  # and so does the size


def test_training_probe_and_epochs_see_only_the_rest() -> None:
    whole = build_dataset("synthetic", SYNTHETIC, None, None)
    data = build_dataset("synthetic", {**SYNTHETIC, "validation": 100}, None, None)
    assert (data.info.num_train, data.info.num_val, data.info.num_test) == (412, 100, 256)
    assert data.steps_per_epoch(100) == 5
    labels = torch.cat([y for _, y in whole.train_batches(512, 0, "cpu")])
    images = torch.cat([x for x, _ in whole.train_batches(512, 0, "cpu")])
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))  # the epoch's order, to undo it
    images, labels = images[order.argsort()], labels[order.argsort()]
    rest, held = validation_split("synthetic", labels, 100, 10)

    trained = torch.cat([x for x, _ in data.train_batches(64, 7, "cpu")])
    assert trained.shape[0] == 412
    key = {tuple(row.flatten().tolist()) for row in trained}
    assert key == {tuple(row.flatten().tolist()) for row in images[rest]}
    probe = data.probe(412, 3)
    assert {tuple(row.flatten().tolist()) for row in probe} == key  # the JSV probe is drawn from the rest
    val_x, val_y = zip(*data.validation_batches(30, "cpu"), strict=True)
    assert torch.equal(torch.cat(val_x), images[held]) and torch.equal(torch.cat(val_y), labels[held])
    assert list(whole.validation_batches(30, "cpu")) == []  # no split: nothing to evaluate
    assert data.test_batches(256, "cpu").__next__()[0].equal(next(whole.test_batches(256, "cpu"))[0])


@pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_validation_5000_leaves_55000_balanced() -> None:
    data = build_dataset("fashion_mnist", {"validation": 5000}, None, None)
    assert (data.info.num_train, data.info.num_val) == (55_000, 5000)
    counts = torch.bincount(torch.cat([y for _, y in data.validation_batches(1000, "cpu")]), minlength=10)
    assert counts.tolist() == [500] * 10  # 6000 per class: exactly a tenth of the hold-out each


@pytest.fixture(scope="module")
def with_validation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """l1 and random, two seeds, on synthetic data with 64 of 512 training images held out."""
    root = tmp_path_factory.mktemp("validation")
    suite = tiny_suite(dataset={"name": "synthetic", **SYNTHETIC, "validation": 64}, seeds=[0, 1],
                       retrain={"epochs": 2, "batch_size": 64, "lr": [0.05]}, pretrain={"epochs": 1, "batch_size": 64,
                                                                                        "lr": 0.05})
    (root / "suite.yaml").write_text(json.dumps(suite))
    assert main(["run", str(root / "suite.yaml"), "--results", str(root / "results"), "--quiet"]) == 0
    return root


def test_runs_record_validation_accuracy_at_every_stage(with_validation: Path) -> None:
    results = [json.loads(p.read_text()) for p in (with_validation / "results/tiny/runs").glob("*/result.json")]
    assert len(results) == 4
    for result in results:
        metrics, history = result["metrics"], result["history"]["retrain"]
        assert metrics["num_train"] == 448
        assert [set(row) >= {"val_loss", "val_acc"} for row in history] == [True, True]
        assert metrics["acc_val_final"] == history[-1]["val_acc"]
        for key in ("acc_val_dense", "acc_val_pruned", "acc_val_final"):
            assert 0 <= metrics[key] <= 1 and (metrics[key] * 64).is_integer()  # a share of the 64 held out
    by_seed: dict[int, set[float]] = {}
    for result in results:  # l1 and random share each seed's dense model, and see the same split
        by_seed.setdefault(result["seed"], set()).add(result["metrics"]["acc_val_dense"])
    assert sorted(len(accs) for accs in by_seed.values()) == [1, 1]
    for dense in (with_validation / "results/_dense").glob("*/dense.json"):
        assert json.loads(dense.read_text())["num_train"] == 448
    assert main(["report", "--results", str(with_validation / "results")]) == 0
    runs = pd.read_csv(with_validation / "results/tiny/report/runs.csv")
    assert runs.acc_val_final.notna().all() and runs.acc_val_dense.notna().all()


def test_the_split_enters_ids_only_when_set(with_validation: Path, write_suite) -> None:
    suite = tiny_suite()
    plain = expand(load_suite(write_suite(suite)))
    zero = expand(load_suite(write_suite(tiny_suite(dataset={**suite["dataset"], "validation": 0}))))
    held = expand(load_suite(with_validation / "suite.yaml"))
    assert [r.run_id for r in zero] == [r.run_id for r in plain]
    assert [r.dense_id for r in zero] == [r.dense_id for r in plain]
    assert not {r.dense_id for r in held} & {r.dense_id for r in plain}


def test_without_the_option_nothing_is_recorded(tmp_path: Path, write_suite) -> None:
    suite = write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 1, "batch_size": 64, "lr": [0.05]},
                                   pretrain={"epochs": 1, "batch_size": 64, "lr": 0.05}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "r/tiny/runs").glob("*/result.json")]
    assert not [k for k in result["metrics"] if k.startswith("acc_val")]
    assert "val_acc" not in result["history"]["retrain"][0]
    assert result["metrics"]["num_train"] == 512


@pytest.mark.parametrize("value, says", [(-1, "it must be >= 0"), (2.5, "it must be an integer"),
                                         ("all", "it must be an integer"), (512, "0..511"), (600, "0..511")])
def test_bad_values_exit_2_before_anything_is_written(value: object, says: str, write_suite, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tiny_suite(dataset={"name": "synthetic", **SYNTHETIC, "validation": value}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "dataset.validation" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_dense_model_trains_on_55000_images(tmp_path: Path, write_suite) -> None:
    suite = write_suite(tiny_suite(model="mlp7_linear", dataset={"name": "fashion_mnist", "validation": 5000},
                                   methods=["l1"], pretrain={"epochs": 1, "batch_size": 500, "lr": 0.01},
                                   retrain={"epochs": 1, "batch_size": 500, "lr": [0.01]},
                                   trainability={"enabled": False}))
    assert main(["run", str(suite), "--results", str(tmp_path), "--quiet"]) == 0
    (dense,) = [json.loads(p.read_text()) for p in tmp_path.glob("_dense/*/dense.json")]
    assert dense["num_train"] == 55_000 and dense["history"][0]["step"] == 110  # 55,000 / 500 steps
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("tiny/runs/*/result.json")]
    assert result["metrics"]["acc_val_final"] > 0.5


@pytest.mark.slow  # about 20 s: two spawned ranks; the test split's DDP evaluation, same code, is in the default suite
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this PyTorch build has no torch.distributed gloo backend")
def test_two_gloo_processes_evaluate_the_split_as_one_process(tmp_path: Path, write_suite) -> None:
    suite = write_suite(tiny_suite(model="mlp7_linear", dataset={"name": "synthetic", **SYNTHETIC, "validation": 64},
                                   methods=["l1"], pretrain={"epochs": 1, "batch_size": 63, "lr": 0.05},
                                   retrain={"epochs": 2, "batch_size": 63, "lr": [0.02]}))
    assert main(["run", str(suite), "--results", str(tmp_path / "one"), "--quiet"]) == 0
    done = subprocess.run([sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results",
                           str(tmp_path / "two"), "--nproc", "2", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (one,), (two,) = ([json.loads(p.read_text()) for p in (tmp_path / d).glob("tiny/runs/*/result.json")]
                      for d in ("one", "two"))
    assert two["environment"]["data_parallel"]["world_size"] == 2
    assert [r["val_loss"] for r in two["history"]["retrain"]] == \
        pytest.approx([r["val_loss"] for r in one["history"]["retrain"]], rel=1e-4)
    for key in ("acc_val_dense", "acc_val_pruned", "acc_val_final"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=2 / 64), key
