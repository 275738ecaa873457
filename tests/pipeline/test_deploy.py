"""Pruned models taken away (bench.pipeline.deploy: load_model, export-model) and latency where they are deployed
(bench.training.latency_backends: the onnxruntime backend, the latency sweep, the report's speed-up columns and
figure)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import yaml

from bench import load_model
from bench.cli import main
from bench.data import build_dataset
from bench.training.latency_backends import BACKENDS, OnnxRuntimeModule, measure_backend, onnx_bytes, runtime
from bench.training.train import evaluate
from tests.conftest import tiny_suite

TINY_DATA = {"name": "synthetic", "num_train": 64, "num_test": 32, "channels": 1, "size": 32}
RGB16 = {"name": "synthetic", "num_train": 64, "num_test": 32, "channels": 3, "size": 16}
RGB32 = {"name": "synthetic", "num_train": 64, "num_test": 32, "channels": 3, "size": 32}
ONE_EPOCH = {"pretrain": {"epochs": 1, "batch_size": 32, "lr": 0.05}, "retrain": {"epochs": 1, "batch_size": 32,
                                                                                   "lr": [0.05]}}
UNTRAINED = {"pretrain": {"epochs": 0, "batch_size": 32, "lr": 0.05}, "retrain": {"epochs": 0, "batch_size": 32,
                                                                                  "lr": [0.05]}}
NO_LATENCY = {"enabled": False}
BOTH_BACKENDS = {"repeats": 3, "min_time_s": 0.005, "backends": ["eager", "onnxruntime"]}

# name -> (suite changes, whether its runs were trained); each is run once per module, a run in seconds.
SUITES = {
    "mlp": dict(model="mlp7_relu", dataset=TINY_DATA, methods=["l1"], latency=BOTH_BACKENDS, **ONE_EPOCH),
    "resnet20": dict(model="resnet20", dataset=RGB16, methods=["l1"], latency=NO_LATENCY, **ONE_EPOCH),
    "tv_resnet18": dict(model="tv:resnet18", dataset=RGB32, methods=["l1"], latency=NO_LATENCY,
                        prune={"ratios": [0.5], "layers": ["layer*.*.conv2"]}, **UNTRAINED),
    "vit": dict(model="vit_cifar", dataset=RGB32, methods=["l1"], latency=NO_LATENCY, **UNTRAINED),
    "masked": dict(model="mlp7_relu", dataset=TINY_DATA, methods=["l1"], latency=NO_LATENCY,
                   prune={"ratios": [0.5], "mode": "mask"}, **ONE_EPOCH),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """Each suite of SUITES run once (into its own results folder); name -> the run's directory."""
    dirs = {}
    for name, changes in SUITES.items():
        root = tmp_path_factory.mktemp(name)
        suite = tiny_suite(name=name, trainability={"enabled": False}, **changes)
        (root / "suite.yaml").write_text(yaml.safe_dump(suite))
        assert main(["run", str(root / "suite.yaml"), "--results", str(root / "results"), "--quiet"]) == 0
        (run_dir,) = (root / "results" / name / "runs").iterdir()
        dirs[name] = run_dir
    return dirs


def results_of(run_dir: Path) -> Path:
    return run_dir.parents[2]


def batch(run_dir: Path) -> torch.Tensor:
    shape = json.loads((run_dir / "result.json").read_text())["input_shape"]
    return torch.randn((5, *shape), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", ["mlp", "resnet20", "tv_resnet18",
                                  pytest.param("vit", marks=pytest.mark.slow)])  # ViT's exports: ~30 s loaded
