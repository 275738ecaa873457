"""Fused dense training (bench.pipeline.dense_fusion): a suite's dense models that differ only in the seed train as
one fused model, and each writes what its separate dense training writes (to the tolerance of
tests/training/test_fused.py: per-epoch train loss within 1e-5 relative, accuracies equal); a SIGKILL inside the
group resumes to the uninterrupted numbers bit for bit, and a separate training resumes a fused member's
checkpoint; ``pretrain.best_on`` chooses per member; a member that diverges is left as its separate training
leaves it; the local pool trains a group as one task; ``plan`` shows the dense groups."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import main
from bench.core.store import DenseDir, content_hash, file_lock, load_checkpoint
from bench.launch import Invocation
from bench.pipeline.dense import obtain_dense
from bench.pipeline.dense_fusion import train_dense_group
from bench.training.train import Diverged, derive_seed
from tests.conftest import PROJECT, tiny_suite

# three seeds x one method, ratio, LR: three dense models of one recipe, three epochs each; a short retraining.
# fuse: on (auto does not fuse dense training: measured no faster)
SUITE = tiny_suite(seeds=[0, 1, 2], methods=["l1"], pretrain={"epochs": 3, "batch_size": 64, "lr": 0.05,
                                                              "schedule": "cosine"},
                   retrain={"epochs": 1, "batch_size": 64, "lr": [0.05]}, execution={"fuse": "on"})
RTOL = 1e-5


def dense_of(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / "_dense").glob("*/dense.json")}


def results_of(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / "tiny" / "runs").glob("*/result.json")}


def dense_numbers(meta: dict) -> dict:
    """What a dense training computed (not how long it took)."""
    return {"acc": meta["acc"], "checkpoint": meta["checkpoint"], "num_train": meta["num_train"], "key": meta["key"],
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in meta["history"]]}


def run_numbers(result: dict) -> dict:
    metrics = {k: v for k, v in result["metrics"].items() if k != "timings" and not k.startswith("latency_")}
    return {"status": result["status"], "metrics": metrics,
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]["retrain"]]}


def assert_follows(got: list[dict], want: list[dict]) -> None:
    """Rows of a fused dense training against its separate one's: loss to rounding, the rest equal."""
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert set(a) == set(b)
        assert abs(a["train_loss"] - b["train_loss"]) <= RTOL * abs(b["train_loss"])
        for key in ("epoch", "step", "samples", "flops", "lr", "test_acc", "train_acc"):
            assert a[key] == b[key], key


def run(suite: Path, results: Path, *flags: str) -> int:
    return main(["run", str(suite), "--results", str(results), "--quiet", *flags])


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The suite run fused (fuse: on) and separate (--fuse off)."""
    root = tmp_path_factory.mktemp("dense_fusion")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    assert run(suite, root / "fused") == 0
    assert run(suite, root / "separate", "--fuse", "off") == 0
    return suite, root / "fused", root / "separate"


def test_fused_dense_models_are_their_separate_trainings(both) -> None:
    _, fused, separate = both
    got, want = dense_of(fused), dense_of(separate)
    assert sorted(got) == sorted(want) and len(got) == 3  # the same dense ids: fusion never enters an id
    for dense_id, meta in got.items():
        other = want[dense_id]
        assert meta["fused"] == {"members": 3} and "fused" not in other
        assert set(meta) - {"fused"} == set(other)
        assert_follows(meta["history"], other["history"])
        assert (meta["acc"], meta["checkpoint"], meta["num_train"], meta["key"]) == \
            (other["acc"], other["checkpoint"], other["num_train"], other["key"])
        assert meta["seconds"] > 0
        dense = DenseDir(fused, dense_id)
        assert dense.model.exists() and not dense.checkpoint.exists()
        assert load_checkpoint(dense.model)["model"].keys() == load_checkpoint(DenseDir(separate, dense_id).model
                                                                                )["model"].keys()
    runs, alone = results_of(fused), results_of(separate)
    assert sorted(runs) == sorted(alone) and len(runs) == 3
    for run_id, result in runs.items():
        assert result["status"] == alone[run_id]["status"] == "ok"
        assert result["metrics"]["acc_dense"] == alone[run_id]["metrics"]["acc_dense"]
        assert abs(result["metrics"]["acc_final"] - alone[run_id]["metrics"]["acc_final"]) <= 0.001


def test_a_kill_inside_the_fused_dense_group_resumes_to_the_uninterrupted_numbers(
        both, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL after every member's epoch-2 checkpoint; the rerun resumes each from it, bit for bit. A copy of the
    killed folder resumed with --fuse off trains each member separately from its fused checkpoint."""
    suite, fused, separate = both
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_FAULT="dense:epoch:2")
    command = [sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--quiet", "--results",
               str(tmp_path / "a")]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    for dense_id in dense_of(fused):
        dense = DenseDir(tmp_path / "a", dense_id)
        assert not dense.done and load_checkpoint(dense.checkpoint)["epoch"] == 2
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    caplog.set_level(logging.INFO)
    assert run(suite, tmp_path / "a") == 0
    assert caplog.text.count("dense: member resumed at epoch 2") == 3
    want = dense_of(fused)
    assert {k: dense_numbers(v) for k, v in dense_of(tmp_path / "a").items()} == \
        {k: dense_numbers(v) for k, v in want.items()}
    assert {k: run_numbers(v) for k, v in results_of(tmp_path / "a").items()} == \
        {k: run_numbers(v) for k, v in results_of(fused).items()}
    caplog.clear()
    assert run(suite, tmp_path / "b", "--fuse", "off") == 0
    assert caplog.text.count("dense: resumed at epoch 2") == 3
    for dense_id, meta in dense_of(tmp_path / "b").items():
        assert "fused" not in meta
        rows, alone = meta["history"], dense_of(separate)[dense_id]["history"]
        # the two epochs trained fused are the fused run's, bit for bit (not the separate run's); the third is apart
        assert dense_numbers(meta)["history"][:2] == dense_numbers(want[dense_id])["history"][:2]
        assert [row["train_loss"] for row in rows[:2]] != [row["train_loss"] for row in alone[:2]]
        assert_follows(rows, alone)


