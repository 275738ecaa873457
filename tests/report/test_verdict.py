"""The fair verdict (issue 15): statistics against published values, LR selection on validation with the regret
against the test oracle, failures at chance, paired comparisons with Holm's correction, and the headline."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from bench.report import load_results, write_reports  # noqa: E402
from bench.report.stats import (  # noqa: E402
    holm,
    paired_t_test,
    power,
    probability_of_improvement,
    sd_upper_bound,
    seeds_for_power,
    spearman_rho,
    t_two_sided_p,
)
from bench.report.synthetic import write_synthetic_results  # noqa: E402
from bench.report.verdict import BY_TEST, BY_VALIDATION, compare, headline, select_lrs, selected_by  # noqa: E402

# ----------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("t, df, p", [(2.0, 5, 0.10194), (2.570582, 5, 0.05), (4.302653, 2, 0.05),
                                       (12.706205, 1, 0.05), (1.0, 1, 0.5), (2.228139, 10, 0.05), (0.0, 3, 1.0)])
def test_two_sided_p_matches_published_t_tables(t: float, df: int, p: float) -> None:
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-5)


def test_paired_t_test_matches_scipy_ttest_rel_on_a_worked_example() -> None:
    # scipy.stats.ttest_rel([1,2,3,4,5] + x, x): differences 1..5, t = 3 / (sqrt(2.5)/sqrt(5)) = 4.2426, p = 0.01324
    test = paired_t_test([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (round(test.t, 4), round(test.p, 5), test.n) == (4.2426, 0.01324, 5)
    assert test.half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert math.isnan(paired_t_test([0.3]).p)  # one pair: no test
    # sd 0: no p-value at all (the old rule said p = 0, "resolved"): too few seeds to speak
    assert math.isnan(paired_t_test([0.5, 0.5, 0.5]).p) and paired_t_test([0.5, 0.5, 0.5]).too_few
    assert paired_t_test([1.0, 2.0]).too_few and not test.too_few
    # equal up to float rounding (a verdict's -5.1 points at every seed came out with an sd of 7e-15 and p 7e-46): sd 0
    rounded = [-5.1, np.nextafter(-5.1, 0), -5.1, np.nextafter(-5.1, -6)]
    assert np.std(rounded) > 0 and paired_t_test(rounded).too_few and math.isnan(paired_t_test(rounded).p)
    assert not paired_t_test([-5.1, -5.1001, -5.1, -5.0999]).too_few  # a real spread of 1e-4 points still tests


def test_holm_step_down_adjustment() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, math.nan])[0] == 0.2 and math.isnan(holm([0.2, math.nan])[1])
    assert holm([0.6, 0.5]) == [1.0, 1.0]


def test_spearman_with_ties_and_its_exact_permutation_p() -> None:
    rho, p, n = spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])  # scipy.stats.spearmanr: 0.8207826816681233
    assert (rho, n) == (pytest.approx(0.8207826816681233), 5)
    # exact: of the 120 orderings of 5 points, those with |rho| >= 0.8208 (counted by brute force below)
    import itertools

    from scipy.stats import spearmanr
    ys = [5, 6, 7, 8, 7]
    hits = sum(abs(spearmanr([1, 2, 3, 4, 5], perm).statistic) >= 0.8207826816681233 - 1e-12
               for perm in itertools.permutations(ys))
    assert p == pytest.approx(hits / 120)
    assert spearman_rho([1, 2, 3], [3, 2, 1])[:2] == (pytest.approx(-1.0), pytest.approx(2 / 6))
    assert math.isnan(spearman_rho([1, 2], [1, 2])[0])


def test_the_spearman_p_is_called_exact_only_where_it_is() -> None:
    from bench.report.findings import permutation_words
    from bench.report.stats import EXACT_PERMUTATION_POINTS

    assert permutation_words(EXACT_PERMUTATION_POINTS) == "exact permutation p"
    assert permutation_words(EXACT_PERMUTATION_POINTS + 1) == "permutation p (9,999 resamples)"


def test_power_and_the_seeds_it_needs_match_the_noncentral_t() -> None:
    # G*Power / statsmodels TTestPower: effect size d = 1, alpha 0.05 two-sided -> n = 10 gives 0.8031 power
    assert power(1.0, 1.0, 10, 0.05) == pytest.approx(0.8031, abs=5e-4)
    assert seeds_for_power(1.0, 1.0, 0.05) == 10  # the "14, 10, 6" plug-in gave 7 here
    assert seeds_for_power(0.5, 1.0, 0.05) == 34 and seeds_for_power(2.0, 1.0, 0.05) == 5
    assert seeds_for_power(0.0, 1.0, 0.05) is None and seeds_for_power(1.0, 0.0, 0.05) is None
    # the upper 80% bound on an sd of 1 from 3 values: sqrt(2 / chi2.ppf(0.2, 2)) = sqrt(2 / 0.44629)
    assert sd_upper_bound(1.0, 3) == pytest.approx(math.sqrt(2 / 0.4462871026284195))


def test_probability_of_improvement_as_rliable_defines_it() -> None:
    point, low, high = probability_of_improvement([1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    # pairs (x > y): 5 + 4 + 3 + 2 + 1 = 15 of 25, ties (x == y): 4, so (15 + 2) / 25
    assert point == pytest.approx(17 / 25) and 0 <= low < point < high <= 1
    assert probability_of_improvement([1, 2, 3, 4, 5], [0, 1, 2, 3, 4]) == (point, low, high)  # seeded
    assert probability_of_improvement([9, 9, 9, 9, 9], [1, 2, 3, 4, 5])[0] == 1.0


# ----------------------------------------------------------------------------------------- the verdict

LRS = [0.1, 0.01, 0.001]


def validation_prefers_x(method: str, ratio: float, lr: float, seed: int) -> float:
    """A's validation accuracy is best at LR 0.01 (and the best of all); B's at 0.1."""
    best = {"A": 0.01, "B": 0.1}[method]
    return 0.80 + (0.05 if lr == best else 0.0) + (0.01 if method == "A" else 0.0) + 0.001 * seed


def accuracy_prefers_y(method: str, ratio: float, lr: float, seed: int) -> float:
    """On test, A does best at LR 0.001 (1 point above its validation choice); B at its validation choice 0.1.
    A leads B by 0.2 points at their selected LRs, with seed noise larger than that: not resolved."""
    if method == "A":
        return {0.1: 0.70, 0.01: 0.802, 0.001: 0.812}[lr] + 0.02 * (seed % 2)
    return {0.1: 0.80, 0.01: 0.75, 0.001: 0.60}[lr] + 0.02 * ((seed + 1) % 2)


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    write_synthetic_results(tmp_path, "fair", ["A", "B"], [0.9], LRS, [0, 1, 2], accuracy=accuracy_prefers_y,
                            validation=validation_prefers_x)
    return tmp_path


def test_the_lr_is_chosen_on_validation_and_the_regret_reported(generated: Path) -> None:
    runs = load_results(generated).runs
    assert selected_by(runs) == BY_VALIDATION
    chosen = {s.method: s for s in select_lrs(runs, ["A", "B"])}
    assert chosen["A"].lr_selected == 0.01 and chosen["A"].lr_oracle == 0.001
    assert chosen["A"].regret == pytest.approx(1.0) and chosen["B"].regret == pytest.approx(0.0)
    assert chosen["B"].edge == "highest LR swept for it" and chosen["A"].edge == ""
    write_reports(generated, workers=1)
    table = pd.read_csv(generated / "fair" / "report" / "tables" / "verdict.csv")
    assert list(table.columns[:9]) == ["ratio", "method", "lr_selected", "acc", "ci_half", "lr_oracle", "acc_oracle",
                                       "regret", "selected_by"]
    a = table[table.method == "A"].iloc[0]
    assert (a.lr_selected, a.lr_oracle, round(a.regret, 6), a.selected_by) == (0.01, 0.001, 1.0, BY_VALIDATION)


def test_a_difference_inside_the_noise_is_neither_resolved_nor_bolded(generated: Path) -> None:
    runs = load_results(generated).runs
    (comparison,) = compare(select_lrs(runs, ["A", "B"]))
    assert comparison.reference == "A"  # the best validation accuracy at its selected LR (0.861 vs 0.851)
    assert not comparison.resolved and comparison.pairing == "same seed, same dense model"
    write_reports(generated, workers=1)
    report = generated / "fair" / "report"
    paired = pd.read_csv(report / "tables" / "paired.csv")
    assert list(paired.resolved) == [False]
    verdict_md = (report / "tables" / "verdict.md").read_text()
    assert "**" not in verdict_md  # no winner bolded


def test_a_resolved_win_is_bolded_and_said(tmp_path: Path) -> None:
    def clear(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.85 if method == "A" else 0.80 + 0.002 * (seed % 2)) + 0.001 * seed + 0.0003 * (seed * seed % 3)

    write_synthetic_results(tmp_path, "clear", ["A", "B"], [0.9], [0.01, 0.001], [0, 1, 2], accuracy=clear,
                            validation=clear)
    write_reports(tmp_path, workers=1)
    report = tmp_path / "clear" / "report"
    assert pd.read_csv(report / "tables" / "paired.csv").resolved.all()
    assert "**" in (report / "tables" / "verdict.md").read_text()
    assert "A leads at selection" in (summary := (report / "summary.md").read_text())
    assert "ahead of every other method on test by a resolved margin" in summary
    assert "Holm over all 1 comparisons of the suite" in summary


def test_a_failed_seed_counts_at_chance_when_choosing_the_lr(tmp_path: Path) -> None:
    """LR 0.1 is best on two seeds but diverges on the third: at chance (10%) its mean falls below LR 0.01's."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return 0.90 if lr == 0.1 else 0.85

    write_synthetic_results(tmp_path, "d", ["A"], [0.5], [0.1, 0.01], [0, 1, 2], accuracy=acc, validation=acc,
                            statuses={("A", 0.5, 0.1, 2): "diverged"})
    (choice,) = select_lrs(load_results(tmp_path).runs, ["A"])
    assert choice.lr_selected == 0.01 and choice.acc.mean == pytest.approx(85.0)


