"""Fused sweeps end to end: a suite run fused gives each run the result, files and id of its separate run (to the
tolerance of tests/training/test_fused.py), the same fused suite twice is bit-identical, a failed fused step fails
the group's runs and they run again, a SIGKILL inside a group resumes to the uninterrupted numbers, the local pool
runs a group as one task, and ``plan`` shows the groups and why the other runs train alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.training.fused import FusedModel
from tests.conftest import PROJECT, tiny_suite

SUITE = tiny_suite(seeds=[0, 1])  # l1, random x 1 ratio x 2 LRs x 2 seeds: 8 runs of one architecture


def results_of(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / "tiny" / "runs").glob("*/result.json")}


def numbers(result: dict) -> dict:
    """What a run computed (not when, where, or how long it took)."""
    metrics = {k: v for k, v in result["metrics"].items() if k != "timings" and not k.startswith("latency_")}
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]["retrain"]]
    return {"status": result["status"], "metrics": metrics, "history": history}


def run(suite: Path, results: Path, *flags: str) -> int:
    return main(["run", str(suite), "--results", str(results), "--quiet", *flags])


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The suite run fused (the MLP's default) and separate (--fuse off)."""
    root = tmp_path_factory.mktemp("fusion")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    assert run(suite, root / "fused") == 0
    assert run(suite, root / "separate", "--fuse", "off") == 0
    return suite, root / "fused", root / "separate"


def test_fused_runs_are_their_separate_runs(both) -> None:
    _, fused, separate = both
    got, want = results_of(fused), results_of(separate)
    assert sorted(got) == sorted(want) and len(got) == 8  # the same run ids: fusion never enters an id
    for run_id, result in got.items():
        other = want[run_id]
        assert result["status"] == other["status"] == "ok"
        assert result["attempts"][-1]["fused"] == {"members": 8} and "fused" not in other["attempts"][-1]
        assert set(result) == set(other) and set(result["metrics"]) == set(other["metrics"])
        for a, b in zip(result["history"]["retrain"], other["history"]["retrain"], strict=True):
            assert set(a) == set(b)
            assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 * abs(b["train_loss"])
            assert abs(a["test_acc"] - b["test_acc"]) <= 0.001
            assert a["lr"] == b["lr"] and a["flops"] == b["flops"]
        assert abs(result["metrics"]["acc_final"] - other["metrics"]["acc_final"]) <= 0.001
        for name in ("model.pt",):
            assert (fused / "tiny" / "runs" / run_id / name).exists()
    assert json.loads((fused / "tiny" / "manifest.json").read_text())["runs"] == \
        json.loads((separate / "tiny" / "manifest.json").read_text())["runs"]


def test_the_same_fused_suite_twice_is_bit_identical(both, tmp_path: Path) -> None:
    suite, fused, _ = both
    assert run(suite, tmp_path) == 0
    again = results_of(tmp_path)
    assert {k: numbers(v) for k, v in again.items()} == {k: numbers(v) for k, v in results_of(fused).items()}


