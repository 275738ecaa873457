"""The fair verdict: each method retrained at the LR its *validation* accuracy picks, paired comparisons across seeds
with Holm's correction over the whole suite, and one list of findings that the headline, summary.md and the tables
all read, so no sentence can contradict a table.

Outcomes are told apart. A *diverged* run (the method's training broke: NaN or infinite loss) is a real result: it
counts at chance (100 / classes) when an LR is chosen, so an LR that breaks one seed does not win on the others, and
it is reported as a divergence count beside the accuracy over the converged seeds. A *failed* run (an exception, out
of memory, a lost node) is never the method's result: its cell is *incomplete*, named with its error, and nothing
involving it is resolved until `bench.py run` has redone it. A method that has not finished every LR of its grid at a
ratio is *untuned*: nothing involving it is resolved either.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bench.report.cells import LEVEL, Cell
from bench.report.comparison import (
    ALPHA,
    DIVERGED_PAIR,
    HINGES,
    INCOMPLETE,
    NOT_ASSESSED,
    NOT_RESOLVED,
    PI_SEEDS,
    RESOLVED,
    TOO_FEW,
    UNTUNED,
    Comparison,
    compare,
    format_p,
    winners,
)
from bench.report.findings import Finding, Gap, findings, jsv_gap_correlation, lr_gaps
from bench.report.selection import BY_TEST, BY_VALIDATION, Selection, outcomes, select_lrs, selected_by
from bench.report.stats import MIN_PAIRS, POWER, SD_BOUND_LEVEL
from bench.report.tables import KEY, Table

# The verdict's steps live beside it (selection, comparison, findings); their names stay reachable from here.
__all__ = ["ALPHA", "BY_TEST", "BY_VALIDATION", "DIVERGED_PAIR", "HINGES", "INCOMPLETE", "NOT_ASSESSED",
           "NOT_RESOLVED", "RESOLVED", "TOO_FEW", "UNTUNED", "Assessment", "Comparison", "Finding", "Gap", "Selection",
           "assess", "compare", "findings", "headline", "jsv_gap_correlation", "lr_gaps", "outcomes", "paired_table",
           "select_lrs", "selected_by", "verdict_table", "winners"]


@dataclass
class Assessment:
    """Everything the verdict decides for one suite: selections, comparisons (one Holm family), winners, findings."""

    selections: list[Selection]
    comparisons: list[Comparison]
    winners: dict[str, str]
    findings: list[Finding]
    by: str

    @property
    def headline(self) -> list[str]:
        return [f.text for f in self.findings]


def assess(runs: pd.DataFrame, methods: list[str],
           adjust: Callable[[list[Comparison]], list[Comparison]] | None = None) -> Assessment:
    """The one pass that decides the verdict and writes its findings; ``adjust`` re-judges the comparisons (an
    adaptively grown suite's group-sequential design, ``bench.report.rounds``) before winners and findings."""
    selections = select_lrs(runs, methods)
    comparisons = compare(selections)
    if adjust is not None:
        comparisons = adjust(comparisons)
    won = winners(selections, comparisons)
    by = selected_by(runs)
    return Assessment(selections, comparisons, won, findings(runs, selections, comparisons, won, by), by)


def headline(runs: pd.DataFrame, methods: list[str]) -> list[str]:
    """The headline's sentences: the findings' text, in order."""
    return assess(runs, methods).headline



def _ci(cell: Cell) -> tuple[float, float]:
    return cell.low, cell.high


def verdict_table(assessment: Assessment) -> Table:
    """Per ratio and method: the selected LR, test accuracy there over converged seeds (mean and interval inside
    [0, 100]), the runs' outcomes, the oracle LR and the regret."""
    selections, by = assessment.selections, assessment.by
    header = [(KEY, "ratio"), (KEY, "method"), ("selected LR", "lr"), ("selected LR", "test acc (%)"),
              ("selected LR", "diverged"), ("best LR on test", "lr"), ("best LR on test", "test acc (%)"),
              (KEY, "regret (points)"), (KEY, "seeds"), (KEY, "note")]
    bold_methods = assessment.winners
    expected = max((len(s.per_seed) for s in selections), default=0)
    rows, data, bold = [], [], set()
    for s in selections:
        seeds = len(s.per_seed)
        rows.append([s.ratio, s.method, _g(s.lr_selected), s.acc.text(expected) if seeds else "—",
                     f"{len(s.diverged_seeds)} of {seeds}" if seeds else "—", _g(s.lr_oracle), _pct(s.acc_oracle),
                     _pct(s.regret), str(seeds), s.notes])
        if bold_methods.get(s.ratio) == s.method:
            bold.add((len(rows) - 1, 3))
        low, high = _ci(s.acc)
        data.append({"ratio": s.ratio, "method": s.method, "lr_selected": s.lr_selected, "acc": s.acc.mean,
                     "ci_half": s.acc.half, "lr_oracle": s.lr_oracle, "acc_oracle": s.acc_oracle,
                     "regret": s.regret, "selected_by": by, "seeds": seeds, "selection_acc": s.score,
                     "edge_of_grid": s.edge, "seeds_left_out": " ".join(str(seed) for seed in s.seeds_left_out),
                     "winner": bold_methods.get(s.ratio) == s.method, "ci_low": low, "ci_high": high,
                     "converged": s.acc.n, "diverged": len(s.diverged_seeds), "failed": len(s.failed),
                     "unfinished": len(s.unfinished),
                     "untuned": " ".join(f"{lr:g}" for lr in s.missing_lrs), "incomplete": s.incomplete})
    if by == BY_VALIDATION:
        how = ("Each method is retrained at the LR with the best mean *validation* accuracy over seeds (a split held "
               "out of the training set: dataset option `validation`), and scored on the test set there.")
    else:
        how = ("No validation split: the LR was chosen on the *test* set itself, which overstates every method "
               "(the regret is zero by construction and the accuracy is the best of several looks at the test "
               "set). Add `validation: N` to the dataset options for an honest choice.")
    failure = ("chance (100/classes)" if any(s.failure_at > 0 for s in selections) else
               "0% (the results do not say how many classes there are, so chance is unknown)")
    note = (f"{how} Test accuracy is the mean over the seeds that converged, ± its {LEVEL:.0%} t-interval (shown as "
            "'(CI low–high)', clipped, where it would leave [0, 100]); 'diverged' counts the seeds whose training "
            "broke at that LR. "
            f"In choosing the LR (and in the regret) a diverged run counts at {failure}, so an LR that breaks a seed "
            "does not win on the others. A failed run (an exception, out of memory, a lost node) is never counted: "
            "the cell is incomplete until `bench.py run` redoes it; so is a cell with a run that has no result yet "
            "(running, interrupted, pending, corrupt or unreadable), until it finishes. A method without a finished "
            "run at every LR of its grid is untuned. LRs are compared on the seeds that finished at every LR of the "
            "method. 'Best LR on test' is the oracle's choice; the regret is what choosing without the test set cost, "
            "in points. Bold: a winner ahead of every other method by a paired difference resolved in the comparisons "
            "below, with no method at that ratio incomplete, untuned or failed everywhere.")
    return Table("verdict", f"Verdict: each method at its own retraining LR (selected on {by})", note, header, rows,
                 pd.DataFrame(data), bold)


def _g(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:g}"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def paired_table(assessment: Assessment) -> Table | None:
    """Every method against its ratio's reference: the mean paired test difference, its CI, p and Holm's p over the
    suite, the state, the seeds for 80% power and the probability of improvement."""
    comparisons = assessment.comparisons
    if not comparisons:
        return None
    sequential = comparisons[0].correction != "Holm"
    header = [(KEY, "ratio"), (KEY, "reference"), (KEY, "method"), ("method − reference (points)", "mean ± CI"),
              (KEY, "pairs"), (KEY, "p"), (KEY, "p (sequential, suite)" if sequential else "p (Holm, suite)"),
              (KEY, "verdict"),
              (KEY, f"seeds for {POWER:.0%} power"), (KEY, "P(method > reference)"), (KEY, "pairing")]
    rows, data, bold = [], [], set()
    for c in comparisons:
        t = c.test
        if t.n == 0:
            diff = "—"
        elif math.isnan(t.half) or t.n < 2:
            diff = f"{t.mean:+.2f}"
        else:
            low, high = max(t.mean - t.half, -100.0), min(t.mean + t.half, 100.0)
            diff = f"{t.mean:+.2f} ± {t.half:.2f}" if (low, high) == (t.mean - t.half, t.mean + t.half) else \
                f"{t.mean:+.2f} (CI {low:+.2f} to {high:+.2f})"
        if c.seeds_needed is None:
            needed = "—"
        elif c.resolved:
            needed = f"{t.n} (resolved)"
        else:
            needed = str(c.seeds_advised)
        pi, pi_low, pi_high = c.improvement
        pi_text = "—" if math.isnan(pi) else f"{pi:.2f}" + ("" if math.isnan(pi_low) else
                                                            f" [{pi_low:.2f}, {pi_high:.2f}]")
        rows.append([c.ratio, c.reference, c.method, diff, str(t.n), format_p(t.p), format_p(c.p_holm), c.state, needed,
                     pi_text, c.pairing])
        if c.resolved:
            bold.add((len(rows) - 1, 7))
        data.append({"ratio": c.ratio, "reference": c.reference, "method": c.method, "mean_diff": t.mean,
                     "ci_half": t.half, "pairs": t.n, "t": t.t, "p": t.p, "p_holm": c.p_holm,
                     "resolved": c.resolved, "assessed": c.assessed, "state": c.state,
                     "seeds_for_power": c.seeds_needed, "p_improvement": pi, "p_improvement_low": pi_low,
                     "p_improvement_high": pi_high, "family": c.family, "pairing": c.pairing})
    family = comparisons[0].family
    note = ("Per ratio, each method at its selected LR against the reference: the method with the best validation "
            "accuracy at its own selected LR (ties are declared and go to the method order, never to test). Seeds "
            "pair the runs: the same seed gives the same data order and, for methods sharing the common dense model, "
            "the same dense model; methods with their own dense training (e.g. rni, slimming, orthoreg's early-bird, "
            "scratch) pair by seed only, more weakly. Paired t-test (scipy.stats) on the per-seed test differences, "
            f"two-sided. The family: p (Holm, suite) corrects across all {family} tested comparisons of every ratio "
            f"of this suite, so 'resolved' (bold; p (Holm) < {ALPHA:g}) survives everything the headline states. "
            f"Fewer than {MIN_PAIRS} pairs or differences without spread are 'too few seeds'; a comparison across a "
            "diverged seed is not tested by t (bimodal data), nor one where a divergence decided a method's LR (its "
            "converged seeds alone would choose another); an untuned or incomplete method is never resolved; with the "
            f"LRs chosen on test nothing is assessed. 'Seeds for {POWER:.0%} power': the pairs the t-test at the "
            f"family's strictest level ({ALPHA:g}/{max(family, 1)}, Holm's first step) needs for {POWER:.0%} power "
            "against the observed difference, with the sd at its one-sided "
            f"{SD_BOUND_LEVEL:.0%} upper confidence bound (chi-square), noncentral t; none across a diverged seed or "
            f"below {MIN_PAIRS} pairs. P(method > reference): the probability of improvement as rliable defines it "
            f"(all run pairs, ties half) with a 95% percentile bootstrap interval, from {PI_SEEDS} seeds on.")
    if sequential:
        note += (" This suite grew its seeds in rounds, so these comparisons are judged by its group-sequential "
                 "design instead (see 'Seeds per cell'): 'p (sequential, suite)' is the stagewise-ordered p-value "
                 "times the planned family (Bonferroni), 'resolved' means the comparison crossed its alpha-spending "
                 "boundary at its look (the nominal 'p' alone never resolves), and the fixed-sample power column "
                 "is left empty: the design decides when seeds stop.")
    return Table("paired", "Paired comparisons against the best method", note, header, rows, pd.DataFrame(data), bold)
