"""Provenance recorded with every result: every installed distribution, the command line, git commit, device, host,
and the identity of each input file a run read (a user checkpoint, the dataset's files), so it can be re-run elsewhere.

A dataset's files are found by watching what its builder opens and lists (Python's audit events ``open`` and
``os.scandir``/``os.listdir``, PEP 578), so any registered dataset is covered without declaring its files. A file
read whole gets its size and sha256; a directory tree that was listed (an ImageFolder: ImageNet's 1.28M images)
gets its file count, total size and a sha256 of its sorted (path, size) listing, not of 150 GB of contents.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMAND_ENV = "BENCH_COMMAND"  # the command line, passed on to pool workers and Slurm tasks
MAX_HASHED_BYTES = 1 << 30     # a file read whole that is larger gets its size only (hashing it would cost minutes)


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


@functools.cache
def distributions() -> dict[str, str]:
    """Every installed distribution and its version, by name (``pip freeze``'s content, without running pip)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:  # the first on sys.path is the one imported
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def command() -> str:
    """The command line that started this work: the one a user typed, also inside a worker or a Slurm task."""
    return os.environ.get(COMMAND_ENV) or shlex.join([sys.executable, *sys.argv])


# ----------------------------------------------------------------------------------------- input files

@dataclass
class Reads:
    """What a piece of code opened for reading and which directories it listed."""

    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)


_recording: list[Reads] = []
_IGNORED = tuple(str(Path(p).resolve()) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}) + (
    "/proc/", "/sys/", "/dev/")


def _watch(event: str, args: tuple[Any, ...]) -> None:
    """The audit hook: while something records, note files opened read-only and directories listed."""
    if not _recording or event not in ("open", "os.scandir", "os.listdir"):
        return
    target = args[0] if args else None
    if isinstance(target, (int, type(None))):
        return
    if event == "open":
        mode, flags = (args[1], args[2]) if len(args) > 2 else (None, 0)
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writes:
            return
    try:
        path = os.path.abspath(os.fsdecode(target))
    except (TypeError, ValueError):
        return
    if path.startswith(_IGNORED) or path.endswith((".py", ".pyc", ".so")):
        return
    (_recording[-1].dirs if event != "open" else _recording[-1].files).add(path)


@functools.cache
def _install_hook() -> None:
    sys.addaudithook(_watch)  # audit hooks cannot be removed: this one does nothing unless something records


@contextmanager
def recording_reads() -> Iterator[Reads]:
    """Note the files opened for reading and the directories listed inside the block (e.g. building a dataset)."""
    _install_hook()
    reads = Reads()
    _recording.append(reads)
    try:
        yield reads
    finally:
        _recording.remove(reads)


@functools.cache
def _file_identity(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    record: dict[str, Any] = {"path": path, "bytes": size}
    if size > MAX_HASHED_BYTES:
        record["sha256"] = None  # said in the docstring: too large to hash per run
        return record
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    record["sha256"] = digest.hexdigest()
    return record


def file_identity(path: str | Path) -> dict[str, Any]:
    """Path, size and sha256 of a file (computed once per process while the file is unchanged)."""
    stat = os.stat(path)
    return _file_identity(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def tree_identity(root: str) -> dict[str, Any]:
    """A listed directory tree: file count, total size and the sha256 of its sorted relative-path/size listing."""
    entries = []
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            try:
                entries.append(f"{os.path.relpath(full, root)}\t{os.stat(full).st_size}")
            except OSError:
                continue
    entries.sort()
    sizes = sum(int(e.rsplit("\t", 1)[1]) for e in entries)
    listing = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    return {"path": root, "files": len(entries), "bytes": sizes, "listing_sha256": listing}


@functools.cache
def _tree_identity_cached(root: str, mtime_ns: int) -> dict[str, Any]:
    return tree_identity(root)


def describe_reads(reads: Reads) -> dict[str, list[dict[str, Any]]]:
    """The identity of everything in ``reads``: each file read, and each listed tree (by its topmost directory)."""
    files = [file_identity(p) for p in sorted(reads.files) if os.path.isfile(p)]
    roots = [d for d in sorted(reads.dirs)
             if os.path.isdir(d) and not any(d.startswith(outer + os.sep) for outer in reads.dirs)]
    trees = [_tree_identity_cached(d, os.stat(d).st_mtime_ns) for d in roots]
    return {"files": files, "trees": trees}


# ----------------------------------------------------------------------------------------- the record

def describe(device: torch.device, reads: Reads | None = None, checkpoint: Path | None = None) -> dict[str, Any]:
    """A JSON-able description of where, how and with what a run executed, and what it read."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "host": platform.node(),
        "packages": distributions(), "command": command(),
        "git": git_commit(), "device": str(device), "threads": torch.get_num_threads(),
    }
    inputs = describe_reads(reads or Reads())
    if checkpoint is not None:
        inputs["checkpoint"] = file_identity(checkpoint)
    info["inputs"] = inputs
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
