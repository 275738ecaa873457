"""What every entry point does before running anything: load plugins and a suite, expand its runs, pick a device.

Below both the command line (``bench.cli``) and the executors (``bench.launch``), whose workers rebuild a suite
from the command's arguments the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bench.core.config import Suite, load_suite, parse_override
from bench.core.errors import ConfigError
from bench.plugins import load_builtin, load_enabled, load_plugin
from bench.suite.grid import Run, expand


def load_runs(suite_file: str | Path, overrides: Sequence[str] = (), plugins: Sequence[str] = (),
              data_root: str | None = None) -> tuple[Suite, list[Run], Path]:
    """Load plugins and the suite, validate it and expand it into runs (nothing is written)."""
    load_builtin()
    load_enabled()
    for plugin in plugins:
        load_plugin(plugin)
    suite_path = Path(suite_file)
    suite = load_suite(suite_path, list(overrides))
    suite_dir = suite_path.resolve().parent
    for plugin in suite.plugins:
        load_plugin(plugin, suite_dir)
    try:
        runs = expand(suite, suite_dir, data_root)
    except ConfigError as err:
        blamed = [blame_set(problem, overrides) for problem in err.problems]
        if overrides and all(b != p for b, p in zip(blamed, err.problems)):
            raise ConfigError(blamed) from None  # every problem is a --set's: the file is not to blame
        raise ConfigError(blamed, str(suite_path)) from None
    return suite, runs, suite_dir


def blame_set(problem: str, overrides: Sequence[str]) -> str:
    """``problem`` (``key: ...``, from expanding the suite) prefixed with the ``--set`` that set its key or a part
    of it (``--set latency.backends=[eager,tvm]`` for ``latency.backends: unknown backend 'tvm'``); unchanged when
    no ``--set`` touched that key (the file's own problem)."""
    key = problem.split(":", 1)[0].strip()
    if " " in key or not key:
        return problem
    for expression in overrides:
        name = ".".join(parse_override(expression)[0])
        if key == name or key.startswith(name + ".") or name.startswith(key + "."):
            return f"--set '{expression}': {problem}"
    return problem


def resolve_device(name: str) -> torch.device:
    """The torch device for a suite's or the command line's device name (auto, cpu, cuda, cuda:N)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available here. Use --device cpu.")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' was asked for but this machine has {torch.cuda.device_count()} GPU(s) "
                          "(cuda:0 ...). Pick one of them or 'cuda'.")
    return device