def test_without_a_validation_split_the_choice_is_marked_optimistic(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "q", ["l1", "random"], [0.5, 0.9], [0.01, 0.001], [0, 1])
    write_reports(tmp_path, workers=1)
    report = tmp_path / "q" / "report"
    table = pd.read_csv(report / "tables" / "verdict.csv")
    assert set(table.selected_by) == {BY_TEST} and (table.regret == 0).all()
    summary = (report / "summary.md").read_text()
    assert "chosen on the test set (no validation split), which overstates every method" in summary
    assert summary.index("What this suite found") < summary.index("Verdict") < summary.index("Final test accuracy")


def test_the_headline_names_the_largest_lr_gap_and_chance(tmp_path: Path) -> None:
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        if method == "random" and lr == 0.001:
            return 0.11  # fell to chance (10 classes)
        return 0.80 - (0.05 if method == "l1" and lr == 0.001 else 0.0) + 0.001 * seed

    write_synthetic_results(tmp_path, "h", ["l1", "random"], [0.9], [0.01, 0.001], [0, 1, 2], accuracy=acc)
    runs = load_results(tmp_path).runs
    lines = headline(runs, ["l1", "random"])
    text = " ".join(lines)
    assert "The retraining LR alone moves accuracy by up to 69.1 points: random at ratio 0.9" in text
    assert "Fell to chance (10.0%" in text and "random at ratio 0.9, LR 0.001" in text
    assert "JSV just after pruning cannot be set against the LR gap: 2 point(s)" in text
    write_reports(tmp_path, workers=1)
    page = (tmp_path / "h" / "report" / "index.html").read_text()
    assert page.index("What this suite found") < page.index("<nav>")


