"""The results layout on disk: atomic writes, per-run locks, checkpoints and result files.

Layout (``DIR`` is the results directory)::

    DIR/<suite>/runs/<run id>/result.json    configuration, status, metrics, history, timings, environment
    DIR/<suite>/runs/<run id>/checkpoint.pt  the latest resumable state while the run is unfinished
    DIR/<suite>/runs/<run id>/model.pt       the final slim model (state dict + the channels kept)
    DIR/_dense/<dense id>/model.pt           dense models, trained once and shared by every run that needs one
    DIR/<suite>/report/                      what ``bench.py report`` writes
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench import distributed, faults
from bench.errors import CheckpointError, UserError

log = logging.getLogger(__name__)

DENSE_DIR = "_dense"
PRUNED_DIR = "_pruned"
LOCK_POLL_S = 5.0  # data-parallel runs: how often rank 0 retries a lock another process holds


class StorageError(UserError):
    """The results directory cannot be written (permissions, a full disk)."""


def content_hash(data: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-able data (keys sorted, floats by repr): run, prune, dense and config ids."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a torn one. In a data-parallel
    run only rank 0 writes, and the other ranks wait until the file is in place.
    """
    distributed.main_only(lambda: _write_here(path, write), f"write '{path}'")


def _write_here(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            reason = os.strerror(err.errno)   # "No space left on device", "Disk quota exceeded", ...
            raise StorageError(f"{reason[0].lower()}{reason[1:]} while writing '{path}'. Free space or choose "
                               "another --results directory; the previous file is intact.") from None
        raise


def write_bytes(path: Path, payload: bytes | memoryview) -> None:
    """Atomically write ``payload`` to ``path``."""
    _atomic_write(path, lambda handle: handle.write(payload))


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_bytes(path, json.dumps(data, indent=1, allow_nan=True).encode())


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a corrupt file raises CheckpointError naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"'{path}' is not a readable JSON file ({err}). Delete it to redo that run.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' does not hold a JSON object. Delete it to redo that run.")
    return data


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors and plain data (loadable with weights_only=True).

    Serialised in memory first: ``torch.save`` into a file turns a full disk into an opaque RuntimeError
    ("enforce fail at inline_container.cc"), whereas the writer names it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything unreadable raises CheckpointError naming the file."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' not found.") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint '{path}' cannot be loaded ({type(err).__name__}: {err}). "
                              "It may be truncated or not a state dict; delete it to redo that step.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(state).__name__}, not a dict of tensors.")
    return state


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files a killed writer left behind; call only while holding the directory's lock."""
    if not distributed.is_main():
        return
    for stale in directory.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool) -> Iterator[bool]:
    """An advisory ``flock`` on ``path``; yields whether it was acquired (always True when blocking).

    Released automatically when the process dies, so a killed runner never leaves a stale lock. In a
    data-parallel run rank 0 takes the lock for the group and the other ranks learn whether it succeeded.
    """
    if not distributed.active():
        with _flock(path, blocking) as acquired:
            yield acquired
        return
    # Data-parallel: rank 0 tries the lock and tells the others. A blocking wait polls, so that no rank sits in a
    # collective longer than LOCK_POLL_S while another process holds the lock (e.g. for a long dense training).
    while True:
        with _flock(path, blocking=False) if distributed.is_main() else contextlib.nullcontext(None) as mine:
            acquired = distributed.agree(mine)
            if acquired or not blocking:
                yield bool(acquired)
                return
        time.sleep(LOCK_POLL_S)


@contextlib.contextmanager
def _flock(path: Path, blocking: bool) -> Iterator[bool]:
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a")
        except FileNotFoundError:  # its folder was just removed (see discard_if_empty): make it again
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                if not _is_current(handle, path):  # the holder removed the lock file meanwhile: lock the new one
                    continue
                yield True
                return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(handle: Any, path: Path) -> bool:
    """Whether ``path`` still names the file ``handle`` has open."""
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class RunDir:
    """Paths of one run's directory."""

    def __init__(self, results: Path, suite: str, run_id: str) -> None:
        self.path = results / suite / "runs" / run_id
        self.result = self.path / "result.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.model = self.path / "model.pt"
        self.lock = self.path / ".lock"

    def status(self) -> str:
        """'ok', 'diverged', 'failed', 'running' (unfinished or interrupted), 'pending' or 'corrupt'."""
        if not self.result.exists():
            return "pending"
        try:
            return str(read_json(self.result).get("status", "corrupt"))
        except CheckpointError:
            return "corrupt"


class DenseDir:
    """Paths of one cached dense model."""

    def __init__(self, results: Path, dense_id: str) -> None:
        self.path = results / DENSE_DIR / dense_id
        self.model = self.path / "model.pt"
        self.meta = self.path / "dense.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.lock = self.path / ".lock"

    @property
    def done(self) -> bool:
        """Trained and recorded: ``dense.json`` is written after ``model.pt``, so it marks completion."""
        return self.meta.exists() and self.model.exists()


class PrunedDir:
    """Paths of one cached pruned model (before retraining), shared by the runs that differ only in the retraining
    learning rate: a method's phase, the selection and the removal do not depend on it, so they run once."""

    def __init__(self, results: Path, prune_id: str) -> None:
        self.path = results / PRUNED_DIR / prune_id
        self.model = self.path / "pruned.pt"
        self.phase = self.path / "phase.pt"
        self.lock = self.path / ".lock"

    @property
    def done(self) -> bool:
        """Made: ``pruned.pt`` is written in one atomic step."""
        return self.model.exists()


@contextlib.contextmanager
def making(cache: DenseDir | PrunedDir) -> Iterator[bool]:
    """Make a shared model once: yields True, holding its lock with stale temporaries gone, when this process must
    make it, and False when it is done (checked again under the lock, so that of several processes, or
    data-parallel groups, arriving together exactly one makes it and the others wait for it)."""
    if distributed.agree(cache.done):
        yield False
        return
    with file_lock(cache.lock, blocking=True):
        if distributed.agree(cache.done):
            yield False
            return
        remove_stale_temporaries(cache.path)
        try:
            yield True
        finally:
            if not cache.done:
                discard_if_empty(cache.path, cache.lock)


def discard_if_empty(directory: Path, lock: Path) -> None:
    """Remove a cache folder that holds nothing but its lock (a failed attempt saved nothing to resume from), while
    holding that lock; a process waiting on it notices the lock file is gone and locks a new one (``_flock``)."""
    if not distributed.is_main():
        return
    if {p.name for p in directory.iterdir()} <= {lock.name}:
        lock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another process made the folder's new lock file meanwhile
            directory.rmdir()


def check_writable(results: Path) -> None:
    """Fail early, with a clear message, when the results directory cannot be created or written."""
    probe = results
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"results directory '{results}' is not writable ('{probe}' does not allow it). "
                           "Pass --results DIR with a directory you can write.")
