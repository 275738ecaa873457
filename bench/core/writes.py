"""Writing the results' files: atomically, with the mode the user's umask gives, and with a plain error (and the
remedy that fits) when the disk or the permissions refuse a write.

Every write goes through a temporary file in the same directory, fsync, then a rename over the target, so a crash or
a full disk leaves the old file or the new one, never a torn one. ``mkstemp`` makes files 0600; they are set to
0666 & ~umask as ``open()`` would, so a colleague in the group (umask 002) or any reader (umask 022) can read them.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.core import distributed, faults
from bench.core.errors import UserError


class StorageError(UserError):
    """The results directory cannot be written (permissions, a full disk)."""


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a torn one. In a data-parallel
    run only rank 0 writes, and the other ranks wait until the file is in place.
    """
    distributed.main_only(lambda: write_here(path, write), f"write '{path}'")


def current_umask() -> int:
    """The process's umask: from /proc/self/status on Linux (reading it changes nothing), else by setting it and
    putting it back (POSIX's only way, which for an instant gives other threads' new files the mask 077)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(err: OSError, path: Path) -> StorageError:
    """The plain message for a write that the disk or the permissions refused, with the remedy that fits."""
    reason = os.strerror(err.errno or 0)   # "No space left on device", "Permission denied", ...
    remedy = ("Free space or choose another --results directory" if err.errno in (errno.ENOSPC, errno.EDQUOT) else
              "Ask its owner for write access (a group's setgid folder, umask 002: see docs/results.md) or choose "
              "another directory you can write (--results, or --out for a report)")
    return StorageError(f"{reason[0].lower()}{reason[1:]} while writing '{path}'. {remedy}; the previous file is "
                        "intact.")


def write_here(path: Path, write: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if err.errno in STORAGE_ERRNOS:
            raise storage_error(err, path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes 0600; a file written with open() would get 0666 & ~umask, so a colleague in the group
            # (umask 002) or any reader (umask 022) can read the results, as the user's umask says.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            raise storage_error(err, path) from None
        raise


def write_bytes(path: Path, payload: bytes | memoryview) -> None:
    """Atomically write ``payload`` to ``path``."""
    atomic_write(path, lambda handle: handle.write(payload))


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_bytes(path, json.dumps(data, indent=1, allow_nan=True).encode())


def check_writable(results: Path, remedy: str = "pass --results DIR with a directory you can write") -> None:
    """Fail early, with a clear message, when a directory to write into cannot be created or written: a regular
    file in its place is "not a directory", a folder this user may not write is "not writable"."""
    probe = results
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == results else f" ('{probe}' is a file)"
        raise StorageError(f"'{results}' is not a directory{where}; {remedy}.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"directory '{results}' is not writable by this user ('{probe}' does not allow it); "
                           f"{remedy}.")
