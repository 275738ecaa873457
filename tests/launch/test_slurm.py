"""The Slurm executor against a real Slurm (``scripts/slurm/setup.sh up``): arrays give the inline results, a
cancelled task is finished by a resubmission, a preempted task resumes from its checkpoint, and a run submitted
twice at once trains once. Skipped when no Slurm controller with accounting and an idle node answers."""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.launch import (
    Invocation,
    SlurmTask,
    make_executor,
    read_submissions,
    run_states,
    scheduler_states,
    submit_slurm,
    wait_for,
)
from bench.store import PrunedDir, RunDir
from tests.conftest import tiny_suite

SLEEP_ENV = "BENCH_TEST_STEP_SLEEP"
PLUGIN = '''"""Test plugin: a method component whose phase sleeps after each step (time to interrupt a task)."""
import os
import time
from dataclasses import dataclass

from bench import BaseHooks, Method, Phase, Recipe, field, register_method


class Sleep(BaseHooks):
    """Sleeps $BENCH_TEST_STEP_SLEEP seconds after each step (not a hyperparameter: run ids do not change)."""

    def after_step(self, model, step):
        time.sleep(float(os.environ.get("BENCH_TEST_STEP_SLEEP", "0")))


@dataclass
class SlowHparams:
    epochs: int = field(6, low=1)


@register_method("slowphase")
class SlowPhase(Method):
    """A six-epoch phase before selection, checkpointed each epoch like any method's phase."""

    Hparams = SlowHparams
    selects = False

    def phase(self, model, ctx):
        return Phase(recipe=Recipe(epochs=self.hparams.epochs, lr=0.01, batch_size=64), hooks=[Sleep()])
'''


def cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None. Uses $SLURM_CONF, else the setup script's default place."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (run scripts/slurm/setup.sh up as root)"
    default = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local")) / "etc" / "slurm.conf"
    if "SLURM_CONF" not in os.environ and default.exists():
        os.environ["SLURM_CONF"] = str(default)   # submitit, sbatch and the jobs all need it
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout.split()
        sacct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return f"Slurm does not answer: {err}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "no Slurm controller answers (scontrol ping); run scripts/slurm/setup.sh up"
    if not {"idle", "mix"} & set(nodes):
        return f"no idle Slurm node (sinfo: {' '.join(nodes) or 'none'})"
    if sacct.returncode != 0:
        return "Slurm has no accounting (sacct fails), which submitit needs to see cancelled jobs end"
    return None


