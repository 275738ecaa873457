"""Shared test helpers: tiny suites on seeded synthetic data, written to a temporary directory."""
from __future__ import annotations

import copy
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

PROJECT = Path(__file__).resolve().parent.parent

# Bit-identical results need the same number of threads in every process that computes a number (the order of
# floating-point reductions depends on it). Tests compare in-process runs with subprocesses, pool workers and
# Slurm tasks, so all of them use one thread; it also keeps tests from oversubscribing a small machine.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# The built-in models, datasets and methods, as the CLI registers them: a test file must not depend on another file
# having run first in its process (pytest-xdist gives each worker its own order of files).
from bench.plugins import load_builtin  # noqa: E402

load_builtin()

TINY_SUITE: dict[str, Any] = {
    "name": "tiny",
    "model": "mlp7_relu",
    "dataset": {"name": "synthetic", "num_train": 512, "num_test": 256, "channels": 1, "size": 32},
    "seeds": [0],
    "pretrain": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "prune": {"ratios": [0.5]},
    "methods": ["l1", "random"],
    "retrain": {"epochs": 3, "batch_size": 64, "lr": [0.05, 0.01], "schedule": {"name": "step", "milestones": [2]}},
    "trainability": {"samples": 8, "every": 1},
    "latency": {"repeats": 3, "min_time_s": 0.01},  # a fast, rough measurement (only the prune ids see it)
    "device": "cpu",
}


def benchmark(name: str) -> ModuleType:
    """A benchmark script (benchmarks/NAME.py) as a module, importable by name in spawned processes too."""
    folder = str(PROJECT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # spawned children inherit sys.path
    return importlib.import_module(name)


def tiny_suite(**changes: Any) -> dict[str, Any]:
    """A copy of TINY_SUITE with top-level keys replaced."""
    suite = copy.deepcopy(TINY_SUITE)
    suite.update(changes)
    return suite


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite mapping (or raw text) to a YAML file in tmp_path and return its path."""

    def write(suite: dict[str, Any] | str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(suite if isinstance(suite, str) else yaml.safe_dump(suite))
        return path

    return write
