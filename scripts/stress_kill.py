"""Stress test of crash consistency (not part of CI): SIGKILL the runner at random moments, many times in a row.

Runs a suite once uninterrupted (the reference), then again into another results directory, killing the whole
runner with SIGKILL after a random delay, restarting it, and repeating ``--kills`` times before letting it
finish. Every result file must then be whole JSON, every run finished, no temporary file left, and every metric
and per-epoch history equal to the reference (CPU runs on one thread are deterministic, so the comparison is
exact; wall-clock times are left out).

    python scripts/stress_kill.py [--kills 25] [--seed 0] [--suite SUITE.yaml] [--keep DIR]

Without ``--suite`` a small built-in suite (synthetic data, mlp7_relu, l1 / random / tpp, two learning rates)
is used: about 30 s uninterrupted on one thread; 25 kills take a few minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent

SUITE: dict[str, Any] = {
    "name": "stress",
    "model": "mlp7_relu",
    "dataset": {"name": "synthetic", "num_train": 8192, "num_test": 1024, "channels": 1, "size": 32},
    "seeds": [0],
    "pretrain": {"epochs": 4, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "prune": {"ratios": [0.5]},
    "methods": ["l1", "random", {"tpp": {"delta": 0.05, "update_interval": 1, "zero_out_interval": 4,
                                         "stabilize": 40}}],
    "retrain": {"epochs": 4, "batch_size": 64, "lr": [0.05, 0.01], "schedule": {"name": "step", "milestones": [2]}},
    "trainability": {"samples": 16, "every": 1},
    "device": "cpu",
}


def start(suite: Path, results: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BENCH_FAULT", None)
    return subprocess.Popen([sys.executable, str(PROJECT / "bench.py"), "run", str(suite), "--results", str(results),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in result.get("metrics", {}).items()
               if k != "timings" and not k.startswith("latency_")}  # wall-clock
    history = {phase: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
               for phase, rows in result.get("history", {}).items()}
    return {"status": result["status"], "metrics": metrics, "history": history}


def read_results(results: Path, name: str) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / name / "runs").glob("*/result.json")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25, help="SIGKILLs before the runner may finish")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    parser.add_argument("--suite", type=Path, help="a suite to use instead of the built-in one (keep it small)")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        suite = args.suite
        if suite is None:
            suite = work / "stress.yaml"
            suite.write_text(yaml.safe_dump(SUITE))
        name = yaml.safe_load(suite.read_text())["name"]

        began = time.monotonic()  # start-up (imports, reading and validating the suite): kills there test nothing
        subprocess.run([sys.executable, str(PROJECT / "bench.py"), "plan", str(suite), "--results",
                        str(work / "reference")], capture_output=True, check=True)
        startup_s = time.monotonic() - began
        began = time.monotonic()
        reference = start(suite, work / "reference")
        if reference.wait() != 0:
            print(f"the uninterrupted run failed:\n{reference.stderr.read().decode()}")
            return 1
        reference_s = time.monotonic() - began
        print(f"uninterrupted: {reference_s:.1f} s, of which start-up about {startup_s:.1f} s")

        kills, finished_early = 0, 0
        while kills < args.kills:
            runner = start(suite, work / "stressed")
            delay = startup_s + rng.uniform(0.0, max(reference_s - startup_s, 1.0) / 4)
            try:
                runner.wait(timeout=delay)
                finished_early += 1  # it finished before the kill: start again (nothing is left to do then)
                if runner.returncode != 0:
                    print(f"a restarted runner failed (exit {runner.returncode}):\n{runner.stderr.read().decode()}")
                    return 1
                break
            except subprocess.TimeoutExpired:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait()
                kills += 1
                states = [r.get("status") for r in read_results(work / "stressed", name).values()]
                print(f"kill {kills:3d} after {delay:5.2f} s: {states.count('ok')} runs ok, "
                      f"{states.count('running')} interrupted")
        final = start(suite, work / "stressed")
        if final.wait() != 0:
            print(f"the final run failed:\n{final.stderr.read().decode()}")
            return 1

        expected, got = read_results(work / "reference", name), read_results(work / "stressed", name)
        problems = []
        if set(expected) != set(got):
            problems.append(f"runs differ: {sorted(set(expected) ^ set(got))}")
        for run_id in sorted(set(expected) & set(got)):
            if comparable(got[run_id]) != comparable(expected[run_id]):
                problems.append(f"run {run_id}: metrics or history differ from the uninterrupted run")
        leftovers = list((work / "stressed").rglob(".*.tmp"))
        if leftovers:
            problems.append(f"temporary files left: {leftovers[:3]}")
        attempts = sum(len(r.get("attempts", [])) for r in got.values())
        print(f"{kills} kills; {len(got)} runs, {attempts} attempts in all; "
              + ("identical to the uninterrupted run" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems)))
        return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