def test_lrs_are_compared_on_the_seeds_that_finished_at_every_lr(tmp_path: Path) -> None:
    """Seed 2 is still running at LR 0.01; its LR-0.1 run is far better than the others. Counting it would pick
    LR 0.1 on the strength of a seed LR 0.01 never had; on the shared seeds 0 and 1, LR 0.01 is better."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        if lr == 0.1:
            return 0.95 if seed == 2 else 0.80
        return 0.82

    write_synthetic_results(tmp_path, "m", ["A"], [0.5], [0.1, 0.01], [0, 1, 2], accuracy=acc, validation=acc,
                            statuses={("A", 0.5, 0.01, 2): "running"})
    (choice,) = select_lrs(load_results(tmp_path).runs, ["A"])
    assert choice.lr_selected == 0.01 and choice.seeds_left_out == (2,) and choice.acc.n == 2
    assert "seed(s) 2 left out: not finished at every LR" in choice.notes


def test_the_grid_edge_is_each_methods_own_lrs(tmp_path: Path) -> None:
    """A swept 1, 0.1 and 0.01, B 0.01, 0.001 and 0.0001: LR 0.01 is A's lowest and B's highest, neither end of the
    union."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return 0.80 + (0.05 if lr == 0.01 else 0.0) + 0.001 * seed

    write_synthetic_results(tmp_path, "e", ["A"], [0.5], [1.0, 0.1, 0.01], [0, 1], accuracy=acc, validation=acc)
    write_synthetic_results(tmp_path, "e", ["B"], [0.5], [0.01, 0.001, 0.0001], [0, 1], accuracy=acc,
                            validation=acc)
    chosen = {s.method: s for s in select_lrs(load_results(tmp_path).runs, ["A", "B"])}
    assert chosen["A"].edge == "lowest LR swept for it" and chosen["B"].edge == "highest LR swept for it"


