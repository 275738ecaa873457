"""End-to-end runs through the CLI on seeded synthetic data: results, skipping, resuming, plugins, determinism."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.cli import main
from bench.store import load_checkpoint
from tests.conftest import PROJECT, tiny_suite


def results_of(results: Path, suite: str = "tiny") -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / suite / "runs").glob("*/result.json")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny suite (l1, random × 1 ratio × 2 LRs × 1 seed), run once for several tests."""
    root = tmp_path_factory.mktemp("finished")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite()))
    assert main(["run", str(suite), "--results", str(root / "results"), "--quiet"]) == 0
    return root


def test_every_run_has_a_complete_result(finished: Path) -> None:
    results = results_of(finished / "results")
    assert len(results) == 4
    for run_id, result in results.items():
        assert result["status"] == "ok" and result["run_id"] == run_id
        m = result["metrics"]
        assert m["params_pruned"] < m["params_dense"] and m["flops_pruned"] < m["flops_dense"]
        assert m["channels"]["layers.0"] == [50, 100]  # ceil(0.5 * 100) removed
        assert set(m["channels"]) == {f"layers.{i}" for i in range(6)}
        assert len(result["history"]["retrain"]) == 3 and "jsv_mean" in result["history"]["retrain"][0]
        assert m["acc_best"] >= m["acc_final"] and 0 <= m["acc_trainability"] <= 1
        for model in ("dense", "pruned"):  # measured inference latency, beside the FLOP counts
            assert m[f"latency_{model}"]["median_ms"] > 0 and m[f"latency_{model}"]["batch_size"] == 64
        assert result["environment"]["packages"]["torch"] and result["environment"]["device"] == "cpu"
        run_dir = finished / "results" / "tiny" / "runs" / run_id
        kept = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
        assert kept == ["model.pt", "model.pt.sha256", "result.json"]
    dense = list((finished / "results" / "_dense").iterdir())
    assert len(dense) == 1  # one dense model shared by all four runs


def test_final_model_reloads_to_the_same_accuracy(finished: Path) -> None:
    from bench.config import load_suite
    from bench.data import build_dataset
    from bench.grid import expand
    from bench.pruning import slim, trace_dependencies
    from bench.runner import example_input, model_entry, new_model, select_layers
    from bench.train import evaluate

    run = expand(load_suite(finished / "suite.yaml"))[0]
    data = build_dataset("synthetic", run.suite.dataset_options, None, 32)
    model = new_model(run, data.info, [])
    state = load_checkpoint(finished / "results" / "tiny" / "runs" / run.run_id / "model.pt")
    slim(model, state["keep"], trace_dependencies(model, example_input(data.info), select_layers(model, run)))
    model.load_state_dict(state["model"])
    _, acc = evaluate(model, data, 256, torch.device("cpu"))
    assert acc == results_of(finished / "results")[run.run_id]["metrics"]["acc_final"]
    assert model_entry(run).nonlinearity == "relu"


def test_rerunning_a_finished_suite_trains_nothing(finished: Path, monkeypatch) -> None:
    import bench.runner

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench.runner, "fit", no_training)
    before = {p: p.stat().st_mtime_ns for p in (finished / "results").rglob("result.json")}
    assert main(["run", str(finished / "suite.yaml"), "--results", str(finished / "results"), "--quiet"]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (finished / "results").rglob("result.json")}


def test_report_writes_one_row_per_run(finished: Path) -> None:
    assert main(["report", "--results", str(finished / "results")]) == 0
    frame = pd.read_csv(finished / "results" / "tiny" / "report" / "runs.csv")
    assert len(frame) == 4 and set(frame.status) == {"ok"}
    for column in ("suite", "run_id", "method", "model", "dataset", "ratio", "lr", "seed", "acc_dense",
                   "acc_pruned", "acc_final", "acc_best", "params_dense", "params_pruned", "flops_dense",
                   "flops_pruned", "wall_s", "jsv_dense", "jsv_pruned", "jsv_final", "latency_dense_median_ms",
                   "latency_pruned_median_ms"):
        assert frame[column].notna().all(), column
    summary = (finished / "results" / "tiny" / "report" / "summary.md").read_text()
    assert "speed-up (×)" in summary  # the measured speed-up beside the parameter and FLOP reductions


