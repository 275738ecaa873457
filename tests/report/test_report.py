"""Tests for the reporter: loading, statistics, every table and figure, the HTML page (in headless Chromium where
installed), published references and the CLI, all on synthetic result trees (no training)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))  # never write to the user's ~/.config

from bench.cli import main  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.report import (  # noqa: E402
    COLUMNS,
    efficiency,
    load_reference,
    load_results,
    tables,
    write_reports,
)
from bench.report.build import filtered_dir, render_plots  # noqa: E402
from bench.report.load import suite_runs  # noqa: E402
from bench.report.plots import MethodStyles, accuracy_vs_ratio  # noqa: E402
from bench.report.render import to_latex, to_markdown  # noqa: E402
from bench.report.stats import kendall_tau, mean_ci, t_quantile  # noqa: E402
from bench.report.synthetic import default_jsv, write_synthetic_results  # noqa: E402
from tests.conftest import tiny_suite  # noqa: E402

PROJECT = Path(__file__).resolve().parents[2]
QUICKSTART = {"methods": ["l1", "random"], "ratios": [0.5, 0.9], "lrs": [0.01, 0.001], "seeds": [0, 1, 2]}
ONE_CELL = [90.0, 91.0, 93.0]  # final accuracies (%) of seeds 0, 1, 2 in one cell, for the hand-checked interval
TABLE_NAMES = ["verdict", "paired", "status", "problems", "accuracy", "lr_gap", "ranks", "rank_stability",
               "trainability", "efficiency"]
FIGURE_NAMES = ["accuracy_vs_lr", "accuracy_vs_ratio", "epochs_ratio_0.5", "epochs_ratio_0.9", "jsv_vs_accuracy"]


def quickstart_accuracy(method: str, ratio: float, lr: float, seed: int) -> float:
    """l1 at ratio 0.9, lr 0.01 gets exactly ONE_CELL; everything else a smooth made-up value."""
    if (method, ratio, lr) == ("l1", 0.9, 0.01):
        return ONE_CELL[seed] / 100
    return 0.9 - 0.1 * ratio - (0.05 if lr < 0.01 else 0.0) + (0.01 if method == "l1" else 0.0) + 0.002 * seed


@pytest.fixture(scope="module")
def quickstart_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart-like result tree with one diverged, one failed and one running run, and its report."""
    root = tmp_path_factory.mktemp("results")
    statuses = {("random", 0.9, 0.001, 2): "diverged", ("random", 0.5, 0.01, 1): "failed",
                ("l1", 0.5, 0.001, 2): "running"}
    write_synthetic_results(root, "quickstart", **QUICKSTART, accuracy=quickstart_accuracy, statuses=statuses)
    write_reports(root, workers=1)
    return root / "quickstart" / "report"


# ----------------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("df, expected", [(1, 12.7062047362), (2, 4.30265272975), (4, 2.7764451052),
                                          (9, 2.26215716280), (29, 2.04522964213)])
def test_t_quantile_matches_the_published_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-9)


def test_mean_ci_is_the_student_t_interval_worked_by_hand() -> None:
    # mean 91.333; s = sqrt(((-4/3)^2 + (-1/3)^2 + (5/3)^2) / 2) = sqrt(7/3) = 1.52753;
    # half-width = t(0.975, 2) * s / sqrt(3) = 4.302653 * 0.881917 = 3.79458
    mean, half, n = mean_ci(ONE_CELL)
    assert (round(mean, 4), round(half, 4), n) == (91.3333, 3.7946, 3)
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([])[2] == 0


def test_kendall_tau_b() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))  # tau-b with a tie
    assert math.isnan(kendall_tau([1], [1]))


# ----------------------------------------------------------------------------------------- the whole report