def test_with_two_lrs_the_grid_edge_is_said_once_per_suite(tmp_path: Path) -> None:
    """Issue 29: with two LRs every choice is an edge; the note is one sentence of the headline, not every row's."""
    write_synthetic_results(tmp_path, "two", ["A", "B"], [0.5, 0.9], [0.01, 0.001], [0, 1, 2], accuracy=clear_win,
                            validation=clear_win)
    write_reports(tmp_path, workers=1)
    report = tmp_path / "two" / "report"
    assert "outside the grid" not in (report / "tables" / "verdict.md").read_text()
    assert (report / "summary.md").read_text().count("every selected LR is at an edge of its grid") == 1


def clear_win(method: str, ratio: float, lr: float, seed: int) -> float:
    return (0.85 if method == "A" else 0.80 + 0.002 * (seed % 2)) + 0.001 * seed + 0.0003 * (seed * seed % 3)


def test_without_a_validation_split_nothing_is_resolved_or_bolded(tmp_path: Path) -> None:
    """The same clear win as above, but the LRs (and the reference) chosen on test: not assessed, not bolded."""
    write_synthetic_results(tmp_path, "t", ["A", "B"], [0.9], [0.01, 0.001], [0, 1, 2], accuracy=clear_win)
    (comparison,) = compare(select_lrs(load_results(tmp_path).runs, ["A", "B"]))
    assert comparison.p_holm < 0.05 and not comparison.assessed and not comparison.resolved
    write_reports(tmp_path, workers=1)
    report = tmp_path / "t" / "report"
    assert "**" not in (report / "tables" / "verdict.md").read_text()
    paired = (report / "tables" / "paired.md").read_text()
    assert "not assessed (LRs chosen on test)" in paired and "(resolved)" not in paired
    assert "not assessed: with the LRs chosen on the test set" in (report / "summary.md").read_text()