def test_same_suite_twice_gives_identical_numbers(finished: Path, tmp_path: Path) -> None:
    """Determinism on CPU: a second, independent execution reproduces every metric and history row."""
    assert main(["run", str(finished / "suite.yaml"), "--results", str(tmp_path), "--quiet"]) == 0
    first, second = results_of(finished / "results"), results_of(tmp_path)
    for run_id in first:
        drop = ("timings", "latency_dense", "latency_pruned")  # wall-clock figures
        a = {k: v for k, v in first[run_id]["metrics"].items() if k not in drop}
        b = {k: v for k, v in second[run_id]["metrics"].items() if k not in drop}
        assert a == b
        strip = [{k: v for k, v in row.items() if k != "seconds"} for row in first[run_id]["history"]["retrain"]]
        assert strip == [{k: v for k, v in row.items() if k != "seconds"}
                         for row in second[run_id]["history"]["retrain"]]


def test_killed_run_resumes_to_the_uninterrupted_result(finished: Path, tmp_path: Path) -> None:
    """SIGKILL the runner once a retraining checkpoint exists; the re-run resumes and matches exactly."""
    suite = tiny_suite(methods=["l1"], retrain={"epochs": 8, "batch_size": 32, "lr": [0.05],
                                               "schedule": {"name": "step", "milestones": [4]}})
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(PROJECT / "bench.py"), "run", str(path), "--results", str(results),
                             "--quiet"], env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not list(results.glob("tiny/runs/*/checkpoint.pt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = list((results / "tiny" / "runs").iterdir())
    interrupted = json.loads((run_dir / "result.json").read_text())
    assert interrupted["status"] == "running"
    epochs_done = load_checkpoint(run_dir / "checkpoint.pt")["epoch"]
    assert 1 <= epochs_done < 8
    assert main(["run", str(path), "--results", str(results), "--quiet"]) == 0
    assert main(["run", str(path), "--results", str(tmp_path / "clean"), "--quiet"]) == 0
    resumed, clean = results_of(results)[run_dir.name], results_of(tmp_path / "clean")[run_dir.name]
    assert resumed["status"] == clean["status"] == "ok"
    assert resumed["metrics"]["acc_final"] == clean["metrics"]["acc_final"]
    assert [r["train_loss"] for r in resumed["history"]["retrain"]] == \
        [r["train_loss"] for r in clean["history"]["retrain"]]


PLUGIN = '''
"""An outside method: keep the filters with the largest L2 norm."""
from bench import Method, register_method


@register_method("l2_plugin")
class L2Norm(Method):
    description = "largest L2 norm (a plugin defined outside the repository)"

    def scores(self, model, ctx):
        modules = dict(model.named_modules())
        return {name: modules[name].weight.detach().flatten(1).norm(dim=1) for name in ctx.target.layers}
'''


def test_plugin_method_from_an_outside_file(tmp_path: Path, write_suite) -> None:
    plugin = tmp_path / "elsewhere" / "my_method.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    suite = write_suite(tiny_suite(methods=["l2_plugin"], retrain={"epochs": 1, "lr": [0.05]}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--plugin", str(plugin), "--quiet"]) == 0
    (result,) = results_of(tmp_path / "r").values()
    assert result["status"] == "ok" and result["method"] == "l2_plugin"


