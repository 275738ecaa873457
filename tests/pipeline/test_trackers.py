"""Trackers against the real libraries, offline: `export` and live logging read back with TensorBoard's own reader and
with MLflow's search_runs on a local file store."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.config import load_suite
from bench.grid import expand
from bench.plugins import load_builtin
from tests.conftest import tiny_suite

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[tensorboard]')")
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

FAILING = '''
from bench import Method, NoHparams, register_method


@register_method("boom")
class Boom(Method):
    description = "fails while scoring (a failed run to export)"
    Hparams = NoHparams

    def scores(self, model, ctx):
        raise RuntimeError("boom")
'''


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> Path:
    """The tiny suite with a method that fails (2 ok runs, 2 failed), logged live to TensorBoard and MLflow."""
    root = tmp_path_factory.mktemp("trackers")
    (root / "boom.py").write_text(FAILING)
    suite = tiny_suite(methods=["l1", "boom"], plugins=["boom.py"], log={"tensorboard": "live_tb", "mlflow": "live_ml"})
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(root / "suite.yaml"), "--results", str(root / "results"), "--quiet"]) == 1  # 2 failed
    return root


def results_of(root: Path) -> dict[str, dict]:
    runs = root / "results" / "tiny" / "runs"
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/result.json")}


def runs_csv(root: Path):
    """The suite's rows as runs.csv has them (the report's loader, without drawing figures)."""
    from bench.report.load import load_results, suite_runs

    return suite_runs(load_results(root / "results", ["tiny"]), "tiny", root / "results" / "tiny").runs


def tensorboard_runs(folder: Path) -> EventMultiplexer:
    return EventMultiplexer().AddRunsFromDirectory(str(folder)).Reload()


def mlflow_frame(store: Path):
    mlflow.set_tracking_uri(store.resolve().as_uri())
    try:
        return mlflow.search_runs(search_all_experiments=True)
    finally:
        mlflow.set_tracking_uri(None)


def check_tensorboard(folder: Path, results: dict[str, dict]) -> None:
    mux = tensorboard_runs(folder)
    assert sorted(mux.Runs()) == sorted(f"tiny/{run_id}" for run_id in results)  # one run per harness run
    for run_id, result in results.items():
        acc = mux.GetAccumulator(f"tiny/{run_id}")
        curve = [(e.step, e.value) for e in acc.Scalars("test_acc")] if result["status"] == "ok" else []
        expected = [(row["epoch"], row["test_acc"]) for row in result.get("history", {}).get("retrain", [])]
        assert [s for s, _ in curve] == [s for s, _ in expected]  # each epoch once: rewritten, not appended
        assert [v for _, v in curve] == pytest.approx([v for _, v in expected], abs=1e-6)  # float32 storage
        if result["status"] == "ok":
            assert acc.Scalars("acc_final")[-1].value == pytest.approx(result["metrics"]["acc_final"], abs=1e-6)
        status = acc.Tensors("status/text_summary")[-1].tensor_proto.string_val[0].decode()
        assert status == result["status"]


def check_mlflow(store: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    frame = mlflow_frame(store)
    table = runs_csv(root)
    assert len(frame) == len(table) == 4  # as many tracker runs as runs.csv has rows
    by_id = frame.set_index("tags.bench.run_id")
    for row in table.itertuples():
        mine = by_id.loc[row.run_id]
        assert mine["tags.mlflow.runName"] == row.run_id and mine["tags.bench.status"] == row.status
        assert mine["status"] == ("FINISHED" if row.status == "ok" else "FAILED")
        assert mine["params.method"] == row.method and float(mine["params.lr"]) == row.lr
        if row.status == "ok":
            assert mine["metrics.acc_final"] == row.acc_final
            history = mlflow.tracking.MlflowClient(store.resolve().as_uri()).get_metric_history(mine["run_id"],
                                                                                               "test_acc")
            assert sorted(m.step for m in history) == [1, 2, 3]  # not doubled by a second write


def test_export_to_tensorboard_twice_gives_one_run_each(suite_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    for _ in range(2):
        assert main(["export", "tiny", "--to", "tensorboard", str(tmp_path / "tb"),
                     "--results", str(suite_run / "results")]) == 0
    assert "4 runs exported to tensorboard (2 failed, 2 ok)" in capsys.readouterr().out
    check_tensorboard(tmp_path / "tb", results_of(suite_run))


def test_export_to_mlflow_twice_matches_runs_csv(suite_run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(2):
        assert main(["export", str(suite_run / "suite.yaml"), "--to", "mlflow", str(tmp_path / "ml"),
                     "--results", str(suite_run / "results")]) == 0
    check_mlflow(tmp_path / "ml", suite_run, monkeypatch)


def test_live_logging_wrote_every_epoch_once(suite_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = results_of(suite_run)
    check_tensorboard(suite_run / "live_tb", results)
    check_mlflow(suite_run / "live_ml", suite_run, monkeypatch)


def test_live_logging_stays_out_of_run_ids(write_suite) -> None:
    load_builtin()
    plain = expand(load_suite(write_suite(tiny_suite(), "a.yaml")))
    logged = expand(load_suite(write_suite(tiny_suite(log={"tensorboard": "tb", "mlflow": "ml"}), "b.yaml")))
    assert [(r.run_id, r.prune_id, r.dense_id) for r in plain] == [(r.run_id, r.prune_id, r.dense_id) for r in logged]


def test_a_broken_tracker_is_a_warning_not_a_failed_run(tmp_path: Path, write_suite,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "not_a_dir").write_text("a file where MLflow needs a folder")
    suite = write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 1, "lr": [0.05]},
                                   log={"mlflow": "not_a_dir", "tensorboard": "tb"}))
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("live logging to mlflow failed")
    assert len(tensorboard_runs(tmp_path / "tb").Runs()) == 1  # the other tracker goes on


def test_a_missing_extra_is_one_line_naming_it(suite_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    assert main(["export", "tiny", "--to", "mlflow", str(tmp_path / "ml"), "--results",
                 str(suite_run / "results")]) == 2
    assert capsys.readouterr().err == "error: mlflow is not installed; install the extra: pip install -e '.[mlflow]'\n"
    assert not (tmp_path / "ml").exists()


def test_export_without_a_manifest_says_to_run_the_suite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "nosuch", "--to", "tensorboard", str(tmp_path / "tb"), "--results", str(tmp_path)]) == 2
    assert "run the suite" in capsys.readouterr().err


def test_a_resumed_run_streams_each_epoch_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.trackers import LiveLog

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    targets = {"tensorboard": str(tmp_path / "tb"), "mlflow": str(tmp_path / "ml")}
    start = {"run_id": "0123456789ab", "method": "l1", "lr": 0.1, "seed": 0, "status": "running", "config": {}}
    rows = [{"epoch": e, "lr": 0.1, "test_acc": e / 10, "seconds": 1.0} for e in (1, 2, 3)]
    first = LiveLog.start(targets, start, "s")
    first.epoch(1, rows[0])
    first.epoch(2, rows[1])  # then the process is killed after epoch 2's log but before its checkpoint
    first.open["tensorboard"].writer.flush()
    second = LiveLog.start(targets, start, "s")  # resumes from the epoch-1 checkpoint: epoch 2 again, then 3
    second.epoch(2, rows[1])
    second.epoch(3, rows[2])
    second.open["tensorboard"].writer.flush()
    acc = tensorboard_runs(tmp_path / "tb").GetAccumulator("s/0123456789ab")
    assert [e.step for e in acc.Scalars("test_acc")] == [1, 2, 3]  # while it trains: the repeated epoch purged
    second.finish({**start, "status": "ok", "history": {"retrain": rows}, "metrics": {"acc_final": 0.3}})
    frame = mlflow_frame(tmp_path / "ml")
    assert len(frame) == 1 and frame["metrics.acc_final"][0] == 0.3 and frame["status"][0] == "FINISHED"
    history = mlflow.tracking.MlflowClient((tmp_path / "ml").resolve().as_uri()).get_metric_history(
        frame["run_id"][0], "test_acc")
    assert sorted(m.step for m in history) == [1, 2, 3]  # at the end: written whole, each epoch once
    acc = tensorboard_runs(tmp_path / "tb").GetAccumulator("s/0123456789ab")
    assert [e.step for e in acc.Scalars("test_acc")] == [1, 2, 3]


def test_live_logging_to_a_missing_tracker_is_refused_before_anything_runs(
        tmp_path: Path, write_suite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    suite = write_suite(tiny_suite(log={"tensorboard": "tb"}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("log.tensorboard: tensorboard is not installed; install the extra: pip install -e "
                        "'.[tensorboard]'\n") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