def test_seeds_for_power_are_counted_at_the_familys_level(tmp_path: Path) -> None:
    """Three methods at two ratios: four comparisons in one family, so the power advice is at alpha / 4 with the
    sd at its upper bound, and a comparison that is not resolved never reads "(resolved)"."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        noise = {"A": 0.0, "B": 0.004 * (seed % 2), "C": 0.01 * (seed % 2)}[method]
        return {"A": 0.85, "B": 0.845, "C": 0.83}[method] + noise + 0.001 * (seed == 2) * (method == "B")

    write_synthetic_results(tmp_path, "s", ["A", "B", "C"], [0.5, 0.9], [0.01], [0, 1, 2], accuracy=acc,
                            validation=acc)
    comparisons = compare(select_lrs(load_results(tmp_path).runs, ["A", "B", "C"]))
    assert len(comparisons) == 4 and {c.family for c in comparisons} == {4}
    for c in comparisons:
        assert c.seeds_needed == seeds_for_power(c.test.mean, sd_upper_bound(c.test.sd, 3), 0.05 / 4)
        assert c.seeds_needed >= seeds_for_power(c.test.mean, c.test.sd, 0.05)
    write_reports(tmp_path, workers=1)
    paired = pd.read_csv(tmp_path / "s" / "report" / "tables" / "paired.csv")
    md = (tmp_path / "s" / "report" / "tables" / "paired.md").read_text()
    assert md.count("(resolved)") == int(paired.resolved.sum())


def test_a_winner_is_bolded_only_when_it_beats_every_method(tmp_path: Path) -> None:
    """A beats the runner-up B clearly on every seed, but not the noisy C (lower mean, huge spread): the old
    rule (best against runner-up) bolded A; the one rule of the report (against every method, Holm) does not."""
    from bench.report.tables import resolved_best

    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        if method == "A":
            return 0.85 + 0.001 * seed
        if method == "B":
            return 0.84 + 0.001 * seed + 0.0002 * (seed % 2)
        return {0: 0.70, 1: 0.90, 2: 0.75}[seed]

    write_synthetic_results(tmp_path, "b", ["A", "B", "C"], [0.9], [0.01], [0, 1, 2], accuracy=acc)
    ok = load_results(tmp_path).runs
    assert resolved_best(ok[ok.status == "ok"], "0.9", 0.01) is None
    pair = ok[ok.method != "C"]
    assert resolved_best(pair[pair.status == "ok"], "0.9", 0.01) == "A"


# ----------------------------------------------------------------------------------------- issue 27's cases, end to end

def _report(tmp_path: Path, suite: str) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """`bench.py report` on the generated tree: the verdict and paired tables (csv), verdict.md and summary.md."""
    from bench.cli import main

    assert main(["report", "--results", str(tmp_path), "--workers", "1"]) == 0
    report = tmp_path / suite / "report"
    paired = report / "tables" / "paired.csv"
    return (pd.read_csv(report / "tables" / "verdict.csv"),
            pd.read_csv(paired) if paired.exists() else pd.DataFrame(),
            (report / "tables" / "verdict.md").read_text(), (report / "summary.md").read_text())


def _spread(seed: int) -> float:
    return 0.004 * ((seed * 7) % 5) / 4


def test_a_crash_leaves_the_lr_and_marks_the_cell_incomplete(tmp_path: Path) -> None:
    """Issue 27: one failed run (CUDA out of memory) at a seed of l1's best LR moved the LR to 0.001 and made tpp
    the resolved winner. Now the LR stays 0.01, l1 is incomplete with its error and nothing involving it resolves."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        if method == "l1":
            return (0.851 if lr == 0.01 else 0.801) + _spread(seed)
        return (0.80 if lr == 0.01 else 0.79) + _spread(seed + 1)

    write_synthetic_results(tmp_path, "crash", ["l1", "tpp"], [0.5], [0.01, 0.001], [0, 1, 2, 3, 4], accuracy=acc,
                            validation=acc, statuses={("l1", 0.5, 0.01, 2): "failed"})
    verdict, paired, verdict_md, summary = _report(tmp_path, "crash")
    l1 = verdict[verdict.method == "l1"].iloc[0]
    assert l1.lr_selected == 0.01 and bool(l1.incomplete) and l1.failed == 1 and l1.seeds_left_out == 2
    assert list(paired.state) == ["incomplete"] and not paired.resolved.any() and "**" not in verdict_md
    assert "l1 is incomplete: 1 run(s) failed (RuntimeError: CUDA out of memory" in summary
    assert "resolved margin" not in summary


def test_a_run_without_a_result_yet_marks_the_cell_incomplete(tmp_path: Path) -> None:
    """A running (or unreadable, corrupt, interrupted, pending) run is not a result: the comparison waits for it
    and names it, rather than resolving on the remaining seeds."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.851 if method == "l1" else 0.80) + _spread(seed)

    write_synthetic_results(tmp_path, "wait", ["l1", "tpp"], [0.5], [0.01], [0, 1, 2, 3, 4], accuracy=acc,
                            validation=acc, statuses={("tpp", 0.5, 0.01, 3): "running"})
    verdict, paired, verdict_md, summary = _report(tmp_path, "wait")
    tpp = verdict[verdict.method == "tpp"].iloc[0]
    assert bool(tpp.incomplete) and tpp.unfinished == 1 and tpp.failed == 0
    assert list(paired.state) == ["incomplete"] and "**" not in verdict_md
    assert "tpp is incomplete: 1 run(s) have no result yet (1 running; run ids" in summary
    assert "resolved margin" not in summary


def test_the_headline_names_the_method_that_is_ahead(tmp_path: Path) -> None:
    """Reference a (best on validation); b resolved behind it, c resolved ahead on test: the headline names c."""
    def val(method: str, ratio: float, lr: float, seed: int) -> float:
        return {"a": 0.86, "b": 0.80, "c": 0.84}[method] + _spread(seed)

    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return {"a": 0.84, "b": 0.80, "c": 0.87}[method] + _spread(seed + {"a": 0, "b": 1, "c": 2}[method])

    write_synthetic_results(tmp_path, "ahead", ["a", "b", "c"], [0.5], [0.01], [0, 1, 2, 3, 4], accuracy=acc,
                            validation=val)
    _, paired, verdict_md, summary = _report(tmp_path, "ahead")
    assert paired.set_index("method").state.to_dict() == {"b": "resolved", "c": "resolved"}
    assert "but c (LR 0.01) is ahead of it on test by a resolved margin (+3.00 points" in summary
    assert "It is" not in summary.split("ahead of it on test")[0][-200:]  # b is never called ahead
    assert "**" not in verdict_md  # a is not a winner: c beats it


def test_an_untuned_method_is_flagged_and_nothing_resolved(tmp_path: Path) -> None:
    """l1 finished one of its three LRs (the others still running): tpp's clear lead over it is not a verdict."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.85 if method == "tpp" else 0.75) + _spread(seed + (method == "tpp"))

    running = {("l1", 0.5, lr, s): "running" for lr in (0.1, 0.001) for s in range(5)}
    write_synthetic_results(tmp_path, "untuned", ["l1", "tpp"], [0.5], [0.1, 0.01, 0.001], [0, 1, 2, 3, 4],
                            accuracy=acc, validation=acc, statuses=running)
    verdict, paired, verdict_md, summary = _report(tmp_path, "untuned")
    assert verdict.set_index("method").untuned.to_dict()["l1"] == "0.1 0.001"
    assert list(paired.state) == ["untuned"] and "**" not in verdict_md
    assert "l1 is untuned (LRs missing: 0.1, 0.001): the comparison waits for those runs" in summary
    assert "untuned (LRs missing: 0.1, 0.001)" in verdict_md