def best_on_suite(best_on: str) -> dict:
    """Six dense epochs at a constant LR of 0.15 (both seeds' test accuracy peaks at epoch 5; at 0.2 the fused and
    separate losses drift past 1e-5 in six epochs), two seeds, with a validation split; no retraining."""
    data = {"name": "synthetic", "num_train": 512, "num_test": 256, "channels": 1, "size": 32, "validation": 64}
    return tiny_suite(dataset=data, seeds=[0, 1], pretrain={"epochs": 6, "batch_size": 64, "lr": 0.15,
                                                            "schedule": "constant", "best_on": best_on},
                      prune={"ratios": [0.0]}, methods=["l1"], retrain={"epochs": 0, "lr": [0.01]},
                      execution={"fuse": "on"})


@pytest.mark.parametrize(("best_on", "metric"), [("test", "test_acc"), ("validation", "val_acc")])
def test_best_on_chooses_each_fused_members_best_epoch(best_on: str, metric: str, write_suite, tmp_path: Path) -> None:
    suite = write_suite(best_on_suite(best_on))
    assert run(suite, tmp_path / "fused") == 0
    assert run(suite, tmp_path / "separate", "--fuse", "off") == 0
    got, want = dense_of(tmp_path / "fused"), dense_of(tmp_path / "separate")
    assert len(got) == 2 and sorted(got) == sorted(want)
    chosen = []
    for dense_id, meta in got.items():
        assert meta["fused"] == {"members": 2}
        assert_follows(meta["history"], want[dense_id]["history"])
        scores = [row[metric] for row in meta["history"]]
        best = scores.index(max(scores)) + 1
        assert meta["checkpoint"] == want[dense_id]["checkpoint"] == {"best_on": best_on, "epoch": best, "epochs": 6}
        assert meta["acc"] == meta["history"][best - 1]["test_acc"] == want[dense_id]["acc"]
        chosen.append(best)
    assert min(chosen) < 6  # a setting where the choice matters for some member
    for result in results_of(tmp_path / "fused").values():  # ratio 0: the pruned model is the chosen checkpoint
        meta = got[content_hash(result["config"]["dense"])]
        assert result["metrics"]["acc_pruned"] == meta["acc"]
        assert result["metrics"]["dense_checkpoint"] == meta["checkpoint"]


class _Poisoned:
    """The suite's data, with one seed's dense epoch (``epoch``, from 0) fed an infinite batch: its loss diverges
    there, in a fused group and alone alike; every other seed's batches are the data's own."""

    def __init__(self, data, seed: int, epoch: int) -> None:
        self.data, self.target = data, derive_seed(seed, "dense", epoch)

    def __getattr__(self, name: str):
        return getattr(self.data, name)

    def train_batches(self, batch_size: int, seed: int, device: torch.device):
        for i, (x, y) in enumerate(self.data.train_batches(batch_size, seed, device)):
            yield (x * float("inf") if seed == self.target and i == 0 else x), y


def workspace(suite_dict: dict, root: Path):
    path = root / "suite.yaml"
    root.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(suite_dict))
    inv = Invocation(suite=str(path), results=str(root / "results"))
    suite, runs, suite_dir = inv.load()
    return runs, inv.workspace(suite, suite_dir)


