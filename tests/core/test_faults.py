"""Crash consistency and concurrency: kill the runner at several points, start two runners at once.

Every interrupted suite, run again, must finish every run with whole result files and the same final
metrics as an uninterrupted execution (CPU determinism makes that an exact comparison).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT, tiny_suite

SUITE = tiny_suite(methods=["l1"], retrain={"epochs": 3, "batch_size": 64, "lr": [0.05],
                                           "schedule": {"name": "step", "milestones": [2]}})


def run_suite(suite: Path, results: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BENCH_FAULT", None)
    if fault:
        env["BENCH_FAULT"] = fault
    return subprocess.run([sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results", str(results),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)


def final_results(results: Path) -> dict[str, dict]:
    out = {}
    for path in (results / "tiny" / "runs").glob("*/result.json"):
        result = json.loads(path.read_text())  # every file must be whole JSON
        out[path.parent.name] = result
    return out


def comparable(result: dict) -> dict:
    metrics = {k: v for k, v in result["metrics"].items() if k != "timings" and not k.startswith("latency_")}
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]["retrain"]]
    return {"status": result["status"], "metrics": metrics, "history": history}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("reference")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    assert run_suite(suite, root / "results").returncode == 0
    return suite, final_results(root / "results")


@pytest.mark.parametrize("fault", ["dense:epoch:1", "write:model.pt", "write:dense.json", "pruned:saved",
                                   "retrain:epoch:2", "write:result.json#2", "write:checkpoint.pt#2"])
def test_kill_at_a_point_then_rerun_gives_the_uninterrupted_result(fault: str, reference, tmp_path: Path) -> None:
    suite, expected = reference
    killed = run_suite(suite, tmp_path, fault)
    assert killed.returncode == -9, killed.stderr  # the fault point was reached
    for result in final_results(tmp_path).values():
        assert result["status"] == "running"
    assert bool(list(tmp_path.rglob(".*.tmp"))) == fault.startswith("write:")  # the torn write stayed aside
    assert run_suite(suite, tmp_path).returncode == 0
    assert not list(tmp_path.rglob(".*.tmp"))
    got = final_results(tmp_path)
    assert {k: comparable(v) for k, v in got.items()} == {k: comparable(v) for k, v in expected.items()}
    for result in got.values():
        assert len(result["attempts"]) == 2  # the killed execution and the one that finished


def test_kill_inside_a_method_phase_then_rerun_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    """GReg's growing-penalty phase (three epochs here, its λ and stop state in the hooks) killed after its second."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(dict(SUITE, methods=[
        {"greg": {"delta": 0.25, "update_interval": 2, "stabilize": 10, "lr": 0.01}}])))
    assert run_suite(suite, tmp_path / "reference").returncode == 0
    (expected,) = final_results(tmp_path / "reference").values()
    assert run_suite(suite, tmp_path / "killed", "phase:greg:epoch:2").returncode == -9
    assert len(list((tmp_path / "killed").rglob("phase.pt"))) == 1  # what the rerun resumes from
    assert run_suite(suite, tmp_path / "killed").returncode == 0
    (got,) = final_results(tmp_path / "killed").values()
    assert comparable(got) == comparable(expected) and got["status"] == "ok"

    def phase_rows(result: dict) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]["phase"]]

    assert len(phase_rows(got)) == 3 and phase_rows(got) == phase_rows(expected)
    assert len(got["attempts"]) == 2


def test_two_runners_at_once_execute_each_run_once(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite(retrain={"epochs": 2, "lr": [0.05, 0.01]})))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BENCH_FAULT", None)
    command = [sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results", str(tmp_path / "r"),
               "--quiet"]
    first, second = (subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2))
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0
    results = final_results(tmp_path / "r")
    assert len(results) == 4
    for result in results.values():
        assert result["status"] == "ok" and len(result["attempts"]) == 1
    assert len(list((tmp_path / "r" / "_dense").iterdir())) == 1
    # whatever the second runner found undone after waiting for the dense model, it finished; nothing twice
    assert run_suite(suite, tmp_path / "r").returncode == 0
    assert all(len(r["attempts"]) == 1 for r in final_results(tmp_path / "r").values())