def test_validation_ties_are_declared_never_broken_on_test(tmp_path: Path) -> None:
    def val(method: str, ratio: float, lr: float, seed: int) -> float:
        return 0.85 + _spread(seed)

    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.80 if method == "A" else 0.82) + _spread(seed + (method == "B"))

    write_synthetic_results(tmp_path, "tie", ["A", "B"], [0.5], [0.01], [0, 1, 2], accuracy=acc, validation=val)
    _, paired, _, summary = _report(tmp_path, "tie")
    assert list(paired.reference) == ["A"]  # method order, although B is higher on test
    assert "A and B tie on validation accuracy" in summary and "not broken on test" in summary


def test_diverged_seeds_are_counted_apart_and_never_t_tested(tmp_path: Path) -> None:
    """A diverges at one of five seeds of its best LR: its accuracy is over the four converged seeds (an interval
    inside [0, 100]), the divergence count is shown, and its comparison is not resolved by t."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.999 if method == "A" else 0.90) - 0.01 * (seed == 3) + _spread(seed) / 10

    write_synthetic_results(tmp_path, "div", ["A", "B"], [0.5], [0.01], [0, 1, 2, 3, 4], accuracy=lambda *k:
                            min(acc(*k), 1.0), validation=lambda *k: min(acc(*k), 1.0),
                            statuses={("A", 0.5, 0.01, 1): "diverged"})
    verdict, paired, verdict_md, summary = _report(tmp_path, "div")
    a = verdict.set_index("method").loc["A"]
    assert (a.converged, a.diverged) == (4, 1) and 0 <= a.ci_low and a.ci_high <= 100
    assert "1 of 5" in verdict_md and "–100.00)" in verdict_md.split("| A ")[1].split("\n")[0]  # clipped
    assert list(paired.state) == ["diverged seed: not tested by t"] and math.isnan(paired.p.iloc[0])
    assert "A diverged at 1 of 5 seeds at its selected LR 0.01" in summary


@pytest.mark.parametrize("seeds, accuracy", [
    ([0], lambda m, r, lr, s: 0.90 if m == "A" else 0.80),  # one seed
    ([0, 1], lambda m, r, lr, s: (0.90 if m == "A" else 0.80) + 0.01 * s),  # two seeds, sd 0 of the differences
    ([0, 1, 2], lambda m, r, lr, s: (0.90 if m == "A" else 0.80) + 0.01 * s)])  # three seeds, sd 0
def test_one_seed_or_no_spread_is_too_few_seeds(tmp_path: Path, seeds: list[int], accuracy) -> None:
    write_synthetic_results(tmp_path, "few", ["A", "B"], [0.5], [0.01], seeds, accuracy=accuracy, validation=accuracy)
    _, paired, verdict_md, summary = _report(tmp_path, "few")
    assert list(paired.state) == ["too few seeds"] and not paired.resolved.any() and "**" not in verdict_md
    assert "too few seeds to test" in summary


def test_a_method_that_fails_at_every_seed_stays_visible(tmp_path: Path) -> None:
    failed = {("bug", 0.5, 0.01, s): "failed" for s in range(3)}
    write_synthetic_results(tmp_path, "bug", ["A", "bug"], [0.5], [0.01], [0, 1, 2], accuracy=clear_win,
                            validation=clear_win, statuses=failed)
    verdict, _, verdict_md, summary = _report(tmp_path, "bug")
    assert "failed at every seed: RuntimeError: CUDA out of memory" in verdict_md
    assert "bug failed at every seed: RuntimeError: CUDA out of memory" in summary


def test_no_winner_is_declared_over_a_method_that_failed_at_every_seed(tmp_path: Path) -> None:
    """A beats B by a resolved margin, but bug failed at every seed and was never compared: no winner, no bold, and
    the headline names bug as what blocks it (issue 27: nothing involving a failed method is resolved)."""
    failed = {("bug", 0.5, 0.01, s): "failed" for s in range(3)}
    write_synthetic_results(tmp_path, "blocked", ["A", "B", "bug"], [0.5], [0.01], [0, 1, 2], accuracy=clear_win,
                            validation=clear_win, statuses=failed)
    verdict, paired, verdict_md, summary = _report(tmp_path, "blocked")
    assert list(paired.resolved) == [True]  # A against B is still resolved
    assert not verdict.winner.any() and "**" not in verdict_md
    assert "ahead of every other method on test by a resolved margin" not in summary
    assert "bug has no finished run here" in summary and "no winner is declared" in summary


def test_the_headline_and_the_paired_table_read_the_same_comparisons(tmp_path: Path) -> None:
    """Every resolved comparison of the table appears in the headline and nothing unresolved is called resolved,
    across a tree mixing a winner ratio and an unresolved one (one Holm family over both ratios)."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        lead = 0.05 if ratio == 0.5 else 0.001
        return (0.80 + lead if method == "A" else 0.80) + _spread(seed + (method == "B"))

    write_synthetic_results(tmp_path, "mix", ["A", "B"], [0.5, 0.9], [0.01], [0, 1, 2, 3, 4], accuracy=acc,
                            validation=acc)
    verdict, paired, verdict_md, summary = _report(tmp_path, "mix")
    assert set(paired.family) == {2}
    resolved = paired.set_index("ratio").resolved.to_dict()
    assert resolved == {0.5: True, 0.9: False}
    assert "At ratio 0.5" in summary and "ahead of every other method on test by a resolved margin" in summary
    assert summary.count("resolved margin") == 1 and "Holm over all 2 comparisons of the suite" in summary
    assert verdict[verdict.winner].method.tolist() == ["A"] and verdict_md.count("**") == 2
    assert "cannot resolve a difference smaller than" in summary