def test_a_plugin_scoring_too_few_layers_is_named_and_leaves_no_pruned_folder(tmp_path: Path, write_suite) -> None:
    plugin = tmp_path / "half.py"
    plugin.write_text(PLUGIN.replace('"l2_plugin"', '"half_plugin"').replace("in ctx.target.layers",
                                                                             "in ctx.target.layers[1:]"))
    suite = write_suite(tiny_suite(methods=["half_plugin"], retrain={"epochs": 1, "lr": [0.05]}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--plugin", str(plugin), "--quiet"]) == 1
    (result,) = results_of(tmp_path / "r").values()
    assert result["status"] == "failed" and "traceback" not in result
    assert result["error"].startswith("method 'half_plugin': scores() returned no score for layer 'layers.0';")
    assert list((tmp_path / "r" / "_pruned").iterdir()) == []   # the failed pruning left no folder behind


def test_diverging_run_is_recorded_and_the_suite_goes_on(tmp_path: Path, write_suite) -> None:
    suite = write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 2, "lr": [1.0e6, 0.01]}))
    assert main(["run", str(suite), "--results", str(tmp_path), "--quiet"]) == 0
    statuses = sorted((r["lr"], r["status"]) for r in results_of(tmp_path).values())
    assert statuses == [(0.01, "ok"), (1.0e6, "diverged")]
    diverged = next(r for r in results_of(tmp_path).values() if r["status"] == "diverged")
    ok = next(r for r in results_of(tmp_path).values() if r["status"] == "ok")
    assert diverged["diverged"] == {"phase": "retrain", "epoch": 1}  # counted from 1, like the history's rows
    # What was measured before retraining stays: the same pruned model as the run retrained at a sane LR.
    for key in ("acc_pruned", "params_pruned", "flops_pruned", "jsv_pruned_mean"):
        assert diverged["metrics"][key] == ok["metrics"][key], key
    assert "acc_final" not in diverged["metrics"] and diverged["history"]["retrain"] == []


PHASE_METHODS = [{"tpp": {"delta": 0.5, "update_interval": 1, "stabilize": 21, "zero_out_interval": 1}},
                 {"greg": {"delta": 0.5, "update_interval": 1, "stabilize": 2}},
                 {"orthoreg": {"protocol": "iterative", "round_epochs": 1, "importance_samples": 32}}]


def test_speed_options_run_on_cpu_and_enter_the_run_id(tmp_path: Path, write_suite, monkeypatch) -> None:
    """channels_last, bf16 autocast, fused SGD and compile work end to end (on CPU here), enter the run's identity
    and are really applied in every phase: dense training, the methods' own phases (TPP, GReg, OrthoReg) and
    retraining."""
    monkeypatch.setattr("bench.train.COMPILE_BACKEND", "eager", raising=False)  # inductor would take minutes on CPU
    base = tiny_suite(model="resnet20", methods=["l1"], pretrain={"epochs": 1, "batch_size": 32, "lr": 0.05},
                      dataset={"name": "synthetic", "num_train": 64, "num_test": 32, "size": 16},
                      retrain={"epochs": 1, "batch_size": 16, "lr": [0.05]}, trainability={"enabled": False},
                      latency={"enabled": False})
    options = {"channels_last": True, "amp": "bf16", "fused_optimizer": True, "compile": True}
    fast = dict(base, methods=["l1", *PHASE_METHODS], performance=options)
    for name, suite in (("base", base), ("fast", fast)):
        assert main(["run", str(write_suite(suite, f"{name}.yaml")), "--results", str(tmp_path / name),
                     "--quiet"]) == 0
    by_method = {name: {r["method"]: r for r in results_of(tmp_path / name).values()} for name in ("base", "fast")}
    plain, quick = by_method["base"]["l1"], by_method["fast"]["l1"]
    assert plain["status"] == quick["status"] == "ok"
    assert plain["run_id"] != quick["run_id"]
    assert quick["config"]["dense"]["performance"]["amp"] == "bf16" and "performance" not in plain["config"]["dense"]
    assert plain["metrics"]["acc_final"] != quick["metrics"]["acc_final"] or \
        plain["history"]["retrain"][0]["train_loss"] != quick["history"]["retrain"][0]["train_loss"]
    (dense,) = (tmp_path / "fast" / "_dense").glob("*/dense.json")
    for method, result in by_method["fast"].items():
        assert result["status"] == "ok", (method, result.get("error"))
        phases = {"dense": json.loads(dense.read_text())["history"], **result["history"]}
        if method != "l1":
            assert phases["phase"], method
        for phase, rows in phases.items():
            for row in rows:
                assert row["performance"] == options, (method, phase, row.get("performance"))
    assert all("performance" not in row for rows in plain["history"].values() for row in rows)


def test_suite_as_run_is_kept_beside_its_results(finished: Path, tmp_path: Path, write_suite) -> None:
    from bench.report.build import recorded_reference

    record = json.loads((finished / "results" / "tiny" / "suite.json").read_text())
    assert record["name"] == "tiny" and record["retrain"]["lr"] == [0.05, 0.01]
    assert recorded_reference(finished / "results" / "tiny") is None
    suite = write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 0, "lr": [0.01]}, reference="tpp_table1"))
    assert main(["run", str(suite), "--results", str(tmp_path), "--quiet"]) == 0
    assert Path(recorded_reference(tmp_path / "tiny")).name == "tpp_table1.csv"


