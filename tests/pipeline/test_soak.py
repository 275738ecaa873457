"""Soak: two runners at once, a third started and SIGKILLed at random, a cached dense model truncated mid-way.

At the end every run is ok and finished once (killed attempts may show, never two finishes), every result equals a
clean single-runner execution, and ``verify`` finds nothing wrong. A 20-run and a 200-run version, both marked slow
(the default suite's kill and concurrency tests are in test_faults.py):

    .venv/bin/python -m pytest tests/pipeline/test_soak.py -m slow -q -p no:cacheprovider
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.cli import main
from tests.conftest import PROJECT, tiny_suite

LRS = [0.1, 0.05, 0.02, 0.01, 0.005]


def soak_suite(ratios: list[float], seeds: list[int]) -> dict[str, Any]:
    """l1 and random × ``ratios`` × five LRs × ``seeds``, on small synthetic data (each run well under a second)."""
    return tiny_suite(name="soak", seeds=seeds, prune={"ratios": ratios}, latency={"enabled": False},
                      dataset={"name": "synthetic", "num_train": 384, "num_test": 128, "channels": 1, "size": 16},
                      retrain={"epochs": 2, "batch_size": 64, "lr": LRS, "schedule": "constant"},
                      trainability={"enabled": False},
                      # the truncated dense model is made again alone, and a fused dense model (the seeds' group)
                      # equals its separate training only to rounding (docs/fusion.md); this test compares bit for bit
                      execution={"fuse": "off"})


def start(suite: Path, results: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BENCH_FAULT", None)
    return subprocess.Popen([sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results", str(results),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def truncate_first_dense(results: Path) -> Path | None:
    """Cut the first finished dense model to half its size (in place, as a failing disk or a careless hand would)."""
    for meta in sorted(results.glob("_dense/*/dense.json")):
        model = meta.parent / "model.pt"
        if model.exists():
            with open(model, "r+b") as handle:
                handle.truncate(model.stat().st_size // 2)
            return model
    return None


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in result["metrics"].items() if k != "timings"}
    history = {phase: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
               for phase, rows in result["history"].items()}
    return {"status": result["status"], "metrics": metrics, "history": history, "dense": result["dense_sha256"]}


def results_of(results: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / "soak" / "runs").glob("*/result.json")}


def soak(tmp_path: Path, suite: dict[str, Any], seed: int = 0) -> None:
    path = tmp_path / "soak.yaml"
    path.write_text(yaml.safe_dump(suite))
    expected_runs = len(suite["methods"]) * len(suite["prune"]["ratios"]) * len(LRS) * len(suite["seeds"])
    assert main(["run", str(path), "--results", str(tmp_path / "clean"), "--quiet"]) == 0
    expected = results_of(tmp_path / "clean")
    assert len(expected) == expected_runs

    results = tmp_path / "soak"
    rng = random.Random(seed)
    runners = [start(path, results) for _ in range(2)]
    truncated: Path | None = None
    chaos, killed = None, 0
    deadline = time.monotonic()
    while any(r.poll() is None for r in runners):
        if truncated is None:
            truncated = truncate_first_dense(results)
        if chaos is None or time.monotonic() >= deadline:
            if chaos is not None:
                kill(chaos)
                killed += 1
            chaos, deadline = start(path, results), time.monotonic() + rng.uniform(3.0, 6.0)
        time.sleep(0.05)
    kill(chaos)
    for runner in runners:
        assert runner.returncode == 0, runner.stderr.read()
    assert truncated is not None and killed >= 1
    # What the killed runner held is interrupted; running the suite again finishes it, as a user would.
    assert main(["run", str(path), "--results", str(results), "--quiet"]) == 0

    got = results_of(results)
    assert sorted(got) == sorted(expected)
    for run_id, result in got.items():
        assert result["status"] == "ok", run_id
        finishes = [a for a in result["attempts"] if "finished" in a]
        assert len(finishes) == 1 and finishes[0] is result["attempts"][-1], result["attempts"]
        assert comparable(result) == comparable(expected[run_id]), run_id
    assert list(truncated.parent.glob("model.pt.corrupt-*")), "the truncated dense model was never found and healed"
    assert main(["verify", "--results", str(results), "--quiet"]) == 0


@pytest.mark.slow  # 32 s; tests/core/test_faults.py covers kills and concurrent runners by default
def test_soak_20_runs_two_runners_a_killed_third_and_a_truncated_dense_model(tmp_path: Path) -> None:
    soak(tmp_path, soak_suite(ratios=[0.5], seeds=[0, 1]))


@pytest.mark.slow
def test_soak_200_runs(tmp_path: Path) -> None:
    soak(tmp_path, soak_suite(ratios=[0.3, 0.5, 0.7, 0.9, 0.95], seeds=[0, 1, 2, 3]), seed=1)