def test_index_html_renders_the_markdown_it_embeds(tmp_path: Path) -> None:
    write_synthetic_results(tmp_path, "q", ["l1", "random"], [0.5], [0.01, 0.001], [0, 1])
    write_reports(tmp_path, workers=1)
    page = (tmp_path / "q" / "report" / "index.html").read_text()
    assert "<code>validation: N</code>" in page and "`validation" not in page
    assert "<em>test</em>" in page and "*test*" not in page


def test_a_divergence_that_decides_an_lr_choice_resolves_nothing(tmp_path: Path) -> None:
    """A's LR 0.1 is its best on the converged seeds but diverges at one of five, so A is retrained at 0.01 (a
    diverged seed counts at chance): B, at its own 0.1, is then 2 points ahead on every seed. That lead is the
    divergence's doing, not the method's (a rare random divergence made it in verdict_calibration.py's null), so
    it is not resolved."""
    def acc(method: str, ratio: float, lr: float, seed: int) -> float:
        return (0.84 if lr == 0.1 else 0.82) + _spread(seed + (method == "B"))

    write_synthetic_results(tmp_path, "hinge", ["A", "B"], [0.5], [0.1, 0.01], [0, 1, 2, 3, 4], accuracy=acc,
                            validation=acc, statuses={("A", 0.5, 0.1, 3): "diverged"})
    verdict, paired, _, summary = _report(tmp_path, "hinge")
    assert verdict.set_index("method").lr_selected.to_dict() == {"A": 0.01, "B": 0.1}
    assert list(paired.state) == ["LR choice hinges on a divergence"] and not paired.resolved.any()
    assert "a diverged seed decided an LR choice" in summary
