"""Latency the report can stand behind: each measurement records its spread and the machine's load, and a speed-up
the machine set (the dense model's own latency disagreeing across runs, or a wide IQR) is marked unreliable."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.measure import machine_load, measure_latency
from bench.report import efficiency
from bench.report.latency import DENSE_SPREAD_LIMIT, IQR_LIMIT, dense_spread, speedup_cells
from bench.report.load import load_results
from bench.report.synthetic import write_synthetic_results


def test_a_latency_records_its_spread_and_the_machines_load() -> None:
    result = measure_latency(torch.nn.Linear(8, 4), (8,), 2, repeats=5, min_time_s=0.01)
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"] and result["iqr_ms"] >= 0
    assert 0.0 <= result["others_cpu_share"] <= 1.0 and result["cpus"] >= 1
    assert result["load_1min_before"] >= 0 and result["load_1min_after"] >= 0


def test_machine_load_sees_other_processes_busy() -> None:
    import multiprocessing
    import time

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    worker = multiprocessing.get_context("fork").Process(target=spin, args=(1.5,))
    worker.start()
    time.sleep(0.2)
    with machine_load() as busy:
        time.sleep(0.8)  # this process idles; the spinning one keeps a core busy
    worker.join()
    assert busy["others_cpu_share"] >= 0.8 / busy["cpus"] * 0.5  # at least half a core's worth seen


def _runs(tmp_path: Path, dense: list[float], pruned: list[float], iqr: float) -> pd.DataFrame:
    """Two runs of one method that share a dense model (one seed, two LRs), with the latencies given."""
    write_synthetic_results(tmp_path, "s", ["l1"], [0.5], [0.01, 0.001], [0], extra_metrics={
        "latency_dense": {"median_ms": 1.0, "iqr_ms": iqr, "others_cpu_share": 0.9, "load_1min_before": 8.0,
                          "cpus": 2}, "latency_pruned": {"median_ms": 1.0, "iqr_ms": iqr}})
    runs = load_results(tmp_path).runs.sort_values("lr").reset_index(drop=True)
    assert runs.dense_id.nunique() == 1
    runs["latency_dense_median_ms"], runs["latency_pruned_median_ms"] = dense, pruned
    return runs


def test_a_speedup_the_machine_set_is_marked_unreliable(tmp_path: Path) -> None:
    runs = _runs(tmp_path, [0.217, 84.0], [0.2, 0.2], iqr=0.01)  # the 0.217 to 84 ms for one dense model
    assert dense_spread(runs, "latency_dense_median_ms").iloc[0] == pytest.approx(84.0 / 0.217)
    table = efficiency.efficiency_table(runs, ["l1"])
    assert table.rows[0][-1].startswith("unreliable (") and "387× apart across runs" in table.note
    assert f"limit {DENSE_SPREAD_LIMIT}×" in table.note and "no finding" in table.note
    assert "other processes kept a median 90% of the cores busy" in table.note
    assert table.data.latency_unreliable[0].startswith("the same dense model measured 387×")


def test_a_wide_iqr_is_unreliable_and_a_steady_measurement_is_a_number(tmp_path: Path) -> None:
    wide = efficiency.efficiency_table(_runs(tmp_path / "a", [10.0, 11.0], [5.0, 5.0], iqr=0.5 * 10), ["l1"])
    assert wide.rows[0][-1] == "unreliable (2.10)" and f"limit {IQR_LIMIT:.0%}" in wide.note
    steady = efficiency.efficiency_table(_runs(tmp_path / "b", [10.0, 11.0], [5.0, 5.0], iqr=0.1), ["l1"])
    assert steady.rows[0][-1] == "2.10" and "unreliable" not in steady.note and steady.data.latency_unreliable[0] == ""


def test_a_zero_or_missing_median_gives_no_speedup(tmp_path: Path) -> None:
    """A median of 0 must not divide by zero, and a missing one (a backend a row lacks) is shown as —, not 'nan'."""
    table = efficiency.efficiency_table(_runs(tmp_path, [10.0, 11.0], [0.0, 0.0], iqr=0.1), ["l1"])
    assert table.rows[0][-1] == "—" and pd.isna(table.data.latency_speedup[0])
    runs = _runs(tmp_path / "b", [10.0, 11.0], [5.0, 5.0], iqr=0.1)
    runs["latency_onnxruntime_dense_median_ms"] = runs["latency_onnxruntime_pruned_median_ms"] = float("nan")
    cells, record = speedup_cells(runs, runs, "latency_onnxruntime_dense_median_ms",
                                  "latency_onnxruntime_pruned_median_ms")
    assert cells == ["—", "—", "—"] and pd.isna(record["latency_speedup"])