PROBLEM = cluster_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
WAIT_S = 180


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin file, one path per test process: a second file would register 'slowphase' twice in this process
    (test_slurm_rounds.py imports this fixture, and each module gets its own instance of a module fixture)."""
    path = tmp_path_factory.getbasetemp() / "slowphase-plugin" / "slowphase.py"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PLUGIN)
    return path


@pytest.fixture
def slurm_node() -> Iterator[None]:
    """The local cluster's one node, held for the test: test processes (xdist workers) take their Slurm tests one at
    a time, as the tests time their jobs' states (a requeued task pending, a second submission finding the first's
    task live) and another file's jobs on the node would delay them past their waits."""
    with open(Path(tempfile.gettempdir()) / "bench-slurm-tests.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def jobs_to_cancel(tmp_path: Path, slurm_node: None) -> Iterator[list[str]]:
    """Job ids to scancel after the test (plus everything recorded under tmp_path), so no test leaves jobs behind.

    Jobs get a few seconds to end on their own first: a passing test may end while its last task is exiting.
    """
    ids: list[str] = []
    yield ids
    for record in tmp_path.rglob("submissions.json"):
        for entry in json.loads(record.read_text())["submissions"]:
            ids += [entry["job"]] + [entry[k] for k in ("dense_job", "prune_job") if entry.get(k)]
    deadline = time.monotonic() + 15
    while ids and time.monotonic() < deadline and subprocess.run(
            ["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True, timeout=30).stdout.strip():
        time.sleep(0.5)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def slurm_suite(plugin: Path, **changes: Any) -> dict[str, Any]:
    """Two tiny runs (l1, random) on synthetic data, sized so each task's Python start-up dominates."""
    suite = tiny_suite(dataset={"name": "synthetic", "num_train": 256, "num_test": 128, "channels": 1, "size": 32},
                       pretrain={"epochs": 1, "batch_size": 64, "lr": 0.05},
                       retrain={"epochs": 2, "batch_size": 64, "lr": [0.05]},
                       slurm={"cpus_per_task": 1, "timeout_min": 60, "dense_job": False},
                       plugins=[str(plugin)])
    suite.update(changes)
    return suite


def invocation(suite_path: Path, results: Path) -> Invocation:
    return Invocation.from_args(argparse.Namespace(suite=str(suite_path), overrides=[], plugins=[],
                                                   results=str(results), data_root=None, device=None))


def wait_until(what: str, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll ``condition`` every half second; fail with the queue and accounting when it does not come true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            acct = subprocess.run(["sacct", "-X", "-o", "JobID,State,Elapsed,Reason"], capture_output=True,
                                  text=True).stdout
            pytest.fail(f"gave up after {timeout:.0f}s waiting for {what}\n{queue}\n{acct}")
        time.sleep(0.5)


def result(results: Path, run_id: str, suite: str = "tiny") -> dict[str, Any]:
    path = RunDir(results, suite, run_id).result
    return json.loads(path.read_text()) if path.exists() else {}


def finished(results: Path, run_ids: list[str]) -> Callable[[], bool]:
    return lambda: all(result(results, r).get("status") in ("ok", "diverged", "failed") for r in run_ids)


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on where a run executed: metrics and histories without wall-clock times."""
    metrics = {k: v for k, v in record["metrics"].items() if k != "timings" and not k.startswith("latency_")}
    history = {phase: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
               for phase, rows in record["history"].items()}
    return {"metrics": metrics, "history": history}


def test_array_gives_the_inline_results_and_resubmission_skips_live_runs(plugin: Path, write_suite, tmp_path: Path,
                                                                        jobs_to_cancel: list[str], capsys) -> None:
    """Two runs that differ only in the retraining LR: a dense-model array, a pruned-model array making their
    shared pruned model (its phase) once, then the runs."""
    suite = str(write_suite(slurm_suite(plugin, methods=["l1 + slowphase"], retrain={
        "epochs": 2, "batch_size": 64, "lr": [0.05, 0.01]}, slurm={"cpus_per_task": 1, "dense_job": True})))
    results = tmp_path / "slurm"
    assert main(["run", suite, "--results", str(results), "--executor", "slurm", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 runs as Slurm job array" in out, out
    assert "after the dense-model array" in out and "and the pruned-model array" in out, out
    (submission,) = read_submissions(results, "tiny")
    assert len(submission["tasks"]) == 2 and len(submission["dense_tasks"]) == 1
    assert len(submission["prune_tasks"]) == 1
    assert main(["run", suite, "--results", str(results), "--executor", "slurm", "--quiet"]) == 0
    assert "nothing to submit" in capsys.readouterr().out   # both runs are queued or running
    assert len(read_submissions(results, "tiny")) == 1

    run_ids = list(submission["tasks"])
    wait_until("the array to finish", finished(results, run_ids))
    assert main(["run", suite, "--results", str(tmp_path / "inline"), "--quiet"]) == 0
    for run_id in run_ids:
        on_slurm, inline = result(results, run_id), result(tmp_path / "inline", run_id)
        assert on_slurm["status"] == "ok", on_slurm.get("error")
        assert comparable(on_slurm) == comparable(inline)
    first, second = (result(results, r) for r in run_ids)
    assert first["history"]["phase"] == second["history"]["phase"]  # one phase, seconds and all, for both LRs
    assert main(["status", suite, "--results", str(results)]) == 0
    assert capsys.readouterr().out.strip().endswith("2 ok")


def test_cancelled_task_is_finished_by_a_resubmission(plugin: Path, write_suite, tmp_path: Path,
                                                      jobs_to_cancel: list[str], monkeypatch) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.3")   # sbatch passes the environment on to the jobs
    suite_path = write_suite(slurm_suite(plugin, methods=["l1 + slowphase"], prune={"ratios": [0.3, 0.6]}))
    results = tmp_path / "results"
    inv = invocation(suite_path, results)
    suite, runs, _ = inv.load()
    first, second = runs
    submission = submit_slurm(inv, suite, runs)
    assert submission is not None and set(submission.tasks) == {first.run_id, second.run_id}
    task = submission.tasks[first.run_id]
    wait_until("the first run's phase checkpoint", PrunedDir(results, first.prune_id).phase.exists)
    subprocess.run(["scancel", task], check=True, timeout=30)
    wait_until("sacct to report the cancellation", lambda: scheduler_states([task]).get(task) == "CANCELLED")

    state = {s.run.run_id: s for s in run_states(runs, results)}[first.run_id]
    assert state.state == "failed" and "CANCELLED" in state.detail and state.log is not None and state.log.exists()

    again = submit_slurm(inv, suite, runs)   # the second run is still running or already done
    assert again is not None and list(again.tasks) == [first.run_id]
    assert wait_for(again) == {"ok": 1}
    wait_until("the second run", finished(results, [second.run_id]))
    assert [s.state for s in run_states(runs, results)] == ["ok", "ok"]
    assert "resumed at epoch" in again.log_paths(again.tasks[first.run_id])[1].read_text()


def test_preempted_task_requeues_and_resumes(plugin: Path, write_suite, tmp_path: Path,
                                             jobs_to_cancel: list[str], monkeypatch) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.3")
    suite_path = write_suite(slurm_suite(plugin, methods=["l1 + slowphase"]))
    results = tmp_path / "results"
    inv = invocation(suite_path, results)
    suite, (run,), _ = inv.load()
    submission = submit_slurm(inv, suite, [run])
    assert submission is not None
    task, job = submission.tasks[run.run_id], submission.jobs[-1]
    phase_checkpoint = PrunedDir(results, run.prune_id).phase
    wait_until("the phase checkpoint", phase_checkpoint.exists)
    job._interrupt()   # SIGTERM then USR2, as Slurm does at preemption: submitit checkpoints and requeues
    queue_state = lambda: subprocess.run(["squeue", "-h", "-j", task, "-o", "%T"], capture_output=True,  # noqa: E731
                                         text=True).stdout.strip()
    wait_until("the requeued task to pend", lambda: queue_state() == "PENDING", timeout=60)
    # It starts about cred_expire + 1 = 11 s later; forcing StartTime=now gets it killed ("credential revoked").
    wait_until("the requeued run to finish", finished(results, [run.run_id]))

    record = result(results, run.run_id)
    assert record["status"] == "ok", record.get("error")
    assert [row["epoch"] for row in record["history"]["phase"]] == [1, 2, 3, 4, 5, 6]
    log = submission.log_paths(task)[1].read_text()
    assert "interrupted (time limit or preemption): requeued" in log
    resumed = [int(line.split("resumed at epoch ")[1].split()[0]) for line in log.splitlines() if "resumed at" in line]
    assert resumed and 1 <= resumed[0] < 6, log          # it went on from its checkpoint, not from epoch 0

    monkeypatch.delenv(SLEEP_ENV)
    assert main(["run", str(suite_path), "--results", str(tmp_path / "inline"), "--quiet"]) == 0
    assert comparable(record) == comparable(result(tmp_path / "inline", run.run_id))


def test_a_run_submitted_twice_at_once_trains_once(plugin: Path, write_suite, tmp_path: Path,
                                                   jobs_to_cancel: list[str], monkeypatch) -> None:
    monkeypatch.setenv(SLEEP_ENV, "0.2")
    suite_path = write_suite(slurm_suite(plugin, methods=["l1 + slowphase"]))
    results = tmp_path / "results"
    inv = invocation(suite_path, results)
    suite, (run,), _ = inv.load()
    executor = make_executor(suite.slurm, results / "logs", "bench-twice")
    jobs = executor.submit_array([SlurmTask(inv, run.run_id), SlurmTask(inv, run.run_id)])
    jobs_to_cancel.append(jobs[0].job_id.split("_")[0])
    assert sorted(job.result() for job in jobs) == ["locked", "ok"]
    record = result(results, run.run_id)
    assert record["status"] == "ok" and len(record["history"]["phase"]) == 6


def test_a_request_the_cluster_cannot_meet_is_refused_at_submission(plugin: Path, write_suite, tmp_path: Path,
                                                                    capsys) -> None:
    suite = str(write_suite(slurm_suite(plugin)))
    code = main(["run", suite, "--results", str(tmp_path), "--executor", "slurm", "--cpus-per-task", "4096"])
    assert code == 2
    assert "sbatch refused the job array" in capsys.readouterr().err
    assert read_submissions(tmp_path, "tiny") == []


def test_a_data_parallel_run_is_one_task_per_rank(plugin: Path, write_suite, tmp_path: Path,
                                                  jobs_to_cancel: list[str]) -> None:
    suite = str(write_suite(slurm_suite(plugin, methods=["l1"], slurm={"cpus_per_task": 1, "tasks_per_run": 2,
                                                                       "dense_job": False})))
    results = tmp_path / "slurm"
    assert main(["run", suite, "--results", str(results), "--executor", "slurm", "--quiet"]) == 0
    (submission,) = read_submissions(results, "tiny")
    (run_id,) = submission["tasks"]
    wait_until("the two-task run to finish", finished(results, [run_id]))
    on_slurm = result(results, run_id)
    assert on_slurm["status"] == "ok", on_slurm.get("error")
    assert on_slurm["environment"]["data_parallel"] == {"world_size": 2, "backend": "gloo"}
    assert main(["run", suite, "--results", str(tmp_path / "inline"), "--quiet"]) == 0
    inline = result(tmp_path / "inline", run_id)
    assert [r["train_loss"] for r in on_slurm["history"]["retrain"]] == \
        pytest.approx([r["train_loss"] for r in inline["history"]["retrain"]], rel=1e-4)
    assert on_slurm["metrics"]["acc_final"] == pytest.approx(inline["metrics"]["acc_final"], abs=2 / 128)
