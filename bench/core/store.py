"""The results layout on disk: per-run locks, checkpoints and result files (written atomically by bench.core.writes).

Layout (``DIR`` is the results directory)::

    DIR/<suite>/runs/<run id>/result.json    configuration, status, metrics, history, timings, environment
    DIR/<suite>/runs/<run id>/checkpoint.pt  the latest resumable state while the run is unfinished
    DIR/<suite>/runs/<run id>/model.pt       the final slim model (state dict + the channels kept)
    DIR/_dense/<dense id>/model.pt           dense models, trained once and shared by every run that needs one
    DIR/_pruned/<prune id>/pruned.pt         pruned models before retraining, shared by the runs that differ in LR
    DIR/<suite>/report/                      what ``bench.py report`` writes

Every model and checkpoint has its sha256 beside it (``model.pt.sha256``), checked when it is loaded, so a
corrupt file is told from a good one even when it still unpickles. An unreadable derived file is moved aside
(``model.pt.corrupt-<time>``, kept for inspection) and made again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.core import distributed
from bench.core.errors import CheckpointError
from bench.core.writes import (  # re-exported: the results' files are written through bench.core.store
    STORAGE_ERRNOS,
    StorageError,
    check_writable,
    current_umask,
    storage_error,
    write_bytes,
    write_here,
    write_json,
)

log = logging.getLogger(__name__)

DENSE_DIR = "_dense"
PRUNED_DIR = "_pruned"
DIGEST_SUFFIX = ".sha256"
ASIDE_NAME = re.compile(r"\.[a-z]+-\d{8}T\d{6}-\d+(\.sha256)?$")  # what move_aside names a file
LOCK_POLL_S = 5.0  # data-parallel runs: how often rank 0 retries a lock another process holds


def content_hash(data: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-able data (keys sorted, floats by repr): run, prune, dense and config ids."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class UnreadableFileError(CheckpointError):
    """A file this user may not read (its mode or owner): never taken for corrupt, never moved aside or redone."""

    def __init__(self, path: Path) -> None:
        self.path, self.problem = path, "unreadable (permission)"
        super().__init__(f"'{path}' is unreadable (permission): this user may not read it. Ask its owner to make it "
                         "readable (chmod -R g+rX, or umask 002 in a group's setgid folder; see docs/results.md), or "
                         "run as its owner.")


class CorruptFileError(CheckpointError):
    """A file that exists but cannot be read as what it should be (truncated, overwritten, digest mismatch)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"'{path}' is corrupt ({problem}); delete it, or run `bench.py verify --fix`, to redo "
                         "that step.")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a missing file raises CheckpointError, a corrupt one CorruptFileError, naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"'{path}' not found.") from None
    except PermissionError:
        raise UnreadableFileError(path) from None
    except (OSError, ValueError) as err:
        raise CorruptFileError(path, f"not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"it holds a JSON {type(data).__name__}, not an object")
    return data


def digest_path(path: Path) -> Path:
    """Where the sha256 of ``path`` is kept: ``model.pt`` -> ``model.pt.sha256``."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def stored_digest(path: Path) -> str | None:
    """The sha256 recorded beside ``path`` when it was saved, or None (saved before digests, or its write was cut
    off between the file and its digest)."""
    try:
        text = digest_path(path).read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    except PermissionError:
        raise UnreadableFileError(digest_path(path)) from None
    return text if len(text) == 64 else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> str:
    """Atomically ``torch.save`` a dict of tensors and plain data (loadable with weights_only=True), with its sha256
    beside it; returns the digest.

    Serialised in memory first: ``torch.save`` into a file turns a full disk into an opaque RuntimeError
    ("enforce fail at inline_container.cc"), whereas the writer names it. The old digest goes first, so a kill
    between the two writes leaves a file without a digest (loaded unchecked), never one with a wrong digest."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).hexdigest()

    def write() -> None:
        digest_path(path).unlink(missing_ok=True)
        write_here(path, lambda handle: handle.write(payload))
        write_here(digest_path(path), lambda handle: handle.write(f"{digest}\n".encode()))

    distributed.main_only(write, f"write '{path}'")
    return digest


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` after checking its sha256; a missing file raises CheckpointError,
    an unreadable one CorruptFileError, both naming the file."""
    return load_with_digest(path, map_location)[0]


def load_with_digest(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], str]:
    """``load_checkpoint``, and the sha256 of the very bytes loaded."""
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' not found.") from None
    except PermissionError:
        raise UnreadableFileError(path) from None
    except OSError as err:
        raise CorruptFileError(path, f"{type(err).__name__}: {err}") from None
    expected, digest = stored_digest(path), hashlib.sha256(payload).hexdigest()
    if expected is not None and digest != expected:
        raise CorruptFileError(path, f"its sha256 differs from the one saved beside it in {digest_path(path).name}; "
                               f"{len(payload)} bytes")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CorruptFileError(path, f"{type(err).__name__}: {first_line(str(err))}") from None
    if not isinstance(state, dict):
        raise CorruptFileError(path, f"it holds a {type(state).__name__}, not a dict of tensors")
    return state, digest


def first_line(message: str, limit: int = 300) -> str:
    """A library's message cut to its first line and, past ``limit`` characters, at a word's end (never mid-word)."""
    line = (message.strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return f"{cut} ..."


def remove_checkpoint(path: Path) -> None:
    """Delete a saved model or checkpoint and its digest (the digest last: a file is never left with a wrong one)."""
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


def hash_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file we saved: the one stored beside it, else computed from its bytes."""
    return stored_digest(path) or hash_file(path)


def move_aside(path: Path, why: str = "corrupt") -> Path | None:
    """Rename ``path`` (and its digest) to ``<name>.<why>-<time>`` in the same folder, kept for inspection and out of
    the way of the file made again; returns the new name (None when it is already gone). Rank 0 only."""
    target = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    if not distributed.is_main():
        return target
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in STORAGE_ERRNOS:
            raise storage_error(err, target) from None
        raise
    with contextlib.suppress(FileNotFoundError):
        os.replace(digest_path(path), digest_path(target))
    return target


def is_set_aside(path: Path) -> bool:
    """Whether ``path`` is a file ``move_aside`` renamed (``model.pt.corrupt-...``, or its digest)."""
    return ASIDE_NAME.search(path.name) is not None


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
        except PermissionError:  # a reader of another user's results: flock works on a read-only handle too
            try:
                handle = open(path)
            except FileNotFoundError:  # no lock file, and no right to make one: nobody holds it
                yield True
                return
            except PermissionError:
                raise UnreadableFileError(path) from None
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
        """'ok', 'diverged', 'failed', 'running' (unfinished or interrupted), 'pending', 'corrupt' or 'unreadable'
        (this user may not read its result.json)."""
        try:
            return str(read_json(self.result).get("status", "corrupt"))
        except UnreadableFileError:
            return "unreadable"
        except CorruptFileError:
            return "corrupt"
        except CheckpointError:  # not found
            return "pending"

    def problem(self) -> str | None:
        """Why the run's result.json is corrupt (the parse error), or None when it is readable or absent."""
        try:
            if "status" not in read_json(self.result):
                return "no 'status' in it"
        except (CorruptFileError, UnreadableFileError) as err:
            return err.problem
        except CheckpointError:
            return None
        return None


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


__all__ = [
    "ASIDE_NAME", "CorruptFileError", "DENSE_DIR", "DIGEST_SUFFIX", "DenseDir", "LOCK_POLL_S", "PRUNED_DIR",
    "PrunedDir", "RunDir", "STORAGE_ERRNOS", "StorageError", "UnreadableFileError", "check_writable", "content_hash",
    "current_umask", "digest_path", "discard_if_empty", "file_lock", "file_sha256", "first_line", "hash_file",
    "is_set_aside", "load_checkpoint", "load_with_digest", "making", "move_aside", "read_json", "remove_checkpoint",
    "remove_stale_temporaries", "save_checkpoint", "storage_error", "stored_digest", "write_bytes", "write_here",
    "write_json"
]
