"""Provenance in result.json: every installed distribution, the command line, and the identity of every input file."""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
import yaml

from bench import environment
from bench.cli import main
from bench.plugins import load_builtin
from bench.registry import MODELS
from tests.conftest import tiny_suite


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
                     + array.astype(np.uint8).tobytes())


def _fashion_root(root: Path) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return raw


def test_result_records_packages_command_dataset_files_and_checkpoint(tmp_path: Path) -> None:
    raw = _fashion_root(tmp_path / "data")
    load_builtin()
    checkpoint = tmp_path / "dense.pt"
    torch.save(MODELS.get("mlp7_relu").build(num_classes=10, in_channels=1).state_dict(), checkpoint)
    suite = tiny_suite(dataset="fashion_mnist", methods=["l1"], trainability={"enabled": False},
                       latency={"enabled": False}, pretrain={"checkpoint": str(checkpoint)},
                       retrain={"epochs": 1, "batch_size": 20, "lr": 0.01})
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    argv = ["run", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "results"),
            "--data-root", str(tmp_path / "data"), "--quiet"]
    assert main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("tiny/runs/*/result.json")]
    env = result["environment"]
    assert env["command"].split()[1:] == argv
    assert len(env["packages"]) > 20  # every distribution, not a chosen few
    assert env["packages"]["PyYAML"] == yaml.__version__
    read = {Path(f["path"]).name: f for f in env["inputs"]["files"]}
    assert set(read) == {p.name for p in raw.iterdir()}  # the four IDX files, and nothing else
    for name, record in read.items():
        assert record["bytes"] == (raw / name).stat().st_size
        assert record["sha256"] == hashlib.sha256((raw / name).read_bytes()).hexdigest()
    assert env["inputs"]["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_a_listed_tree_is_identified_by_its_listing_not_its_contents(tmp_path: Path) -> None:
    tree = tmp_path / "train"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        for i in range(3):
            (tree / cls / f"{i}.jpg").write_bytes(b"x" * (10 + i))
    with environment.recording_reads() as reads:  # what ImageFolder does at construction: walk the folders
        listed = [name for _, _, names in os.walk(tree) for name in names]
    assert len(listed) == 6
    (record,) = environment.describe_reads(reads)["trees"]  # one tree, by its topmost listed directory
    assert record["path"] == str(tree) and record["files"] == 6 and record["bytes"] == 2 * (10 + 11 + 12)
    before = record["listing_sha256"]
    (tree / "b" / "2.jpg").write_bytes(b"x" * 99)  # a changed size changes the listing's digest
    assert environment.tree_identity(str(tree))["listing_sha256"] != before
    assert environment.describe_reads(reads)["files"] == []  # no image was opened, so none was hashed


def test_writes_and_python_sources_are_not_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    with environment.recording_reads() as reads:
        (tmp_path / "out.txt").write_text("written, not read")
        data.read_bytes()
        (tmp_path / "code.py").write_text("x = 1")
        (tmp_path / "code.py").read_text()
    assert reads.files == {str(data)}
