"""Storage: atomic writes under a full disk, corrupt files, and what finished runs keep."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import CheckpointError
from bench.store import StorageError, load_checkpoint, read_json, save_checkpoint, write_json
from tests.conftest import tiny_suite


def test_full_disk_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "result.json"
    write_json(path, {"status": "ok", "value": 1})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError, match="No space left on device.*previous file is intact"):
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
    with pytest.raises(CheckpointError, match="bad.pt.*cannot be loaded"):
        load_checkpoint(tmp_path / "bad.pt")


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
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == ["checkpoint.pt", "result.json"]
    assert [p.name for p in (tmp_path / "_pruned").glob("*/*.pt")] == ["pruned.pt"]  # shared across LRs, kept
    (run_dir / "result.json").write_text("{ torn")
    assert main(["run", str(path), "--results", str(tmp_path), "--quiet"]) == 0
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