def test_an_exception_in_the_fused_step_fails_the_group_and_they_run_again(both, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    suite, fused, _ = both
    real = FusedModel.sgd_step

    def broken(self, lr, recipe):
        raise RuntimeError("the fused step broke")

    monkeypatch.setattr(FusedModel, "sgd_step", broken)
    assert run(suite, tmp_path) == 1
    failed = results_of(tmp_path)
    assert {r["status"] for r in failed.values()} == {"failed"}
    assert all("RuntimeError: the fused step broke" in r["error"] for r in failed.values())
    monkeypatch.setattr(FusedModel, "sgd_step", real)
    assert run(suite, tmp_path) == 0
    assert {k: numbers(v) for k, v in results_of(tmp_path).items()} == \
        {k: numbers(v) for k, v in results_of(fused).items()}


def test_a_kill_inside_a_fused_group_resumes_to_the_uninterrupted_numbers(both, tmp_path: Path) -> None:
    suite, fused, _ = both
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_FAULT="retrain:epoch:2")
    command = [sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results", str(tmp_path), "--quiet"]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert {r["status"] for r in results_of(tmp_path).values()} == {"running"}
    env.pop("BENCH_FAULT")
    assert subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0
    got = results_of(tmp_path)
    assert {k: numbers(v) for k, v in got.items()} == {k: numbers(v) for k, v in results_of(fused).items()}
    assert all(len(r["attempts"]) == 2 for r in got.values())


def test_the_local_pool_runs_a_group_as_one_task(both, tmp_path: Path) -> None:
    suite, fused, _ = both
    assert run(suite, tmp_path, "--executor", "local", "--workers", "2") == 0
    got = results_of(tmp_path)
    assert {k: numbers(v) for k, v in got.items()} == {k: numbers(v) for k, v in results_of(fused).items()}
    assert len({r["attempts"][-1]["pid"] for r in got.values()}) == 1  # one worker trained all eight


def test_plan_shows_the_groups_and_why_runs_train_alone(write_suite, capsys: pytest.CaptureFixture) -> None:
    path = write_suite(SUITE)
    assert main(["plan", str(path), "--results", str(path.parent / "r")]) == 0
    out = capsys.readouterr().out
    assert "fused retraining (execution.fuse: auto, max_members: 64): 1 groups, 0 runs alone" in out
    assert "group 1: 8 runs (methods l1, random; ratio 0.5; lr 0.05, 0.01; seeds 0, 1)" in out
    assert main(["plan", str(path), "--results", str(path.parent / "r"), "--fuse", "off"]) == 0
    assert "alone (8 runs): execution.fuse is off" in capsys.readouterr().out
    masked = write_suite(tiny_suite(model="resnet20", prune={"ratios": [0.5], "mode": "mask"},
                                    execution={"fuse": "on", "max_members": 3}), "masked.yaml")
    assert main(["plan", str(masked), "--results", str(path.parent / "r")]) == 0
    assert "alone (4 runs): prune.mode: mask" in capsys.readouterr().out
    auto = write_suite(tiny_suite(model="resnet20", dataset={"name": "synthetic", "num_train": 64, "num_test": 64}),
                       "auto.yaml")
    assert main(["plan", str(auto), "--results", str(path.parent / "r")]) == 0
    assert "alone (4 runs): execution.fuse: auto fuses only mlp7_linear, mlp7_relu" in capsys.readouterr().out
    chunked = write_suite(tiny_suite(seeds=[0, 1], execution={"fuse": "on", "max_members": 3}), "chunked.yaml")
    assert main(["plan", str(chunked), "--results", str(path.parent / "r")]) == 0
    out = capsys.readouterr().out
    assert "3 groups, 0 runs alone" in out and "group 3: 2 runs" in out


def test_fuse_off_unquoted_in_yaml_means_off(write_suite, capsys: pytest.CaptureFixture) -> None:
    path = write_suite("name: tiny\n" + yaml.safe_dump({k: v for k, v in SUITE.items() if k != "name"})
                       + "execution: {fuse: off}\n")
    assert main(["plan", str(path), "--results", str(path.parent / "r")]) == 0
    assert "alone (8 runs): execution.fuse is off" in capsys.readouterr().out


def test_a_fused_group_is_one_slurm_array_task(write_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submit_slurm with sbatch faked: the suite's eight runs are one array task of stage "group" (their ids joined
    by commas), and the submission maps every run to that task; its two seeds' dense models are one task of the
    dense array, likewise. (The real Slurm tests skip where no controller answers; a group task's statuses come back
    joined by commas, which wait_for counts one by one, past the prepared tasks.)"""
    import argparse

    from bench.launch import Invocation, slurm

    submitted: list = []

    class Job:
        def __init__(self, i: int, task) -> None:
            self.job_id, self.task = f"77_{i}", task

        def result(self) -> str:  # what the task would return: a status per run (or dense model) it holds
            return ",".join("ok" for _ in self.task.run_id.split(","))

    class Executor:
        def update_parameters(self, **kwargs) -> None:
            return None

    def sbatch(executor, tasks):
        submitted.extend(tasks)
        return [Job(i, task) for i, task in enumerate(tasks)]

    monkeypatch.setattr(slurm.shutil, "which", lambda name: "/usr/bin/sbatch")
    monkeypatch.setattr(slurm, "check_slurm_device", lambda invocation, suite: None)
    monkeypatch.setattr(slurm, "live_tasks", lambda results, name: {})
    monkeypatch.setattr(slurm, "make_executor", lambda options, log_dir, job_name: Executor())
    monkeypatch.setattr(slurm, "_sbatch", sbatch)
    monkeypatch.setattr(slurm, "record_submission", lambda results, submission, invocation: None)
    path = write_suite({**SUITE, "execution": {"fuse": "on"}})  # on: auto does not fuse dense training
    inv = Invocation.from_args(argparse.Namespace(suite=str(path), overrides=[], plugins=[], results=str(tmp_path),
                                                  data_root=None, device=None))
    suite, runs, _ = inv.load()
    submission = slurm.submit_slurm(inv, suite, runs)
    groups = [t for t in submitted if t.stage == "group"]
    assert len(groups) == 1 and sorted(groups[0].run_id.split(",")) == sorted(r.run_id for r in runs)
    assert not [t for t in submitted if t.stage == "run"]
    assert len(set(submission.tasks.values())) == 1 and sorted(submission.tasks) == sorted(r.run_id for r in runs)
    (dense,) = [t for t in submitted if t.stage == "dense"]
    assert len(dense.run_id.split(",")) == 2 and len({r.dense_id for r in runs}) == 2
    assert sorted(submission.dense_tasks) == sorted({r.dense_id for r in runs})
    assert len(set(submission.dense_tasks.values())) == 1
    assert slurm.wait_for(submission) == {"ok": 8}  # the runs' statuses only, not the dense task's