def test_a_diverging_member_is_left_as_its_separate_training_leaves_it(tmp_path: Path) -> None:
    runs, ws = workspace(tiny_suite(seeds=[0, 1], methods=["l1"], retrain={"epochs": 1, "lr": [0.05]}), tmp_path)
    ws.data = _Poisoned(ws.data, seed=1, epoch=1)  # seed 1's second dense epoch
    first, second = runs
    assert (first.seed, second.seed) == (0, 1)
    assert train_dense_group(runs, ws) == {first.dense_id: "ok", second.dense_id: "diverged"}
    ok, bad = DenseDir(ws.results, first.dense_id), DenseDir(ws.results, second.dense_id)
    assert ok.done and not ok.checkpoint.exists()
    assert not bad.done and load_checkpoint(bad.checkpoint)["epoch"] == 1  # its last epoch before the divergence
    with pytest.raises(Diverged) as raised:  # the run that needs it records it, as from its own dense training
        obtain_dense(second, ws, second.method.build())
    assert (raised.value.phase, raised.value.epoch, len(raised.value.history)) == ("dense", 2, 1)
    # the separate training, from nothing, diverges at the same epoch; the healthy member equals its own
    alone_root = tmp_path / "alone"
    _, alone = workspace(tiny_suite(seeds=[0, 1], methods=["l1"], retrain={"epochs": 1, "lr": [0.05]}), alone_root)
    alone.data = _Poisoned(alone.data, seed=1, epoch=1)
    with pytest.raises(Diverged) as separate:
        obtain_dense(second, alone, second.method.build())
    assert (separate.value.epoch, len(separate.value.history)) == (2, 1)
    assert_follows(raised.value.history, separate.value.history)
    obtain_dense(first, alone, first.method.build())
    assert_follows(dense_of(ws.results)[first.dense_id]["history"], dense_of(alone.results)[first.dense_id]["history"])


def test_a_member_held_or_made_elsewhere_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs, ws = workspace(tiny_suite(seeds=[0, 1, 2], methods=["l1"], retrain={"epochs": 1, "lr": [0.05]}), tmp_path)
    made, held, free = runs
    obtain_dense(made, ws, made.method.build())  # made before the group
    before = DenseDir(ws.results, made.dense_id).meta.read_bytes()
    with file_lock(DenseDir(ws.results, held.dense_id).lock, blocking=False) as acquired:  # another "process"
        assert acquired
        outcome = train_dense_group(runs, ws)
    assert outcome == {made.dense_id: "ok", held.dense_id: "locked", free.dense_id: "ok"}
    assert DenseDir(ws.results, made.dense_id).meta.read_bytes() == before  # not made again
    assert not DenseDir(ws.results, held.dense_id).done
    # one member left: it trains alone, as its separate training (no "fused" record)
    assert "fused" not in dense_of(ws.results)[free.dense_id]


def test_the_local_pool_trains_a_dense_group_as_one_task(both, tmp_path: Path) -> None:
    suite, fused, _ = both
    assert run(suite, tmp_path, "--executor", "local", "--workers", "2") == 0
    assert {k: dense_numbers(v) for k, v in dense_of(tmp_path).items()} == \
        {k: dense_numbers(v) for k, v in dense_of(fused).items()}
    assert all(meta["fused"] == {"members": 3} for meta in dense_of(tmp_path).values())


def test_plan_shows_the_dense_groups(write_suite, capsys: pytest.CaptureFixture) -> None:
    path = write_suite(SUITE)
    results = str(path.parent / "r")
    assert main(["plan", str(path), "--results", results]) == 0
    out = capsys.readouterr().out
    assert "fused dense training (execution.fuse: on, max_members: 64): 1 groups, 0 dense models alone" in out
    assert "dense group 1: 3 dense models (seeds 0, 1, 2)" in out
    assert main(["plan", str(path), "--results", results, "--fuse", "off"]) == 0
    assert "alone (3 dense models): execution.fuse is off" in capsys.readouterr().out
    chunked = write_suite({**SUITE, "execution": {"fuse": "on", "max_members": 2}}, "chunked.yaml")
    assert main(["plan", str(chunked), "--results", results]) == 0
    out = capsys.readouterr().out
    assert "1 groups, 1 dense models alone" in out and "dense group 1: 2 dense models (seeds 0, 1)" in out
    assert "alone (1 dense models): no other dense model differs from it only in the seed" in out
    conv = {"model": "resnet20", "dataset": {"name": "synthetic", "num_train": 64, "num_test": 64}, "seeds": [0, 1]}
    auto = write_suite(tiny_suite(**conv), "auto.yaml")
    assert main(["plan", str(auto), "--results", results]) == 0
    assert "alone (2 dense models): execution.fuse: auto does not fuse dense training" in capsys.readouterr().out
    mlp_auto = write_suite({**SUITE, "execution": {"fuse": "auto"}}, "mlp_auto.yaml")  # auto fuses retraining only
    assert main(["plan", str(mlp_auto), "--results", results]) == 0
    out = capsys.readouterr().out
    assert "fused retraining (execution.fuse: auto, max_members: 64): 1 groups" in out
    assert "alone (3 dense models): execution.fuse: auto does not fuse dense training" in out
    slim = write_suite(tiny_suite(**conv, methods=["slimming"], execution={"fuse": "on"}), "slim.yaml")
    assert main(["plan", str(slim), "--results", results]) == 0
    assert "alone (2 dense models): Slimming's dense variant has a hook inside the step " \
           "(SparsityHooks.after_backward)" in capsys.readouterr().out