def test_every_table_and_figure_is_written(quickstart_report: Path) -> None:
    for name in TABLE_NAMES:
        for suffix in ("md", "tex", "csv"):
            assert (quickstart_report / "tables" / f"{name}.{suffix}").stat().st_size > 40, (name, suffix)
    for name in FIGURE_NAMES:
        assert (quickstart_report / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (quickstart_report / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    page = (quickstart_report / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURE_NAMES)
    assert page.count('<table class="report">') == len(TABLE_NAMES)
    assert "http://" not in page and "https://" not in page  # self-contained: no external assets
    runs = pd.read_csv(quickstart_report / "runs.csv")
    assert list(runs.columns[:len(COLUMNS)]) == COLUMNS and len(runs) == 24


def test_accuracy_table_prints_the_t_interval_and_bolds_the_best(quickstart_report: Path) -> None:
    accuracy = pd.read_csv(quickstart_report / "tables" / "accuracy.csv")
    cell = accuracy[(accuracy.method == "l1") & (accuracy.ratio == 0.9) & (accuracy.lr == 0.01)].iloc[0]
    assert (cell.n, round(cell["mean"], 4), round(cell.ci_half, 4)) == (3, 91.3333, 3.7946)
    assert cell.best  # l1's 91.33 beats random's 81.2 at ratio 0.9, lr 0.01
    markdown = (quickstart_report / "tables" / "accuracy.md").read_text()
    assert "| 0.9 | l1 | **91.33 ± 3.79** |" in markdown
    assert r"\textbf{91.33 $\pm$ 3.79}" in (quickstart_report / "tables" / "accuracy.tex").read_text()


def test_failed_diverged_and_running_runs_are_shown_not_dropped(quickstart_report: Path) -> None:
    runs = pd.read_csv(quickstart_report / "runs.csv")
    assert runs.status.value_counts().to_dict() == {"ok": 21, "diverged": 1, "failed": 1, "running": 1}
    markdown = (quickstart_report / "tables" / "accuracy.md").read_text()
    assert "(n=2) [1 diverged]" in markdown and "(n=2) [1 failed]" in markdown and "[1 running]" in markdown
    problems = pd.read_csv(quickstart_report / "tables" / "problems.csv")
    assert sorted(problems.status) == ["diverged", "failed", "running"]
    diverged = problems.set_index("status").loc["diverged"]
    assert diverged.epochs_done == 1 and diverged.jsv_pruned == pytest.approx(default_jsv("random") * (1 - 0.5 * 0.9))
    assert problems.set_index("status").loc[["failed", "running"], "jsv_pruned"].isna().all()
    assert "CUDA out of memory" in (quickstart_report / "tables" / "problems.md").read_text()
    status = pd.read_csv(quickstart_report / "tables" / "status.csv").set_index("method")
    assert status.loc["random", ["diverged", "failed", "ok", "total"]].tolist() == [1, 1, 10, 12]


def test_lr_gap_pairs_seeds(quickstart_report: Path) -> None:
    gap = pd.read_csv(quickstart_report / "tables" / "lr_gap.csv").set_index(["ratio", "method"])
    # random at 0.5: 0.01 - 0.001 is +5 points for every seed, but seed 1 failed at 0.01: two pairs remain
    assert gap.loc[(0.5, "random"), "gap"] == pytest.approx(5.0) and gap.loc[(0.5, "random"), "pairs"] == 2
    # l1 at 0.9: ONE_CELL minus (90 - 9 - 5 + 1 + 0.2 seed) per seed
    expected = sum(a - (77.0 + 0.2 * s) for s, a in enumerate(ONE_CELL)) / 3
    assert gap.loc[(0.9, "l1"), "gap"] == pytest.approx(expected)


def test_the_lr_gap_skips_an_lr_where_a_method_always_diverged(tmp_path: Path) -> None:
    """LR 0.1 diverges for every seed of l1: the gap compares 0.01 with 0.001 for both methods, and says why."""
    statuses = {("l1", 0.9, 0.1, s): "diverged" for s in (0, 1)}
    write_synthetic_results(tmp_path, "g", ["l1", "tpp"], [0.9], [0.1, 0.01, 0.001], [0, 1],
                            accuracy=lambda m, r, lr, s: {0.1: 0.9, 0.01: 0.8, 0.001: 0.7}[lr], statuses=statuses)
    gap = tables.lr_gap_table(load_results(tmp_path).runs, ["l1", "tpp"])
    assert set(gap.data.lr_high) == {0.01} and set(gap.data.lr_low) == {0.001}
    assert list(gap.data.gap) == [pytest.approx(10.0)] * 2 and "Left out: LR 0.1" in gap.note


def test_a_diverged_seed_at_a_gap_lr_is_not_t_tested_nor_bolded(tmp_path: Path) -> None:
    """Issue 27: no t-interval or t-test across a diverged seed; the converged pairs alone would give a bold gap."""
    statuses = {("l1", 0.9, 0.1, s): "diverged" for s in (0, 1)}
    write_synthetic_results(tmp_path, "d", ["l1", "tpp"], [0.9], [0.1, 0.01], range(7),
                            accuracy=lambda m, r, lr, s: {0.1: 0.85 + 0.001 * (s % 3), 0.01: 0.8}[lr],
                            statuses=statuses)
    gap = tables.lr_gap_table(load_results(tmp_path).runs, ["l1", "tpp"])
    rows = {row[1]: row for row in gap.rows}
    assert rows["l1"][5] == "diverged seed: not tested (2 diverged)" and rows["tpp"][5] != rows["l1"][5]
    l1 = gap.data.set_index("method").loc["l1"]
    assert l1.diverged == 2 and math.isnan(l1.p) and (0, 5) not in gap.bold and (1, 5) in gap.bold


@pytest.mark.parametrize("status", ["diverged", "failed", "running", None])
def test_no_bold_beside_a_run_that_is_not_a_result(tmp_path: Path, status: str | None) -> None:
    """A beats B clearly on its ok seeds, but at LR 0.01 one of A's runs diverged, failed, is still running or is
    missing: no bold at that LR (the accuracy and rank tables); LR 0.001, where every run is ok, keeps it."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.85 if method == "A" else 0.80 + 0.002 * (seed % 2)) + 0.001 * seed + 0.0003 * (seed * seed % 3)

    write_synthetic_results(tmp_path, "b", ["A", "B"], [0.9], [0.01, 0.001], range(5), accuracy=acc,
                            statuses={("A", 0.9, 0.01, 4): status} if status else {})
    if status is None:  # A's seed 4 at LR 0.01 missing
        for path in (tmp_path / "b" / "runs").glob("*/result.json"):
            result = json.loads(path.read_text())
            if (result["method"], result["lr"], result["seed"]) == ("A", 0.01, 4):
                shutil.rmtree(path.parent)
    runs = load_results(tmp_path).runs
    accuracy = tables.accuracy_table(runs, ["A", "B"])
    assert set(accuracy.data[accuracy.data.best].lr) == {0.001}
    assert "the verdict's rule" not in accuracy.note
    ranks = tables.rank_table(runs, ["A", "B"])
    assert ranks.bold == {(0, 3)}  # A's rank 1 bold at LR 0.001 (column 3) only
    for note in (accuracy.note, ranks.note):  # each note tells the rule that withheld the bold
        assert "failed, diverged, has not finished or is missing" in note
        assert "at least 3 seeds" in note or "never below 3 seeds" in note


def test_rank_stability_flags_a_winner_that_changes_with_the_lr(tmp_path: Path) -> None:
    means = {("a", 0.9, 0.01): 0.80, ("b", 0.9, 0.01): 0.78, ("c", 0.9, 0.01): 0.70,
             ("a", 0.9, 0.001): 0.70, ("b", 0.9, 0.001): 0.75, ("c", 0.9, 0.001): 0.60,
             ("a", 0.5, 0.01): 0.90, ("b", 0.5, 0.01): 0.88, ("c", 0.5, 0.01): 0.80,
             ("a", 0.5, 0.001): 0.89, ("b", 0.5, 0.001): 0.87, ("c", 0.5, 0.001): 0.79}
    write_synthetic_results(tmp_path, "flip", ["a", "b", "c"], [0.5, 0.9], [0.01, 0.001], [0, 1],
                            accuracy=lambda m, r, lr, s: means[(m, r, lr)] + 0.001 * s)
    runs = load_results(tmp_path).runs
    table = tables.rank_stability_table(runs, ["a", "b", "c"])
    rows = {row[0]: row for row in table.rows}
    assert rows["0.9"][2:] == ["a (+2.00)", "b (+5.00)", "+0.33", "yes"]  # a, b swap; c stays last
    assert rows["0.5"][2:] == ["a (+2.00)", "a (+2.00)", "+1.00", "no"]
    assert (list(rows).index("0.9"), 5) in table.bold and "**yes**" in to_markdown(table)
    ranks = pd.DataFrame(tables.rank_table(runs, ["a", "b", "c"]).data).set_index(["ratio", "method", "lr"])
    assert ranks.loc[("0.9", "a", 0.01), "rank"] == 1 and ranks.loc[("0.9", "a", 0.001), "rank"] == 2


def test_a_method_missing_at_one_lr_is_not_a_winner_change(tmp_path: Path) -> None:
    """scratch wins at 0.01 but failed at 0.001; tpp beats l1 at both LRs: the winner among all three did not move."""
    means = {("scratch", 0.01): 0.90, ("tpp", 0.01): 0.85, ("l1", 0.01): 0.80,
             ("scratch", 0.001): 0.95, ("tpp", 0.001): 0.84, ("l1", 0.001): 0.70}
    write_synthetic_results(tmp_path, "gap", ["scratch", "tpp", "l1"], [0.5], [0.01, 0.001], [0],
                            accuracy=lambda m, r, lr, s: means[(m, lr)],
                            statuses={("scratch", 0.5, 0.001, 0): "failed"})
    table = tables.rank_stability_table(load_results(tmp_path).runs, ["scratch", "tpp", "l1"])
    (row,) = table.rows
    assert row[2:4] == ["scratch (+5.00)", "tpp (+14.00)"]  # each LR's best among what finished there
    assert row[-1] == "no (among the 2 finished at every LR)" and not table.bold
    assert table.data.winner_changes.tolist() == [False]


def test_single_lr_leaves_out_the_lr_tables(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "one", ["l1", "random"], [0.5], [0.01], [0])
    runs = load_results(tmp_path).runs
    assert tables.lr_gap_table(runs, ["l1", "random"]) is None
    assert tables.rank_stability_table(runs, ["l1", "random"]) is None


# ----------------------------------------------------------------------------------------- loading

def test_a_corrupt_file_is_named_and_listed_as_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_synthetic_results(tmp_path, "s", ["l1"], [0.5], [0.01], [0, 1])
    broken = tmp_path / "s" / "runs" / "broken000000" / "result.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"status": "ok", "metrics": ')
    not_a_run = tmp_path / "s" / "runs" / "listlist0000" / "result.json"
    not_a_run.parent.mkdir(parents=True)
    not_a_run.write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="bench.report.load"):
        loaded = load_results(tmp_path)
    assert len(loaded.runs) == 4 and len(loaded.history) == 2 * 6
    assert str(broken) in caplog.text and str(not_a_run) in caplog.text
    corrupt = loaded.runs[loaded.runs.status == "corrupt"].set_index("run_id")
    assert sorted(corrupt.index) == ["broken000000", "listlist0000"]  # no manifest: method unknown, no numbers
    assert str(broken) in corrupt.error["broken000000"] and "line 1 column" in corrupt.error["broken000000"]
    assert corrupt.acc_final.isna().all() and set(corrupt.method) == {"unknown"}


def test_filter_query_and_bad_filters(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "s", ["l1", "tpp", "random"], [0.5, 0.9], [0.01, 0.001], [0])
    loaded = load_results(tmp_path, query="method in ['l1','tpp'] and ratio == 0.9")
    assert sorted(set(loaded.runs.method)) == ["l1", "tpp"] and set(loaded.runs.ratio) == {"0.9"}
    assert len(loaded.runs) == 4 and set(loaded.history.run_id) == set(loaded.runs.run_id)
    assert len(load_results(tmp_path, query="ratio in [0.5, 0.9] and ratio > 0.6").runs) == 6  # numbers compare
    with pytest.raises(UserError, match=r"ratio is a number in filters; write it without quotes, e\.g\. \"ratio =="):
        load_results(tmp_path, query="ratio == '0.9'")
    for query in ("ratio ==", "no_such_column > 1", "ratio = 0.9"):
        with pytest.raises(UserError, match="--filter"):
            load_results(tmp_path, query=query)
    with pytest.raises(UserError, match="matched none"):
        write_reports(tmp_path, query="seed == 7", workers=1)
    with pytest.raises(UserError, match="no results"):
        write_reports(tmp_path, ["other"], workers=1)


def test_latency_speedup_column_appears_only_with_latency_metrics(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "s", ["l1"], [0.5], [0.01], [0], extra_metrics={
        "latency_dense": {"median_ms": 10.0, "mean_ms": 11.0, "device": "cpu"}, "latency_pruned": {"median_ms": 4.0}})
    runs = load_results(tmp_path).runs
    table = efficiency.efficiency_table(runs, ["l1"])
    assert table.header[-1] == ("latency", "speed-up (×)") and table.rows[0][-1] == "2.50"
    assert "latency" not in str(efficiency.efficiency_table(runs.drop(columns=[c for c in runs if "latency" in c]),
                                                            ["l1"]).header)


# ----------------------------------------------------------------------------------------- rendering

def test_latex_and_markdown_rendering() -> None:
    table = tables.Table("t", "T", "note", [("", "method"), ("lr 0.01", "acc (%)"), ("lr 0.01", "Δ")],
                         [["l1_x", "90.00 ± 1.00", "+0.50"], ["tpp", "91.00 ± 1.00", "—"]], pd.DataFrame(),
                         {(1, 1)})
    latex = to_latex(table)
    assert r"\multicolumn{2}{c}{lr 0.01}" in latex and r"\cmidrule(lr){2-3}" in latex
    assert r"l1\_x & 90.00 $\pm$ 1.00 & +0.50 \\" in latex and r"\textbf{91.00 $\pm$ 1.00}" in latex
    assert "method | lr 0.01: acc (%) | lr 0.01: Δ |" in to_markdown(table)


def test_parallel_figures_match_serial_ones(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "s", ["l1", "random"], [0.5, 0.9], [0.01, 0.001], [0, 1])
    runs = load_results(tmp_path).runs
    styles = MethodStyles.for_methods(["l1", "random"])
    jobs = [(accuracy_vs_ratio, (runs, styles))] * 2
    serial, parallel = render_plots(jobs, 1), render_plots(jobs, 2)
    assert [p.png for p in serial] == [p.png for p in parallel]


def test_method_colours_are_fixed_per_report() -> None:
    styles = MethodStyles.for_methods(["l1", "random", "tpp"])
    again = MethodStyles.for_methods(["l1", "random", "tpp"])
    assert styles == again and len(set(styles.colours.values())) == 3
    many = MethodStyles.for_methods([f"m{i}" for i in range(12)])
    assert len({(many.colours[m], many.markers[m]) for m in many.order}) == 12  # colours repeat, markers differ


# ----------------------------------------------------------------------------------------- published numbers

def test_shipped_tpp_table1_reference() -> None:
    reference = load_reference("tpp_table1")
    assert len(reference) == 50 and set(reference.ratio) == {"0.3", "0.5", "0.7", "0.9", "0.95"}
    tpp = reference[(reference.method == "tpp") & (reference.ratio == "0.9")].set_index("lr").acc_mean
    assert tpp[0.01] - tpp[0.001] == pytest.approx(0.54)  # the paper's "Acc. diff. (TPP)" at 0.9, sign flipped
    with pytest.raises(UserError, match="tpp_table1"):
        load_reference("no_such_reference")


def test_reference_column_and_difference(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "lr_sensitivity", ["l1", "tpp"], [0.9], [0.01, 0.001], [0, 1],
                            accuracy=lambda m, r, lr, s: 0.8775 if m == "l1" else 0.89, model="resnet56",
                            dataset="cifar10")
    runs = load_results(tmp_path).runs
    table = tables.accuracy_table(runs, ["l1", "tpp"], load_reference("tpp_table1"))
    data = table.data.set_index(["method", "lr"])
    assert data.loc[("l1", 0.01), "paper_mean"] == 86.75
    assert data.loc[("l1", 0.01), "diff_vs_paper"] == pytest.approx(1.0)
    assert table.rows[0][2:5] == ["87.75 ± 0.00", "86.75 (0.31)", "+1.00"]
    gap = tables.lr_gap_table(runs, ["l1", "tpp"], load_reference("tpp_table1"))
    assert gap.rows[1][-1] == "+0.54"  # TPP's published gap at 0.9 next to ours


def test_suite_reference_key_does_not_change_run_ids(write_suite) -> None:
    from bench.config import load_suite
    from bench.grid import expand
    from bench.plugins import load_builtin

    load_builtin()
    path = write_suite(tiny_suite())
    plain, referenced = load_suite(path), load_suite(path, ["reference=tpp_table1"])
    assert referenced.reference == "tpp_table1" and plain.reference is None
    assert [r.run_id for r in expand(plain)] == [r.run_id for r in expand(referenced)]


# ----------------------------------------------------------------------------------------- one configuration per report

def test_a_report_never_pools_two_configurations(tmp_path: Path) -> None:
    """The suite run twice with different recipes into one folder: the report covers the manifest's runs only
    (each cell at most one run per seed) and lists the others apart, saying how they differ."""
    from bench.manifest import Manifest, write_manifest

    seeds = [0, 1, 2]
    write_synthetic_results(tmp_path, "qs", ["l1", "random"], [0.5], [0.01, 0.001], seeds, epochs=6)
    second = write_synthetic_results(tmp_path, "qs", ["l1", "random"], [0.5], [0.1, 0.01], seeds, epochs=2,
                                     accuracy=lambda *key: 0.2)
    runs = {}
    for path in second:
        data = json.loads(path.read_text())
        runs[data["run_id"]] = {k: data[k] for k in ("method", "ratio", "lr", "seed")}
    config = {k: v for k, v in json.loads(second[0].read_text())["config"].items() if k != "method"}
    config["dense"] = {k: v for k, v in config["dense"].items() if k not in ("seed", "variants")}
    config["prune"].pop("ratio")
    config["retrain"].pop("lr")
    write_manifest(tmp_path / "qs", Manifest("qs", runs, config, seeds, "now"))
    write_reports(tmp_path, workers=1)
    report = tmp_path / "qs" / "report"
    accuracy = pd.read_csv(report / "tables" / "accuracy.csv")
    assert accuracy.n.max() == len(seeds)  # never more runs in a cell than seeds
    assert len(pd.read_csv(report / "runs.csv")) == 12
    assert set(pd.read_csv(report / "runs.csv").lr) == {0.1, 0.01}
    left = pd.read_csv(report / "tables" / "left_out.csv")
    assert list(left.runs) == [12] and "retrain.epochs 6 (suite: 2)" in left.reason[0]
    summary = (report / "summary.md").read_text()
    assert "12 other result files in the folder are listed apart" in summary and "Runs left out" in summary


def test_without_a_manifest_the_latest_configuration_stands_for_the_suite(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "qs", ["l1"], [0.5], [0.01], [0, 1], epochs=6)
    for path in write_synthetic_results(tmp_path, "qs", ["l1"], [0.5], [0.01], [0, 1], epochs=2):
        data = json.loads(path.read_text())
        path.write_text(json.dumps(data | {"started": "2026-02-01T00:00:00+0000"}))
    write_reports(tmp_path, workers=1)
    report = tmp_path / "qs" / "report"
    assert set(pd.read_csv(report / "runs.csv").epochs_done) == {2}
    assert "no manifest.json" in (report / "summary.md").read_text()
    assert pd.read_csv(report / "tables" / "left_out.csv").runs.sum() == 2


def test_without_a_manifest_one_method_label_is_not_pooled_across_hyperparameters(tmp_path: Path) -> None:
    """Two l1 runs per seed with different method hyperparameters (same fixed configuration, which leaves the
    method out): only the most recently started setting is reported; the other is listed apart."""
    write_synthetic_results(tmp_path, "hp", ["l1"], [0.5], [0.01], [0, 1])
    for path in write_synthetic_results(tmp_path, "hp", ["l1"], [0.5], [0.01], [0, 1], epochs=7):
        data = json.loads(path.read_text())
        data["config"]["retrain"]["epochs"] = 6  # the same fixed configuration as the first runs ...
        data["config"]["method"] = [{"name": "l1", "hparams": {"norm": 2}}]  # ... but other hyperparameters
        path.write_text(json.dumps(data | {"started": "2026-02-01T00:00:00+0000"}))
    data = load_results(tmp_path)
    part = suite_runs(data, "hp", tmp_path / "hp")
    assert len(part.runs) == 2 and len(part.left_out) == 2
    assert set(part.left_out.reason) == {"same configuration, but other hyperparameters of l1 than its most recent "
                                         "runs"}
    assert "no manifest.json" in part.basis


def test_an_unreadable_manifest_is_said_as_such(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "bad", ["l1"], [0.5], [0.01], [0])
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    part = suite_runs(load_results(tmp_path), "bad", tmp_path / "bad")
    assert part.basis.startswith("manifest.json is unreadable") and len(part.runs) == 1


# ----------------------------------------------------------------------------------------- CLI

def test_cli_report_with_suite_file_reference_and_filter(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    write_synthetic_results(results, "lr_sensitivity", ["tpp"], [0.5, 0.9], [0.01, 0.001], [0],
                            model="resnet56", dataset="cifar10", epochs=3)
    suite = tmp_path / "lr.yaml"
    suite.write_text((PROJECT / "suites" / "lr_sensitivity.yaml").read_text() + "\nreference: tpp_table1\n")
    assert main(["report", "--results", str(results), "--suite", str(suite), "--workers", "1"]) == 0
    report = results / "lr_sensitivity" / "report"
    assert "| lr 0.01: paper |" in (report / "tables" / "accuracy.md").read_text()
    assert "index.html" in capsys.readouterr().out
    assert (report / "figures" / "epochs_ratio_0.5.png").exists()
    assert main(["report", "--results", str(results), "--filter", "ratio == 0.9", "--workers", "1"]) == 0
    filtered = filtered_dir(results / "lr_sensitivity", "ratio == 0.9")
    assert filtered.parent == report / "filtered" and str(filtered) in capsys.readouterr().out
    assert not (filtered / "figures" / "epochs_ratio_0.5.png").exists()  # the filtered-out ratio is not drawn
    assert "paper" not in (filtered / "tables" / "accuracy.md").read_text()  # no suite file, no reference
    assert (filtered / "filter.txt").read_text().splitlines()[0] == "ratio == 0.9"
    # The full report is left as it was: every run, every figure.
    assert len(pd.read_csv(report / "runs.csv")) == 4 and len(pd.read_csv(filtered / "runs.csv")) == 2
    assert (report / "figures" / "epochs_ratio_0.5.png").exists()
    assert main(["report", "--results", str(results), "--filter", "ratio ="]) == 2
    # The full report made again from the same results keeps the filtered one; from other results it goes.
    assert main(["report", "--results", str(results), "--workers", "1"]) == 0 and filtered.is_dir()
    write_synthetic_results(results, "lr_sensitivity", ["tpp"], [0.5, 0.9], [0.01, 0.001], [1],
                            model="resnet56", dataset="cifar10", epochs=3)
    assert main(["report", "--results", str(results), "--workers", "1"]) == 0 and not filtered.exists()


def test_a_filter_on_a_numeric_ratio_among_profiles_is_refused_with_a_how_to(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    paths = write_synthetic_results(tmp_path, "mix", ["l1"], [0.5, 0.9], [0.01], [0])
    data = json.loads(paths[0].read_text())  # the ratio-0.5 run becomes a per-layer profile
    paths[0].write_text(json.dumps(data | {"ratio": "tpp_resnet56", "ratio_value": None}))
    assert main(["report", "--results", str(tmp_path), "--filter", "ratio == 0.9", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "mix single ratios and per-layer ratio profiles" in err and "ratio_value == 0.9" in err
    assert main(["report", "--results", str(tmp_path), "--filter", "ratio_value == 0.9", "--workers", "1"]) == 0


# ----------------------------------------------------------------------------------------- the page in a browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _render_page(browser: str, page: Path, tmp_path: Path, name: str) -> tuple[str, Path]:
    """Load ``page`` in headless Chromium: the DOM after the load event, and a screenshot."""
    shot = tmp_path / f"{name}.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / f'profile-{name}'}", f"--screenshot={shot}", "--window-size=1280,4000",
               "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.stdout, shot


@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (apt-get install chromium)")
def test_html_page_renders_in_headless_chromium(quickstart_report: Path, tmp_path: Path) -> None:
    browser = _browser()
    dom, shot = _render_page(browser, quickstart_report / "index.html", tmp_path, "good")
    assert 'data-report-ready="yes"' in dom, dom[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    broken = tmp_path / "broken.html"  # the marker must notice an image that does not decode
    text = (quickstart_report / "index.html").read_text()
    broken.write_text(text.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    dom, _ = _render_page(browser, broken, tmp_path, "broken")
    assert 'data-report-ready="no"' in dom


def test_accuracy_bands_stay_inside_0_to_100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds at 99.4-100%: the t-interval's upper end passes 100; the figures' bands are clipped as the tables are."""
    from bench.report import plots

    write_synthetic_results(tmp_path, "top", ["l1"], [0.5], [0.01, 0.001], [0, 1, 2],
                            accuracy=lambda m, r, lr, s: (1.0, 0.994, 1.0)[s])
    runs = load_results(tmp_path).runs
    seen: list = []
    monkeypatch.setattr(plots, "_band", lambda ax, x, found, *rest: seen.extend(found))
    styles = MethodStyles.for_methods(["l1"])
    assert plots.accuracy_vs_lr(runs, styles) and accuracy_vs_ratio(runs, styles)
    assert seen and all(c.mean + c.half > 100 and c.high == 100.0 for c in seen)
