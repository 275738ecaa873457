"""The verdict's calibration (issue 27, item 8) and the checks it leans on: the in-memory runs frame equals what
load_results reads from the same files, the calibration benchmark runs through the real report code and is
reproducible, the exact Spearman p and the seeds-for-power search equal scipy's and a bisection's, and the
report's resolution floor (item 9) is the difference its seed count resolves with 80% power."""
from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from bench.report import from_records, load_results  # noqa: E402
from bench.report.stats import power, sd_upper_bound, seeds_for_power, smallest_resolvable, spearman_rho  # noqa: E402
from bench.report.synthetic import synthetic_results, write_synthetic_results  # noqa: E402
from bench.report.verdict import assess  # noqa: E402
from tests.conftest import benchmark  # noqa: E402


@pytest.fixture(scope="module")
def calibration() -> ModuleType:
    return benchmark("verdict_calibration")


def test_the_in_memory_frame_equals_what_load_results_reads(tmp_path: Path) -> None:
    """Every status the calibration draws (ok, diverged, failed) and one it does not (running), validation
    accuracies, two suites whose names sort differently as paths than as strings ('s-2/' before 's/'): the
    frames, the history and the configurations are equal, and so is the verdict."""
    statuses = {("l1", 0.5, 0.01, 1): "failed", ("tpp", 0.9, 0.001, 2): "diverged",
                ("random", 0.5, 0.01, 0): "running"}
    grid = dict(methods=["l1", "tpp", "random"], ratios=[0.5, 0.9], lrs=[0.01, 0.001], seeds=[0, 1, 2],
                statuses=statuses, validation=lambda m, r, lr, s: 0.8 + 0.01 * s + (0.02 if m == "tpp" else 0))
    for suite in ("s", "s-2"):
        write_synthetic_results(tmp_path, suite, **grid)
    loaded = load_results(tmp_path)
    built = from_records([(r, "s-2") for r in synthetic_results("s-2", **grid)]
                         + [(r, "s") for r in synthetic_results("s", **grid)])
    pd.testing.assert_frame_equal(built.runs, loaded.runs)
    pd.testing.assert_frame_equal(built.history, loaded.history)
    assert built.configs == loaded.configs and len(loaded.runs) == 72
    one = loaded.runs[loaded.runs.suite == "s"].reset_index(drop=True)
    mine = built.runs[built.runs.suite == "s"].reset_index(drop=True)
    assert assess(one, ["l1", "tpp", "random"]).headline == assess(mine, ["l1", "tpp", "random"]).headline


