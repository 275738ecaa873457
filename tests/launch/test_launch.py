"""Executors without a cluster: Slurm options and their sbatch flags, submission records and ``status`` (with a fake
sacct), the dense-model stage, the run lock, and the local worker pool against the inline loop."""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import queue
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cli import main
from bench.config import load_suite
from bench.errors import ConfigError, UserError
from bench.launch import (
    Invocation,
    Submission,
    check_slurm_device,
    dense_stage,
    init_pool_worker,
    latest_tasks,
    live_tasks,
    make_executor,
    pool_devices,
    pruned_stage,
    record_submission,
    run_in_process,
    run_local,
    run_states,
    scheduler_states,
    submit_slurm,
)
from bench.store import DenseDir, PrunedDir, RunDir, file_lock, save_checkpoint, write_json
from tests.conftest import tiny_suite


def invocation(suite_path: Path, results: Path, *overrides: str) -> Invocation:
    return Invocation.from_args(argparse.Namespace(suite=str(suite_path), overrides=list(overrides), plugins=[],
                                                   results=str(results), data_root=None, device=None))


# ----------------------------------------------------------------------------------------- Slurm options

def test_slurm_section_is_typed_and_maps_to_sbatch_flags(write_suite, tmp_path: Path) -> None:
    suite = load_suite(write_suite(tiny_suite(slurm={
        "partition": "gpu", "account": "lab", "qos": "high", "gpus_per_task": 1, "cpus_per_task": 8, "mem_gb": 12,
        "timeout_min": 30, "array_parallelism": 5, "signal_delay_s": 120,
        "additional_parameters": {"constraint": "a100", "exclusive": True}, "setup": ["module load cuda"]})))
    executor = make_executor(suite.slurm, tmp_path / "logs", "bench-tiny")
    script = executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for flag in ("--partition=gpu", "--account=lab", "--qos=high", "--gpus-per-task=1", "--cpus-per-task=8",
                 "--mem=12GB", "--time=30", "--signal=USR2@120", "--constraint=a100", "--job-name=bench-tiny",
                 "--nodes=1", "--ntasks-per-node=1"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "#SBATCH --exclusive\n" in script and "module load cuda\n" in script
    assert executor.max_num_timeout == 3


def test_slurm_defaults_leave_cluster_settings_alone(write_suite, tmp_path: Path, monkeypatch) -> None:
    suite = load_suite(write_suite(tiny_suite()))
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, as on a laptop: the script is still built
    script = make_executor(suite.slurm, tmp_path, "x")._make_submission_file_text("true", "uid")
    assert "--partition" not in script and "--mem" not in script and "--gpus" not in script
    assert "#SBATCH --time=240\n" in script and "#SBATCH --cpus-per-task=4\n" in script


@pytest.mark.parametrize(("slurm", "expected"), [
    ({"gpus_per_tsk": 1}, "Did you mean 'gpus_per_task'"),
    ({"timeout_min": 0}, "'slurm.timeout_min' is 0; it must be >= 1"),
    ({"additional_parameters": {"output": "x.log"}}, "output are set by submitit itself"),
])
def test_bad_slurm_options_name_the_key(write_suite, slurm: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_suite(write_suite(tiny_suite(slurm=slurm)))


def test_command_line_flags_override_the_slurm_section(write_suite, tmp_path: Path, monkeypatch) -> None:
    captured = {}

    def fake_submit(invocation, suite, todo):
        captured.update(slurm=suite.slurm, todo=len(todo), invocation=invocation)
        return None

    monkeypatch.setattr("bench.launch.submit_slurm", fake_submit)
    suite = write_suite(tiny_suite(slurm={"partition": "cpu", "timeout_min": 60}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--executor", "slurm", "--partition", "gpu",
                 "--gpus-per-task", "2", "--mem-gb", "7.5", "--quiet"]) == 0
    slurm = captured["slurm"]
    assert (slurm.partition, slurm.gpus_per_task, slurm.mem_gb, slurm.timeout_min) == ("gpu", 2, 7.5, 60)
    assert captured["todo"] == 4
    assert "slurm.partition=\"gpu\"" in captured["invocation"].overrides  # the tasks re-load the same suite


def test_submission_needs_sbatch_and_a_gpu_request_for_cuda(write_suite, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch
    inv = invocation(write_suite(tiny_suite(device="cuda")), tmp_path)
    suite, runs, _ = inv.load()
    with pytest.raises(UserError, match="'sbatch' is not on PATH"):
        submit_slurm(inv, suite, runs)
    with pytest.raises(ConfigError, match="device 'cuda' needs a GPU in each Slurm task"):
        check_slurm_device(inv, suite)
    gres = load_suite(write_suite(tiny_suite(device="cuda", slurm={"additional_parameters": {"gres": "gpu:1"}})))
    check_slurm_device(inv, gres)


def test_slurm_refuses_a_gpu_index_past_the_tasks_own(write_suite, tmp_path: Path) -> None:
    """Slurm shows each task only its own GPUs from cuda:0, so device cuda:1 with one GPU per task would fail every
    array task (and every resubmission) without a result: refused at submission; indices the task has pass."""
    inv = invocation(write_suite(tiny_suite()), tmp_path)

    def suite(device: str, **slurm: Any) -> Any:
        return load_suite(write_suite(tiny_suite(device=device, slurm=slurm)))

    with pytest.raises(ConfigError, match="sees only the 1 GPU"):
        check_slurm_device(inv, suite("cuda:1", gpus_per_task=1))
    with pytest.raises(ConfigError, match="cuda:0 to cuda:1"):
        check_slurm_device(inv, suite("cuda:2", additional_parameters={"gres": "gpu:a100:2"}))
    for device, slurm in (("cuda:0", {"gpus_per_task": 1}), ("cuda:1", {"gpus_per_task": 2}),
                          ("cuda:1", {"additional_parameters": {"gres": "gpu:a100:2"}}),
                          ("cuda:3", {"additional_parameters": {"gres": "gpu"}})):   # a count Slurm decides
        check_slurm_device(inv, suite(device, **slurm))


def test_executor_options_are_checked(write_suite, tmp_path: Path) -> None:
    suite = str(write_suite(tiny_suite()))
    assert main(["run", suite, "--results", str(tmp_path), "--workers", "2"]) == 2  # --workers needs local
    assert main(["run", suite, "--results", str(tmp_path), "--wait"]) == 2          # --wait needs slurm
    assert not (tmp_path / "tiny").exists()


def test_launch_does_not_import_the_command_line() -> None:
    """The executors sit below the CLI: what both need (loading a suite, the device) lives in bench.suite.session."""
    trees = [ast.parse(path.read_text()) for path in (Path(__file__).parents[2] / "bench" / "launch").glob("*.py")]
    imported = {node.module for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for tree in trees for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert "bench.suite.session" in imported and not any(name == "bench.cli" or name.startswith("bench.cli.")
                                                   for name in imported)


# ----------------------------------------------------------------------------------------- workers

def test_invocation_is_absolute_and_rebuilds_the_runs(write_suite, tmp_path: Path, monkeypatch) -> None:
    path = write_suite(tiny_suite())
    monkeypatch.chdir(tmp_path)
    inv = invocation(Path(path.name), Path("results"), "retrain.epochs=1")
    assert Path(inv.suite).is_absolute() and Path(inv.results) == tmp_path / "results"
    suite, runs, _ = inv.load()
    assert suite.retrain.epochs == 1 and len(runs) == 4


def test_task_for_a_run_no_longer_in_the_suite_fails_clearly(write_suite, tmp_path: Path) -> None:
    inv = invocation(write_suite(tiny_suite()), tmp_path)
    with pytest.raises(UserError, match="run 0123456789ab is no longer part of suite"):
        run_in_process(inv, "0123456789ab")


def test_a_run_held_by_another_process_is_skipped(write_suite, tmp_path: Path) -> None:
    inv = invocation(write_suite(tiny_suite()), tmp_path)
    suite, runs, _ = inv.load()
    rd = RunDir(tmp_path, suite.name, runs[0].run_id)
    with file_lock(rd.lock, blocking=False) as acquired:  # flock conflicts across open files, even in one process
        assert acquired
        assert run_in_process(inv, runs[0].run_id) == "locked"
    assert not rd.result.exists()


def test_dense_stage_picks_one_run_per_missing_trained_dense_model(write_suite, tmp_path: Path) -> None:
    """One run per missing dense model, as tasks: the MLP's seeds as one fused group (fuse: on), else alone (off,
    and auto, which does not fuse dense training)."""
    inv = invocation(write_suite(tiny_suite(seeds=[0, 1], execution={"fuse": "on"})), tmp_path)
    _, runs, _ = inv.load()
    assert len(runs) == 8 and len({r.dense_id for r in runs}) == 2
    (chosen,) = dense_stage(runs, tmp_path)  # one task: the two seeds' dense models fused
    assert sorted(r.dense_id for r in chosen) == sorted({r.dense_id for r in runs})
    assert [len(task) for task in dense_stage(runs, tmp_path / "x")] == [2]
    dense = DenseDir(tmp_path, chosen[0].dense_id)
    save_checkpoint(dense.model, {"model": {}})
    assert len(dense_stage(runs, tmp_path)[0]) == 2  # a model file without its record (dense.json) is not finished
    write_json(dense.meta, {"acc": 0.5})
    assert [[r.dense_id for r in task] for task in dense_stage(runs, tmp_path)] == [[chosen[1].dense_id]]
    for run in runs:   # runs already pruned need no dense model
        if run.dense_id == chosen[1].dense_id:
            save_checkpoint(PrunedDir(tmp_path, run.prune_id).model, {})
    assert dense_stage(runs, tmp_path) == []
    no_training = invocation(write_suite(tiny_suite(pretrain={"epochs": 0})), tmp_path / "other")
    assert dense_stage(no_training.load()[1], tmp_path / "other") == []
    for mode in ("off", "auto"):
        apart = invocation(write_suite(tiny_suite(seeds=[0, 1], execution={"fuse": mode}), f"{mode}.yaml"), tmp_path)
        assert [len(task) for task in dense_stage(apart.load()[1], tmp_path / mode)] == [1, 1]


def test_pruned_stage_picks_one_run_per_missing_shared_pruned_model(write_suite, tmp_path: Path) -> None:
    suite = tiny_suite(seeds=[0, 1], methods=["l1", {"greg": {"delta": 0.5, "stabilize": 2}}])
    _, runs, _ = invocation(write_suite(suite), tmp_path).load()   # l1, greg × 2 LRs × 2 seeds
    chosen = pruned_stage(runs, tmp_path)
    # greg's two (ratio, seed) groups, each shared by two LRs; l1 has no phase, so its first run just makes it
    assert len(runs) == 8 and len(chosen) == 2 and {r.method.label for r in chosen} == {"greg"}
    assert len({r.prune_id for r in chosen}) == 2
    save_checkpoint(PrunedDir(tmp_path, chosen[0].prune_id).model, {})
    assert [r.run_id for r in pruned_stage(runs, tmp_path)] == [chosen[1].run_id]
    assert pruned_stage([r for r in runs if r.lr == 0.05], tmp_path) == []  # nobody to share with: no stage


def test_pool_workers_get_gpus_round_robin(write_suite, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    auto = load_suite(write_suite(tiny_suite(device="auto")))
    inv = invocation(write_suite(tiny_suite(device="auto")), tmp_path)
    assert pool_devices(inv, auto, 3) == ["cuda:0", "cuda:1", "cuda:0"]
    cpu = load_suite(write_suite(tiny_suite(device="cpu")))
    assert pool_devices(inv, cpu, 3) is None
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert pool_devices(inv, auto, 3) is None


def test_pool_workers_on_one_named_gpu_say_so_and_make_it_current(write_suite, tmp_path: Path, monkeypatch,
                                                                   caplog) -> None:
    """device cuda:1 pins every worker to GPU 1, with a warning that they share it (it used to drop the per-worker
    choice silently); a worker makes its GPU the current device, or CUDA's context would open on GPU 0. The second
    half runs the real initializer: on this GPU-less machine its torch.cuda.set_device call fails for want of a
    driver, which shows that it made the call."""
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    pinned = load_suite(write_suite(tiny_suite(device="cuda:1")))
    inv = invocation(write_suite(tiny_suite(device="cuda:1")), tmp_path)
    with caplog.at_level(logging.WARNING, logger="bench.launch"):
        assert pool_devices(inv, pinned, 2) == ["cuda:1", "cuda:1"]
    assert "all 2 workers share that one GPU" in caplog.text
    slots: queue.Queue[int] = queue.Queue()
    slots.put(0)
    init_pool_worker(slots, None, None, logging.WARNING)  # CPU workers never touch CUDA
    slots.put(0)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU-less half of this test does not apply")
    with pytest.raises(RuntimeError, match="NVIDIA driver|CUDA"):
        init_pool_worker(slots, ["cuda:1"], None, logging.WARNING)


def test_local_pool_matches_the_inline_loop(write_suite, tmp_path: Path) -> None:
    """l1 and GReg (a phase, so a pruned-model stage before its two LRs' runs) in two workers, as the inline loop."""
    suite_path = write_suite(tiny_suite(methods=["l1", {"greg": {"delta": 0.5, "stabilize": 2}}],
                                        retrain={"epochs": 2, "batch_size": 64, "lr": [0.05, 0.01]}))
    assert main(["run", str(suite_path), "--results", str(tmp_path / "inline"), "--quiet"]) == 0
    inv = invocation(suite_path, tmp_path / "pool")
    suite, runs, _ = inv.load()
    done: list[str] = []
    statuses = run_local(inv, suite, runs, workers=2, quiet=True, on_done=lambda run, status: done.append(status))
    assert statuses == {"ok": 4} and done == ["ok"] * 4
    for run in runs:
        inline = json.loads(RunDir(tmp_path / "inline", "tiny", run.run_id).result.read_text())
        pooled = json.loads(RunDir(tmp_path / "pool", "tiny", run.run_id).result.read_text())
        assert pooled["status"] == "ok"
        for key in ("acc_final", "acc_pruned", "acc_dense", "params_pruned"):
            assert pooled["metrics"][key] == inline["metrics"][key], key
        assert [r["train_loss"] for r in pooled["history"]["retrain"]] == \
            [r["train_loss"] for r in inline["history"]["retrain"]]
    greg = [json.loads(RunDir(tmp_path / "pool", "tiny", r.run_id).result.read_text())["history"]["phase"]
            for r in runs if r.method.label == "greg"]
    assert len(greg) == 2 and greg[0] and greg[0] == greg[1]  # one phase for both LRs


# ----------------------------------------------------------------------------------------- records and status

def fake_sacct(tmp_path: Path, monkeypatch, lines: list[str]) -> None:
    """Put an ``sacct`` on PATH that prints ``lines`` in sacct's --parsable2 format."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "sacct"
    script.write_text("#!/bin/sh\nprintf '%s\\n' 'JobID|State|NodeList' " + " ".join(f"'{x}'" for x in lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_scheduler_states_come_from_one_sacct_call(tmp_path: Path, monkeypatch) -> None:
    fake_sacct(tmp_path, monkeypatch, ["7_0|COMPLETED|vm", "7_0.batch|COMPLETED|vm", "7_1|CANCELLED by 0|vm",
                                       "7_[2-3%2]|PENDING|None"])
    states = scheduler_states(["7_0", "7_1", "7_2", "7_3", "8_0"])
    assert states == {"7_0": "COMPLETED", "7_1": "CANCELLED", "7_2": "PENDING", "7_3": "PENDING", "8_0": "UNKNOWN"}


def test_status_joins_result_files_with_the_scheduler(write_suite, tmp_path: Path, monkeypatch, capsys) -> None:
    suite_path = write_suite(tiny_suite(seeds=[0, 1, 2]))  # 12 runs
    inv = invocation(suite_path, tmp_path)
    suite, runs, _ = inv.load()
    ids = [r.run_id for r in runs]
    log_dir = tmp_path / "tiny" / "slurm"
    record_submission(tmp_path, Submission("tiny", log_dir, "7", {i: f"7_{k}" for k, i in enumerate(ids[:6])}), inv)
    record_submission(tmp_path, Submission("tiny", log_dir, "9", {ids[5]: "9_0", ids[6]: "9_1"}), inv)
    assert latest_tasks(tmp_path, "tiny")[ids[5]][:2] == ("9_0", str(log_dir))   # the latest submission wins
    fake_sacct(tmp_path, monkeypatch, ["7_0|COMPLETED|vm", "7_1|RUNNING|vm", "7_2|PENDING|None",
                                       "7_3|CANCELLED by 0|vm", "7_4|COMPLETED|vm", "9_0|REQUEUED|vm",
                                       "9_1|TIMEOUT|vm"])
    result = {"status": "ok"}
    write_json(RunDir(tmp_path, "tiny", ids[0]).result, result)
    write_json(RunDir(tmp_path, "tiny", ids[1]).result, {"status": "running"})
    write_json(RunDir(tmp_path, "tiny", ids[3]).result, {"status": "running"})
    write_json(RunDir(tmp_path, "tiny", ids[4]).result, {"status": "failed", "error": "ConfigError: bad\nmore"})
    write_json(RunDir(tmp_path, "tiny", ids[7]).result, {"status": "diverged"})
    write_json(RunDir(tmp_path, "tiny", ids[8]).result, {"status": "running",
                                                         "attempts": [{"host": "node1", "pid": 42}]})
    states = {s.run.run_id: s for s in run_states(runs, tmp_path)}
    expected = ["ok", "running", "pending", "failed", "failed", "pending", "failed", "diverged", "interrupted",
                "pending", "pending", "pending"]
    assert [states[i].state for i in ids] == expected
    assert states[ids[3]].detail.startswith("Slurm task CANCELLED")
    assert states[ids[3]].log == log_dir / "7_3_0_log.err"
    assert states[ids[4]].detail == "ConfigError: bad"
    assert "TIMEOUT" in states[ids[6]].detail and states[ids[9]].detail == "not started"
    assert "node1 (pid 42)" in states[ids[8]].detail
    assert set(live_tasks(tmp_path, "tiny")) == {ids[1], ids[2], ids[5]}

    assert main(["status", str(suite_path), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 diverged; 3 failed; 1 interrupted; 1 ok; 5 pending; 1 running" in out
    rerun = next(line for line in out.splitlines() if line.startswith("3 failed run(s) to rerun"))
    assert rerun.endswith(f": {ids[3]}, {ids[4]}, {ids[6]}") and ids[7] not in rerun  # diverged is a result
    assert f"log of {ids[3]} (failed): {log_dir / '7_3_0_log.err'}" in out


def test_status_tells_a_running_run_from_an_interrupted_one_by_its_lock(write_suite, tmp_path: Path, capsys) -> None:
    """Not by the recorded pid, which may be reused or on another host: a live runner holds the run's lock."""
    suite_path = write_suite(tiny_suite())
    _, runs, _ = invocation(suite_path, tmp_path).load()
    rd = RunDir(tmp_path, "tiny", runs[0].run_id)
    write_json(rd.result, {"status": "running", "attempts": [{"host": "elsewhere", "pid": os.getpid()}]})
    with file_lock(rd.lock, blocking=False):
        assert run_states(runs, tmp_path)[0].state == "running"
    state = run_states(runs, tmp_path)[0]
    assert (state.state, state.detail) == ("interrupted", "run again to resume (last started on elsewhere (pid "
                                           f"{os.getpid()}))")
    assert main(["status", str(suite_path), "--results", str(tmp_path)]) == 0
    assert "1 interrupted; 3 pending" in capsys.readouterr().out


def test_status_without_submissions_or_sacct(write_suite, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))   # no sacct anywhere
    inv = invocation(write_suite(tiny_suite()), tmp_path)
    _, runs, _ = inv.load()
    record_submission(tmp_path, Submission("tiny", tmp_path, "7", {runs[0].run_id: "7_0"}), inv)
    states = run_states(runs, tmp_path)
    assert [s.state for s in states] == ["pending"] * 4 and states[0].task == "7_0"


def test_a_task_sacct_does_not_list_yet_counts_as_live_for_a_while(write_suite, tmp_path: Path, monkeypatch) -> None:
    fake_sacct(tmp_path, monkeypatch, [])
    inv = invocation(write_suite(tiny_suite()), tmp_path)
    _, runs, _ = inv.load()
    record_submission(tmp_path, Submission("tiny", tmp_path, "8", {runs[0].run_id: "8_0"}), inv)
    assert live_tasks(tmp_path, "tiny") == {runs[0].run_id: "8_0"}
    path = tmp_path / "tiny" / "submissions.json"
    record = json.loads(path.read_text())
    record["submissions"][0]["submitted_unix"] -= 3600
    path.write_text(json.dumps(record))
    assert live_tasks(tmp_path, "tiny") == {}