def test_exported_pt2_and_onnx_give_the_harness_models_logits(finished, tmp_path: Path, name: str) -> None:
    run_dir = finished[name]
    model = load_model(run_dir)
    x = batch(run_dir)
    with torch.no_grad():
        expected = model(x)
    for fmt in ("pt2", "onnx", "state"):
        out = tmp_path / f"model.{fmt}"
        assert main(["export-model", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
        if fmt == "pt2":
            got = torch.export.load(out).module()(x)
        elif fmt == "onnx":
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        else:
            saved = torch.load(out, weights_only=True)
            assert {k: v.shape for k, v in saved["state_dict"].items()} == {
                k: v.shape for k, v in model.state_dict().items()}
            continue
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # the exported program has the slim shapes: fewer parameters than the dense model
    meta = json.loads((tmp_path / "model.pt2.json").read_text())
    assert meta["params"] == sum(p.numel() for p in model.parameters()) < meta["params_dense"]


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_load_model_is_the_model_the_run_finished_with(finished, name: str) -> None:
    """Evaluated on the run's test set, the rebuilt model scores exactly the run's final accuracy."""
    run_dir = finished[name]
    result = json.loads((run_dir / "result.json").read_text())
    dataset = SUITES[name]["dataset"]
    data = build_dataset("synthetic", {k: v for k, v in dataset.items() if k != "name"}, None, None)
    model = load_model(run_dir)
    assert not model.training
    assert evaluate(model, data, 1000, torch.device("cpu"))[1] == result["metrics"]["acc_final"]
    kept = {name: kept for name, (kept, _) in result["metrics"]["channels"].items()}
    assert kept and all(0 < k < total for k, (_, total) in zip(kept.values(), result["metrics"]["channels"].values()))


def test_a_clean_process_without_the_harness_loads_the_pt2(finished, tmp_path: Path) -> None:
    run_dir = finished["mlp"]
    out = tmp_path / "away.pt2"
    assert main(["export-model", str(run_dir), "--out", str(out)]) == 0
    x = batch(run_dir)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(load_model(run_dir)(x), tmp_path / "expected.pt")
    site = str(Path(torch.__file__).parents[1])
    # -I -S: no user site, no .pth files (the project's editable install is one), cwd not on the path; torch's
    # site-packages added by hand, so `bench` cannot be imported.
    code = (f"import sys, importlib.util; sys.path.append({site!r}); import torch\n"
            "assert importlib.util.find_spec('bench') is None, 'bench is importable'\n"
            "x = torch.load('x.pt'); expected = torch.load('expected.pt')\n"
            "got = torch.export.load('away.pt2').module()(x)\n"
            "torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4); print('same logits', tuple(got.shape))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same logits (5, 10)" in done.stdout


def test_the_json_beside_an_export_names_the_run_and_the_files_digest(finished, tmp_path: Path, monkeypatch) -> None:
    run_dir = finished["resnet20"]
    result = json.loads((run_dir / "result.json").read_text())
    monkeypatch.chdir(tmp_path)
    run_id = run_dir.name
    # a run id (not a path) found under --results; the default file name is the run id
    assert main(["export-model", run_id[:8], "--results", str(results_of(run_dir)), "--format", "state"]) == 0
    out = tmp_path / f"{run_id}.pt"
    meta = json.loads((tmp_path / f"{run_id}.pt.json").read_text())
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (meta["run_id"], meta["method"], meta["ratio"], meta["format"]) == (run_id, "l1", "0.5", "state")
    assert meta["accuracy"] == result["metrics"]["acc_final"]
    assert meta["channels_kept"] == {k: v[0] for k, v in result["metrics"]["channels"].items()}
    assert meta["masked"] is False and "note" not in meta
    assert meta["input_shape"] == [1, 3, 16, 16]


def test_a_masked_run_exports_its_masked_model_and_says_so(finished, tmp_path: Path) -> None:
    run_dir = finished["masked"]
    out = tmp_path / "masked.pt2"
    assert main(["export-model", str(run_dir), "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "masked.pt2.json").read_text())
    assert meta["masked"] is True and "prune.mode: mask" in meta["note"]
    model = load_model(run_dir)
    assert meta["params"] == meta["params_dense"]  # dense shapes...
    first = model.state_dict()["layers.0.weight"]
    assert int((first.abs().sum(dim=1) == 0).sum()) == 100 - meta["channels_kept"]["layers.0"]  # ...masked rows zero
    x = batch(run_dir)
    torch.testing.assert_close(torch.export.load(out).module()(x), model(x).detach(), atol=1e-4, rtol=1e-4)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_bad_input_gets_one_error_line_and_writes_nothing(finished, tmp_path: Path, capsys, monkeypatch) -> None:
    run_dir = finished["mlp"]
    results = str(results_of(run_dir))
    monkeypatch.chdir(tmp_path)
    assert main(["export-model", "feedfacecafe", "--results", results]) == 2
    assert "no run 'feedfacecafe'" in one_error_line(capsys)
    assert main(["export-model", str(run_dir), "--format", "tflite"]) == 2
    assert "unknown export format" in one_error_line(capsys)
    assert main(["latency", "mlp", "--results", results, "--backends", "eager,tvm"]) == 2
    assert "unknown backend 'tvm'" in one_error_line(capsys)
    assert main(["latency", "mlp", "--results", results, "--batch-sizes", "1,0"]) == 2
    assert "positive integers" in one_error_line(capsys)
    # an unfinished run
    copy = tmp_path / "copy" / "mlp" / "runs" / run_dir.name
    copy.mkdir(parents=True)
    result = json.loads((run_dir / "result.json").read_text())
    (copy / "result.json").write_text(json.dumps({**result, "status": "running"}))
    assert main(["export-model", str(copy)]) == 2
    assert "is running, not finished ok" in one_error_line(capsys)
    # a backend or exporter not installed: the error names the extra
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["latency", str(run_dir), "--backends", "eager,onnxruntime"]) == 2
    assert "pip install 'pruning-bench[onnx]'" in one_error_line(capsys)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["export-model", str(run_dir), "--format", "onnx"]) == 2
    assert "pruning-bench[onnx]" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["result.json"]
    assert not (Path(results) / "mlp" / "latency_sweep.csv").exists()


def test_latency_sweep_times_every_finished_run_per_batch_size_and_backend(finished, tmp_path: Path, capsys) -> None:
    run_dir = finished["mlp"]
    out = tmp_path / "sweep.csv"
    assert main(["latency", "mlp", "--results", str(results_of(run_dir)), "--batch-sizes", "1,8",
                 "--backends", "eager,onnxruntime", "--repeats", "3", "--min-time-s", "0.005", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 4 and sorted(zip(table.backend, table.batch_size)) == [
        ("eager", 1), ("eager", 8), ("onnxruntime", 1), ("onnxruntime", 8)]
    np.testing.assert_allclose(table.speedup, table.dense_median_ms / table.pruned_median_ms)
    metrics = json.loads((run_dir / "result.json").read_text())["metrics"]
    np.testing.assert_allclose(table.flops_ratio, metrics["flops_dense"] / metrics["flops_pruned"])
    assert (table.threads == torch.get_num_threads()).all() and (table.dense_weights == "trained").all()
    assert (table.pruned_iqr_ms >= 0).all() and (table.dense_median_ms > 0).all()
    printed = capsys.readouterr().out
    assert printed.count(run_dir.name) == 4 and "onnxruntime" in printed and str(out) in printed


def test_runs_csv_and_the_report_show_the_speed_up_per_backend(finished) -> None:
    run_dir = finished["mlp"]
    results = results_of(run_dir)
    assert main(["report", "--suite", "mlp", "--results", str(results), "--quiet"]) == 0
    runs = pd.read_csv(results / "mlp" / "report" / "runs.csv")
    metrics = json.loads((run_dir / "result.json").read_text())["metrics"]
    for backend, prefix in (("eager", "latency_"), ("onnxruntime", "latency_onnxruntime_")):
        expected = metrics[prefix + "dense"]["median_ms"] / metrics[prefix + "pruned"]["median_ms"]
        assert runs[f"speedup_{backend}"].tolist() == pytest.approx([expected])
    assert metrics["latency_onnxruntime_pruned"]["threads"] == 1.0  # the run's thread count (tests run with one)
    assert runs.flops_ratio.tolist() == pytest.approx([metrics["flops_dense"] / metrics["flops_pruned"]])
    assert (results / "mlp" / "report" / "figures" / "speedup_vs_flops.png").stat().st_size > 1000
    efficiency = (results / "mlp" / "report" / "tables" / "efficiency.md").read_text()
    assert "latency, onnxruntime: speed-up (×)" in efficiency


def test_the_onnxruntime_backend_runs_the_same_model_with_the_eager_statistics() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)).eval()
    session = OnnxRuntimeModule(onnx_bytes(model, (3, 8, 8)), threads=1)
    for size in (1, 7):  # the batch dimension is dynamic
        x = torch.randn(size, 3, 8, 8)
        torch.testing.assert_close(session(x), model(x).detach(), atol=1e-5, rtol=1e-5)
    found = measure_backend("onnxruntime", model, (3, 8, 8), batch_size=4, repeats=3, min_time_s=0.005, threads=1,
                            prepared=session)
    assert found["backend"] == "onnxruntime" and found["threads"] == 1.0 and found["blocks"] >= 3
    assert found["median_ms"] > 0 and found["iqr_ms"] >= 0 and found["device"] == "cpu"
    assert model.training is False and next(model.parameters()).device.type == "cpu"
    assert runtime("eager", model, (3, 8, 8)) is model
    assert set(BACKENDS) == {"eager", "onnxruntime"}


@pytest.mark.parametrize(("backends", "message"), [
    (["onnxruntime"], "leaves out 'eager'"),
    (["eager", "cuda_magic"], "unknown backend 'cuda_magic'"),
    (["eager", "tensorrt"], "runs on CUDA only"),
    (["eager", "eager"], "named twice"),
])
def test_a_suite_with_bad_latency_backends_is_refused(write_suite, tmp_path: Path, capsys, backends, message) -> None:
    suite = write_suite(tiny_suite(latency={"backends": backends}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
