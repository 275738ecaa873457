"""Old flat module paths (``bench.grid``, ``bench.runner``, ...) as aliases of their homes in the wings.

Scripts, notebooks and plugins written before ``bench/`` was laid out in sub-packages keep importing the modules
they know; an alias is the very module object of the new home, so monkeypatching through either path is one patch.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old module path -> its home (modules whose path did not change, e.g. bench.cli, bench.launch, are not listed)
MOVED: dict[str, str] = {
    "bench.config": "bench.core.config",
    "bench.distributed": "bench.core.distributed",
    "bench.environment": "bench.core.environment",
    "bench.errors": "bench.core.errors",
    "bench.faults": "bench.core.faults",
    "bench.progress": "bench.core.progress",
    "bench.registry": "bench.core.registry",
    "bench.schema": "bench.core.schema",
    "bench.store": "bench.core.store",
    "bench.measure": "bench.training.measure",
    "bench.latency_backends": "bench.training.latency_backends",
    "bench.train": "bench.training.train",
    "bench.trainability": "bench.training.trainability",
    "bench.groups": "bench.pruning.groups",
    "bench.masking": "bench.pruning.masking",
    "bench.cost": "bench.suite.cost",
    "bench.grid": "bench.suite.grid",
    "bench.manifest": "bench.suite.manifest",
    "bench.session": "bench.suite.session",
    "bench.runner": "bench.pipeline.runner",   # which re-exports what moved to setup, dense and metrics
    "bench.trackers": "bench.pipeline.trackers",
    "bench.deploy": "bench.pipeline.deploy",
    "bench.export": "bench.launch.export",
    "bench.maintenance": "bench.launch.maintenance",
    "bench.selftest": "bench.cli.selftest",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module of its new home (imported once, under its own name)."""

    def __init__(self, home: str) -> None:
        self.home = home

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.home)
        self.home_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.home_spec  # the import system stamped the alias's spec on it: give its own back


class _Finder(importlib.abc.MetaPathFinder):
    """Answers only for the paths in ``MOVED``."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        home = MOVED.get(fullname)
        return None if home is None else importlib.machinery.ModuleSpec(fullname, _Alias(home))


def install() -> None:
    """Make the old paths importable (idempotent); ``bench/__init__.py`` calls it."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())  # ahead of path finders that would find a stale copy