def test_a_suite_rerun_with_another_recipe_is_reported_apart(finished: Path, tmp_path: Path) -> None:
    """Issue 14: the same suite run again with --set into one folder; the report holds only the runs of the suite
    as last run (its manifest) and names the others, never averaging 2- and 3-epoch runs as seeds."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(finished / "results", results)
    args = ["--results", str(results), "--set", "retrain.epochs=2", "--set", "retrain.lr=[0.1,0.01]"]
    assert main(["run", str(finished / "suite.yaml"), *args, "--quiet"]) == 0
    manifest = json.loads((results / "tiny" / "manifest.json").read_text())
    assert len(manifest["runs"]) == 4 and manifest["config"]["retrain"]["epochs"] == 2 and manifest["seeds"] == [0]
    assert {e["lr"] for e in manifest["runs"].values()} == {0.1, 0.01}
    assert all(e["prune_id"] and e["dense_id"] for e in manifest["runs"].values())
    assert main(["report", "--results", str(results), "--workers", "1"]) == 0
    report = results / "tiny" / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert set(runs.run_id) == set(manifest["runs"]) and set(runs.epochs_done) == {2}
    assert pd.read_csv(report / "tables" / "accuracy.csv").n.max() == 1  # one seed: one run per cell
    left = pd.read_csv(report / "tables" / "left_out.csv")
    assert left.runs.sum() == 4 and "retrain.epochs 3 (suite: 2)" in left.reason[0]


def test_the_runs_of_one_pruned_model_share_its_phase_and_selection(tmp_path: Path, write_suite) -> None:
    """GReg's phase runs once for the two retraining LRs: both runs carry the very same phase record (wall-clock
    seconds included), and their retraining starts from the same pruned model."""
    suite = write_suite(tiny_suite(methods=[{"greg": {"delta": 0.25, "update_interval": 2, "stabilize": 4}}],
                                   retrain={"epochs": 1, "lr": [0.05, 0.01]}, trainability={"samples": 4}))
    assert main(["run", str(suite), "--results", str(tmp_path), "--quiet"]) == 0
    first, second = results_of(tmp_path).values()
    assert first["lr"] != second["lr"] and len(list((tmp_path / "_pruned").iterdir())) == 1
    assert first["history"]["phase"] and first["history"]["phase"] == second["history"]["phase"]
    assert first["metrics"]["timings"]["phase_s"] == second["metrics"]["timings"]["phase_s"]
    for key in ("acc_pruned", "jsv_pruned_mean", "params_pruned", "channels"):
        assert first["metrics"][key] == second["metrics"][key]
    assert first["history"]["retrain"][0]["train_loss"] != second["history"]["retrain"][0]["train_loss"]


def test_a_finished_run_leaves_no_model_behind(tmp_path: Path, write_suite, monkeypatch) -> None:
    """Runs one after another in one process (a suite, a pool worker) must not accumulate memory: after a compiled
    suite no model of its runs is alive (dynamo's caches held the last one, and on a GPU its memory)."""
    import gc
    import warnings

    from torch import nn

    monkeypatch.setattr("bench.train.COMPILE_BACKEND", "eager", raising=False)
    suite = write_suite(tiny_suite(methods=["l1"], pretrain={"epochs": 1, "batch_size": 64, "lr": 0.05},
                                   prune={"ratios": [0.3, 0.5]}, retrain={"epochs": 1, "batch_size": 64, "lr": [0.05]},
                                   performance={"compile": True}, trainability={"enabled": False},
                                   latency={"enabled": False},
                                   dataset={"name": "synthetic", "num_train": 128, "num_test": 64, "channels": 1,
                                            "size": 32}))

    def live_modules() -> int:
        gc.collect()
        with warnings.catch_warnings():  # some objects gc finds warn when inspected (deprecated torch aliases)
            warnings.simplefilter("ignore")
            return sum(isinstance(o, nn.Module) for o in gc.get_objects())

    before = live_modules()
    assert main(["run", str(suite), "--results", str(tmp_path), "--quiet"]) == 0
    assert live_modules() <= before
