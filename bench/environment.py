"""Provenance recorded with every result: package versions, git commit, device and host."""
from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def git_commit() -> dict[str, Any]:
    """The project's git commit and whether the work tree had changes (None outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe(device: torch.device) -> dict[str, Any]:
    """A JSON-able description of where and with what a run executed."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "host": platform.node(),
        "packages": {p: _version(p) for p in ("torch", "torchvision", "numpy", "pyyaml")},
        "git": git_commit(), "device": str(device), "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