def test_the_calibration_benchmark_runs_through_the_report_code(calibration: ModuleType,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A smoke run of both sections, printed as docs/reports.md quotes them; its rates are shares of the suites."""
    assert calibration.main(["--reps", "2", "--power-reps", "1", "--seeds", "3", "--methods", "2", "--effects", "4",
                             "--pilot-seeds", "3", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "False-winner rate under the null" in out and "Achieved power" in out and "target" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("3 ") and "±" in line]
    assert len(rows) == 2 and all(float(r[1]) in (0.0, 0.5, 1.0) for r in rows)  # two suites: a share of two


def test_an_unknown_section_is_one_error_line(calibration: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibration.main(["--sections", "null,adaptiv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sections 'null,adaptiv': unknown section(s) adaptiv") and err.count("\n") == 1
    assert "null, power, adaptive" in err  # the sections it offers, the sequential-seeds one (issue 33) among them


def test_a_simulated_suite_is_reproducible_and_its_draws_extend_seed_by_seed(calibration: ModuleType) -> None:
    """The same generator seed gives the same comparisons; the draws of seeds 0-2 and then 3-4 from one generator
    are the draws of seeds 0-4 (what a sequential design adds to); a true lead of 20 run-sds is resolved."""
    first = calibration.simulate(3, 4, [0.0, 0.0, 0.0], 0.4, 0.1, 0.1, np.random.default_rng(7))
    again = calibration.simulate(3, 4, [0.0, 0.0, 0.0], 0.4, 0.1, 0.1, np.random.default_rng(7))
    assert [(c.method, c.state, c.test.mean) for c in first] == [(c.method, c.state, c.test.mean) for c in again]
    rng, whole = np.random.default_rng(3), calibration.draw_runs([0.0, 1.0], range(5), 0.4, 0.0, 0.0,
                                                                  np.random.default_rng(3))
    parts = {**calibration.draw_runs([0.0, 1.0], range(3), 0.4, 0.0, 0.0, rng),
             **calibration.draw_runs([0.0, 1.0], range(3, 5), 0.4, 0.0, 0.0, rng)}
    assert parts == whole
    (clear,) = calibration.simulate(2, 5, [0.0, 8.0], 0.4, 0.0, 0.0, np.random.default_rng(1))
    assert clear.state == "resolved" and clear.method == "m0" and clear.test.mean < -7
    with pytest.raises(ValueError, match="2 effects for 3 methods"):
        calibration.simulate(3, 3, [0.0, 1.0], 0.4, 0.0, 0.0, np.random.default_rng(0))


def test_failed_runs_redone_end_ok_or_diverged_and_the_rest_stay(calibration: ModuleType) -> None:
    draws = calibration.draw_runs([0.0, 0.0], range(10), 0.4, 0.1, 0.3, np.random.default_rng(2))
    redone = calibration.redo_failed(draws, [0.0, 0.0], 0.4, 0.1, np.random.default_rng(3))
    failed = [k for k, v in draws.items() if v[2] == "failed"]
    assert failed and all(redone[k][2] in ("ok", "diverged") for k in failed)
    assert all(redone[k] == v for k, v in draws.items() if v[2] != "failed")


def test_rate_text_gives_an_interval_inside_0_and_1(calibration: ModuleType) -> None:
    # exact (Clopper-Pearson) interval of 0 of 400: [0, 1 - 0.025 ** (1/400)] = [0, 0.00918]
    assert calibration.rate_text(0, 400) == "0.000 ± 0.000 [0.000, 0.009]"
    assert calibration.rate_text(20, 400).startswith("0.050 ± 0.011 [0.031, 0.076]")
    assert calibration.rate_text(0, 0) == "—"


def test_the_exact_spearman_p_is_scipys_permutation_test() -> None:
    """The cached exact null gives scipy.stats.permutation_test's p to the last bit, with and without ties."""
    rng = np.random.default_rng(1)
    for n, trial in itertools.product(range(3, 9), range(4)):
        a = rng.integers(0, 4 if trial % 2 else 100, n).astype(float)
        b = np.round(rng.normal(size=n), 0 if trial == 3 else 6)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue

        def rho(u: np.ndarray, axis: int = -1, b: np.ndarray = b) -> np.ndarray:  # r of the ranks, apart
            ru, rb = np.moveaxis(sps.rankdata(u, axis=axis), axis, -1), sps.rankdata(b)
            ru, rb = ru - ru.mean(axis=-1, keepdims=True), rb - rb.mean()
            return (ru @ rb) / np.sqrt((ru ** 2).sum(axis=-1) * (rb ** 2).sum())

        expected = sps.permutation_test((a,), rho, permutation_type="pairings", vectorized=True,
                                        n_resamples=math.inf)
        got = spearman_rho(a, b)
        assert got[0] == pytest.approx(expected.statistic, abs=1e-12) and got[1] == pytest.approx(expected.pvalue,
                                                                                                   abs=1e-12)


def test_seeds_for_power_is_the_first_n_reaching_the_target() -> None:
    """Against a plain search from the smallest n: the walk from the normal approximation finds the same n."""
    for effect, sd, alpha in itertools.product([0.3, 1.0, 2.0, 9.0], [0.2, 1.0], [0.05, 0.05 / 28]):
        expected = next((n for n in range(3, 1001) if power(effect, sd, n, alpha) >= 0.8), None)
        assert seeds_for_power(effect, sd, alpha) == expected
    assert seeds_for_power(0.01, 1.0, 0.05) is None  # about 78,000 pairs: more than the 1,000 searched


def test_the_resolution_floor_in_summary_md_is_what_the_seeds_resolve(tmp_path: Path) -> None:
    """Item 9: summary.md says the smallest difference the suite's seeds resolve with 80% power; it is the
    difference at which the t-test at the family's strictest level has exactly 80% power with the sd at its
    upper bound, and a simulation of that t-test at that difference resolves about 80% of the time."""
    from bench.cli import main

    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return {"A": 0.85, "B": 0.845, "C": 0.84}[method] + 0.004 * ((seed * (3 + (method == "B")) + (method == "C"))
                                                                      % 5) / 4

    write_synthetic_results(tmp_path, "floor", ["A", "B", "C"], [0.5], [0.01], range(5), accuracy=acc,
                            validation=acc)
    assert main(["report", "--results", str(tmp_path), "--workers", "1"]) == 0
    summary = (tmp_path / "floor" / "report" / "summary.md").read_text()
    paired = pd.read_csv(tmp_path / "floor" / "report" / "tables" / "paired.csv")
    assert len(paired) == 2 and set(paired.pairs) == {5}
    pooled = math.sqrt(float((paired.ci_half / sps.t.ppf(0.975, 4) * math.sqrt(5)).pow(2).mean()))
    bound = sd_upper_bound(pooled, 5)
    floor = smallest_resolvable(bound, 5, 0.05 / 2)
    assert power(floor, bound, 5, 0.05 / 2) == pytest.approx(0.8, abs=1e-6)
    sentence = next(line for line in summary.splitlines() if "cannot resolve a difference smaller than" in line)
    assert "With 5 seeds" in sentence and f"pooled sd {pooled:.2f} points" in sentence
    assert f"smaller than {floor:.2f} points with 80% power at its family's level (0.05/2)" in sentence
    rng = np.random.default_rng(0)
    draws = rng.normal(floor, bound, size=(20000, 5))
    p = sps.ttest_1samp(draws, 0.0, axis=1).pvalue
    assert float(np.mean(p < 0.05 / 2)) == pytest.approx(0.8, abs=0.015)


def test_the_jsv_sentence_carries_its_p_and_the_few_points_caveat(tmp_path: Path) -> None:
    """Four (method × ratio) points: Spearman's rho with its exact permutation p, and the caveat below 10 points."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        gap = {"A": 0.01, "B": 0.03, "C": 0.05, "D": 0.02}[method] if lr == 0.001 else 0.0
        return 0.85 - gap + 0.001 * seed

    write_synthetic_results(tmp_path, "rho", ["A", "B", "C", "D"], [0.5], [0.01, 0.001], [0, 1, 2], accuracy=acc,
                            validation=acc)
    runs = load_results(tmp_path).runs
    (finding,) = [f for f in assess(runs, ["A", "B", "C", "D"]).findings if f.kind == "jsv"]
    rho, p, n = finding.data["rho"], finding.data["p"], finding.data["n"]
    assert n == 4 and (rho, p) == pytest.approx(spearman_rho(*_jsv_and_gaps(runs))[:2])
    assert f"Spearman ρ = {rho:+.2f} across 4 (method × ratio) points, exact permutation p = {p:.3f}" in finding.text
    assert "with fewer than 10 points even a large ρ is weak evidence" in finding.text
    assert ("not significant" in finding.text) == (p >= 0.05)


def _jsv_and_gaps(runs: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Each method's JSV just after pruning and its LR gap (points), by hand."""
    ok = runs[runs.status == "ok"]
    jsv, gaps = [], []
    for _, group in ok.groupby("method"):
        means = group.groupby("lr").acc_final.mean() * 100
        jsv.append(float(group.jsv_pruned.mean()))
        gaps.append(float(means.max() - means.min()))
    return jsv, gaps


def test_the_adaptive_section_prints_rounds_beside_max_seeds(calibration: ModuleType,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--sections adaptive`` prints the sequential design's rows (the null and each --effects) from the round code."""
    assert calibration.main(["--sections", "adaptive", "--adaptive-reps", "2", "--effects", "2", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "Seeds grown in rounds (start 3, max 10, step 2" in out
    rows = [line.split() for line in out.splitlines() if line.strip().endswith(("(false winners)", "(power)"))]
    assert [row[0] for row in rows] == ["0", "2"]
    assert all(3 <= float(row[7]) <= 10 for row in rows)  # seeds per cell between start and max
