"""Data-parallel runs (DDP) on CPU: two gloo processes give the one-process results within tolerance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cli import main
from bench.distributed import check_gpus_for, shared_gpus, swap_in_sync_batchnorms, unwrap
from bench.errors import ConfigError
from bench.registry import MODELS
from methods.rni import bound_batchnorms_
from tests.conftest import PROJECT, tiny_suite

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch build has no torch.distributed gloo backend")

# TPP's regularised phase (a loss penalty and gradient-side terms) and L1; the retraining batch of 63 splits into
# unequal slices (32 + 31) and the last dense batch (512 = 8 x 63 + 8) into 4 + 4.
TPP = {"delta": 0.25, "update_interval": 1, "zero_out_interval": 2, "stabilize": 14}
SUITE = tiny_suite(model="mlp7_linear", methods=[{"tpp": TPP}, "l1"],
                   pretrain={"epochs": 2, "batch_size": 63, "lr": 0.05},
                   retrain={"epochs": 2, "batch_size": 63, "lr": [0.02]})


def results_by_method(results: Path) -> dict[str, dict[str, Any]]:
    return {r["method"]: r for r in (json.loads(p.read_text()) for p in results.glob("tiny/runs/*/result.json"))}


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT / "bench.py"), *args], capture_output=True, text=True,
                          timeout=300)


def test_two_gloo_processes_match_one_process(write_suite, tmp_path: Path) -> None:
    suite = write_suite(SUITE)
    assert main(["run", str(suite), "--results", str(tmp_path / "one"), "--quiet"]) == 0
    done = bench("run", str(suite), "--results", str(tmp_path / "two"), "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("dense model") == 1, "only rank 0 logs"
    one, two = results_by_method(tmp_path / "one"), results_by_method(tmp_path / "two")
    assert set(one) == set(two) == {"tpp", "l1"}
    for method in one:
        a, b = one[method], two[method]
        assert b["status"] == "ok" and b["run_id"] == a["run_id"]
        assert b["environment"]["data_parallel"] == {"world_size": 2, "backend": "gloo"}
        assert "data_parallel" not in a["environment"]
        for phase in ("phase", "retrain"):
            losses_a = [row["train_loss"] for row in a["history"][phase]]
            losses_b = [row["train_loss"] for row in b["history"][phase]]
            assert losses_b == pytest.approx(losses_a, rel=1e-4), (method, phase)
            assert [row["test_loss"] for row in b["history"][phase]] == \
                pytest.approx([row["test_loss"] for row in a["history"][phase]], rel=1e-4)
        for key in ("acc_dense", "acc_pruned", "acc_final"):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=2 / 256), (method, key)
        assert b["metrics"]["channels"] == a["metrics"]["channels"]
        assert b["metrics"]["jsv_final_mean"] == pytest.approx(a["metrics"]["jsv_final_mean"], rel=1e-3)
    assert not list((tmp_path / "two").rglob(".*.tmp")), "no temporary file is left behind"
    dense = json.loads(next((tmp_path / "two").glob("_dense/*/dense.json")).read_text())
    assert len(dense["history"]) == 2

    again = bench("run", str(suite), "--results", str(tmp_path / "two"), "--nproc", "2")
    assert again.returncode == 0 and "nothing to do" in again.stderr and again.stderr.count("nothing to do") == 1


def test_data_parallel_flags_are_checked(write_suite, tmp_path: Path) -> None:
    suite = str(write_suite(SUITE))
    for extra, message in ((["--nproc", "0"], "--nproc N needs N >= 1"),
                           (["--nproc", "2", "--executor", "local"], "--tasks-per-run")):
        done = bench("run", suite, "--results", str(tmp_path / "r"), *extra)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_more_cuda_ranks_than_gpus_are_refused_before_any_process_starts(write_suite, tmp_path: Path, capsys,
                                                                        monkeypatch) -> None:
    """--nproc 2 on a one-GPU machine would put two NCCL ranks on one GPU ("Duplicate GPU detected"): refused with
    exit 2 and the GPU count, before spawning. Only the GPU count is faked; with two GPUs the check lets it pass."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    suite = str(write_suite(SUITE))
    for device in ("cuda", "auto"):
        assert main(["run", suite, "--results", str(tmp_path / "r"), "--nproc", "2", "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "needs 2 GPUs, 1 visible" in err
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_gpus_for(2, "cuda")
    check_gpus_for(4, "cpu")


def test_ranks_sharing_a_physical_gpu_are_found_by_uuid() -> None:
    """After joining the group, ranks compare (host, GPU UUID): two local ranks on one GPU are caught; Slurm tasks
    that each see their own GPU as cuda:0 (distinct UUIDs) and GPUs on different hosts are not."""
    assert shared_gpus([("n1", "GPU-a"), ("n1", "GPU-a")]) == {("n1", "GPU-a"): [0, 1]}
    two_nodes = [("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-c"), ("n2", "GPU-c")]
    assert shared_gpus(two_nodes) == {("n2", "GPU-c"): [2, 3]}
    assert shared_gpus([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-c")]) == {}


def test_a_bad_suite_fails_once_before_any_process_starts(write_suite, tmp_path: Path) -> None:
    suite = str(write_suite(tiny_suite(methods=["l1", "no_such_method"])))
    done = bench("run", suite, "--results", str(tmp_path / "r"), "--nproc", "2")
    assert done.returncode == 2 and done.stderr.count("no_such_method") >= 1
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_sync_batchnorm_needs_cuda(write_suite, tmp_path: Path) -> None:
    suite = write_suite(tiny_suite(model="resnet20", dataset={"name": "synthetic", "num_train": 64, "num_test": 32},
                                   performance={"sync_batchnorm": True}, methods=["l1"],
                                   pretrain={"epochs": 1, "batch_size": 32, "lr": 0.05},
                                   retrain={"epochs": 1, "batch_size": 32, "lr": [0.01]}))
    done = bench("run", str(suite), "--results", str(tmp_path / "r"), "--nproc", "2", "--quiet")
    assert done.returncode == 2 and "sync_batchnorm needs CUDA" in done.stderr
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_sync_batchnorm_swap_shares_tensors_and_is_undone() -> None:
    """The swap behind performance.sync_batchnorm (its forward pass needs CUDA; the bookkeeping does not)."""

    model = MODELS.get("resnet20").build(num_classes=10, in_channels=3)
    originals = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    keys, params = list(model.state_dict()), list(model.parameters())
    assert swap_in_sync_batchnorms(model) == len(originals) == 19
    synced = dict(model.named_modules())
    assert all(isinstance(synced[n], torch.nn.SyncBatchNorm) for n in originals)
    assert synced["bn1"].weight is originals["bn1"].weight
    assert synced["bn1"].running_mean is originals["bn1"].running_mean
    assert list(model.state_dict()) == keys and list(model.parameters()) == params  # optimizers stay valid
    unwrap(model)
    assert all(dict(model.named_modules())[n] is m for n, m in originals.items())


def test_sync_batchnorm_refuses_a_bounded_batchnorm() -> None:

    model = MODELS.get("resnet20").build(num_classes=10, in_channels=3)
    bound_batchnorms_(model)
    with pytest.raises(ConfigError, match="not a plain BatchNorm"):
        swap_in_sync_batchnorms(model)


def test_a_data_parallel_run_waits_for_a_dense_model_another_process_holds(write_suite, tmp_path: Path) -> None:
    from bench.config import load_suite
    from bench.grid import expand
    from bench.store import DenseDir

    suite = write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 1, "batch_size": 64, "lr": [0.05]}))
    results = tmp_path / "results"
    lock = DenseDir(results, expand(load_suite(suite))[0].dense_id).lock
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(lock)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(4); print(time.time(), flush=True)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    done = bench("run", str(suite), "--results", str(results), "--nproc", "2", "--quiet")
    released = float(holder.stdout.readline())
    assert holder.wait() == 0 and done.returncode == 0, done.stderr
    assert [r["status"] for r in results_by_method(results).values()] == ["ok"]
    assert DenseDir(results, lock.parent.name).model.stat().st_mtime >= released  # trained after the lock was free


@pytest.mark.slow  # 35 s; a killed one-process run's resume is tested by default in test_faults.py
def test_a_killed_data_parallel_run_resumes_to_the_uninterrupted_result(write_suite, tmp_path: Path) -> None:
    suite = str(write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 3, "batch_size": 64, "lr": [0.05]})))
    whole = bench("run", suite, "--results", str(tmp_path / "whole"), "--nproc", "2", "--quiet")
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.run([sys.executable, str(PROJECT / "bench.py"), "run", suite, "--results",
                             str(tmp_path / "killed"), "--nproc", "2", "--quiet"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "BENCH_FAULT": "retrain:epoch:2"})
    assert killed.returncode == 1 and "died" in killed.stderr and "Traceback" not in killed.stderr
    (interrupted,) = results_by_method(tmp_path / "killed").values()
    assert interrupted["status"] == "running"
    resumed = bench("run", suite, "--results", str(tmp_path / "killed"), "--nproc", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    (a,), (b,) = results_by_method(tmp_path / "whole").values(), results_by_method(tmp_path / "killed").values()
    assert b["status"] == "ok" and len(b["attempts"]) == 2
    assert [r["train_loss"] for r in b["history"]["retrain"]] == [r["train_loss"] for r in a["history"]["retrain"]]
    assert b["metrics"]["acc_final"] == a["metrics"]["acc_final"]
