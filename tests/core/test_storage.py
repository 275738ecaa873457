"""Storage: atomic writes under a full disk, corrupt files, and what finished runs keep."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.errors import CheckpointError
from bench.store import (
    CorruptFileError,
    PrunedDir,
    StorageError,
    file_lock,
    load_checkpoint,
    making,
    read_json,
    remove_checkpoint,
    save_checkpoint,
    write_json,
)
from tests.conftest import tiny_suite


def test_full_disk_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "result.json"
    write_json(path, {"status": "ok", "value": 1})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError, match="no space left on device while writing '.*result.json'.*file is intact"):
        write_json(path, {"status": "running"})
    with pytest.raises(StorageError):
        save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 3})
    assert read_json(path) == {"status": "ok", "value": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left behind


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"status": "ok"')
    with pytest.raises(CheckpointError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptFileError, match="bad.pt.*is corrupt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_checkpoint_that_still_loads_but_differs_from_its_digest_is_corrupt(tmp_path: Path) -> None:
    import torch
    path = tmp_path / "model.pt"
    digest = save_checkpoint(path, {"w": torch.ones(3)})
    assert (tmp_path / "model.pt.sha256").read_text().strip() == digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_checkpoint(path)["w"].tolist() == [1.0, 1.0, 1.0]
    other = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, other)
    path.write_bytes(other.getvalue())  # a whole, loadable file, but not the one saved
    with pytest.raises(CorruptFileError, match="sha256 differs"):
        load_checkpoint(path)
    remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_refuse_pickled_code(tmp_path: Path) -> None:
    import torch
    torch.save({"model": object()}, tmp_path / "evil.pt")  # anything beyond tensors and plain data
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")


def test_keep_options_and_corrupt_result_redone(tmp_path: Path, write_suite) -> None:
    suite = tiny_suite(methods=["l1"], retrain={"epochs": 1, "lr": [0.05]},
                       storage={"keep_final_model": False, "keep_checkpoints": True})
    path = write_suite(suite)
    assert main(["run", str(path), "--results", str(tmp_path), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "tiny" / "runs").iterdir()
    kept = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    assert kept == ["checkpoint.pt", "checkpoint.pt.sha256", "result.json"]
    assert [p.name for p in (tmp_path / "_pruned").glob("*/*.pt")] == ["pruned.pt"]  # shared across LRs, kept
    (run_dir / "result.json").write_text("{ torn")
    assert main(["run", str(path), "--results", str(tmp_path), "--quiet"]) == 0
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"


class AlmostFullDisk(io.FileIO):
    """A file on a disk with ``ROOM`` bytes left: a larger write fails with ENOSPC, as write(2) would."""

    ROOM = 64 * 1024

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.ROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.ROOM -= size
        return super().write(data)


def test_a_full_disk_fails_the_run_plainly_and_leaves_nothing_half_written(tmp_path: Path, write_suite,
                                                                           monkeypatch) -> None:
    """torch.save into a file would turn ENOSPC into 'enforce fail at inline_container.cc'; the run must say it."""
    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: AlmostFullDisk(fd, "wb") if mode == "wb"
                        else fdopen(fd, mode, *a, **k))   # result files fit, model checkpoints do not
    results = tmp_path / "r"
    suite = write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 1, "lr": [0.05]}))
    assert main(["run", str(suite), "--results", str(results), "--quiet"]) == 1
    (result,) = (json.loads(p.read_text()) for p in results.glob("tiny/runs/*/result.json"))
    assert result["status"] == "failed" and "traceback" not in result
    assert re.fullmatch(r"no space left on device while writing '.*/_dense/\w+/checkpoint\.pt'\. Free space .*",
                        result["error"])
    assert list(results.rglob("*.tmp")) == [] and list(results.rglob("*.pt")) == []
    assert list((results / "_dense").iterdir()) == []   # no folder of a dense model that was never saved


def test_a_waiter_on_a_discarded_cache_folder_locks_it_anew(tmp_path: Path) -> None:
    """A failed first attempt removes its empty folder and lock file; whoever waited on that lock must not think it
    holds the lock (flock on a deleted file excludes nobody), but take the new lock file's."""
    cache = PrunedDir(tmp_path, "abc")
    waiter_holds, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def wait_then_make() -> None:
        with making(cache) as here:
            outcome["here"] = here
            waiter_holds.set()
            release.wait(30)

    with pytest.raises(RuntimeError, match="pruning failed"), making(cache) as here:
        assert here
        waiter = threading.Thread(target=wait_then_make)
        waiter.start()
        time.sleep(0.3)   # let it block on the lock (the outcome is the same if it arrives later)
        raise RuntimeError("pruning failed")
    assert waiter_holds.wait(30) and outcome["here"] is True
    with file_lock(cache.lock, blocking=False) as acquired:
        assert not acquired   # the waiter's lock is the one on the current file
    release.set()
    waiter.join(30)
    assert not cache.path.exists()   # it failed to make it too (it made nothing): no folder left
