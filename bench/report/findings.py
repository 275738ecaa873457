"""The verdict's findings: one list of sentences, written from the selections and comparisons the tables read, so
the headline and summary.md cannot contradict a table: per ratio who leads and what stands in the way of a verdict,
what the seed count can resolve, the LR gaps, who fell to chance and the JSV's relation to the gap."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.report.comparison import (
    ALPHA,
    DIVERGED_PAIR,
    HINGES,
    INCOMPLETE,
    NOT_RESOLVED,
    RESOLVED,
    TOO_FEW,
    UNTUNED,
    Comparison,
    format_p,
    reference_of,
)
from bench.report.plots import chance_percent
from bench.report.selection import BY_VALIDATION, Selection, outcomes, unfinished_words
from bench.report.stats import (
    EXACT_PERMUTATION_POINTS,
    MIN_PAIRS,
    POWER,
    SD_BOUND_LEVEL,
    sd_upper_bound,
    smallest_resolvable,
    spearman_rho,
)
from bench.report.tables import per_seed

CHANCE_MARGIN = 5.0  # points above chance at which a mean accuracy still counts as "fell to chance"
RHO_FEW = 10  # Spearman's rho over fewer points than this carries a caveat
FAMILY_WORDS = {"Holm": "Holm", "sequential": "group-sequential, Bonferroni"}  # Comparison.correction, in words


@dataclass(frozen=True)
class Finding:
    """One thing the suite found, with the sentence that says it: the headline and summary.md are these sentences,
    in order, and the tables read the same Selection and Comparison objects they were made from."""

    kind: str  # winner, ahead, lead, tie, untuned, incomplete, failed_everywhere, diverged, resolution, lr_gap,
    # chance, jsv, grid_edge, test_selected
    text: str
    ratio: str | None = None
    method: str | None = None
    data: dict = field(default_factory=dict)



def _ratio_findings(ratio: str, here: list[Selection], mine: list[Comparison], won: dict[str, str], by: str
                    ) -> list[Finding]:
    """The sentences about one ratio: who leads, whether it is resolved, what blocks a verdict."""
    out: list[Finding] = []
    ranked = [s for s in here if not math.isnan(s.score)]
    reference, tied = reference_of(ranked)
    family = mine[0].family
    chosen_on = "the validation split" if by == BY_VALIDATION else "the test set, optimistically"
    lead = (f"At ratio {ratio}, with each method retrained at its own LR (chosen on {chosen_on}), {reference.method} "
            f"leads at selection and scores {reference.acc.mean:.2f}% on test (LR {reference.lr_selected:g}")
    lead += f", {len(reference.diverged_seeds)} diverged seed(s) not in that mean)" if reference.diverged_seeds else ")"
    if tied:
        out.append(Finding("tie", f"At ratio {ratio}, {reference.method} and "
                           f"{', '.join(s.method for s in tied)} tie on {by} accuracy at their selected LRs "
                           f"({reference.score:.2f}%): a tie, not broken on test; {reference.method} is the "
                           "reference only by the report's method order.", ratio, reference.method))
    ahead = [c for c in mine if c.resolved and c.test.mean > 0]
    family_words = (f"{FAMILY_WORDS[mine[0].correction]} over all {family} comparisons of the suite" if family
                    else "no comparison could be tested")
    if not mine[0].assessed:
        weakest = max(mine, key=lambda c: c.p_holm if not math.isnan(c.p_holm) else math.inf)
        out.append(Finding("lead", lead + ": not assessed: with the LRs chosen on the test set the comparison would "
                           f"favour the leader (p Holm would be {format_p(weakest.p_holm)}).", ratio, reference.method))
    elif ratio in won:
        largest = max(c.p_holm for c in mine)
        out.append(Finding("winner", lead + f", ahead of every other method on test by a resolved margin "
                           f"(largest p {format_p(largest)}, {family_words}).", ratio, reference.method))
    elif ahead:
        best = max(ahead, key=lambda c: c.test.mean)
        out.append(Finding("ahead", lead + f"; but {best.method} (LR {_lr(here, best.method)}) is ahead of it on "
                           f"test by a resolved margin ({best.test.mean:+.2f} points, p {format_p(best.p_holm)}, "
                           f"{family_words}), so the method chosen at selection does not win.", ratio, best.method))
    else:
        # Speak of what stands most in the way: a comparison waiting for runs, then one no test can make, then the
        # least resolved (highest Holm p).
        priority = {INCOMPLETE: 0, UNTUNED: 1, DIVERGED_PAIR: 2, HINGES: 3, TOO_FEW: 4, NOT_RESOLVED: 5, RESOLVED: 6}
        weakest = min(mine, key=lambda c: (priority[c.state], -(c.p_holm if not math.isnan(c.p_holm) else 1.0)))
        rival = next(s for s in here if s.method == weakest.method)
        diff = weakest.test.mean
        standing = ("—" if math.isnan(diff) else f"{abs(diff):.2f} points behind it" if diff <= 0 else
                    f"{diff:.2f} points ahead of it on test")
        if weakest.state == NOT_RESOLVED:
            reason = f"not resolved (p {format_p(weakest.p_holm)}, {family_words}"
            reason += (f"; a difference of this size needs about {weakest.seeds_advised} seeds for {POWER:.0%} power)"
                       if weakest.seeds_advised else ")")
        elif weakest.state == TOO_FEW:
            reason = (f"too few seeds to test ({weakest.test.n} paired, and at least {MIN_PAIRS} with some spread "
                      "are needed)")
        elif weakest.state == DIVERGED_PAIR:
            reason = "not resolved: a diverged seed makes the accuracies bimodal, so no t-test is made"
        elif weakest.state == HINGES:
            reason = ("not resolved: a diverged seed decided an LR choice (the converged seeds alone would choose "
                      "another LR), so the difference may be the divergence's, not the method's")
        elif weakest.state == RESOLVED:  # every comparison made is resolved behind it, but a method was never compared
            never = [s.method for s in here if math.isnan(s.score)]
            reason = (f"resolved, but {', '.join(never)} has no finished run here (failed at every seed or not run) "
                      "and was never compared, so no winner is declared (below)")
        elif weakest.state == INCOMPLETE:
            reason = "not resolved: a run failed or has no result yet (below)"
        else:
            reason = "not resolved: untuned, the comparison waits for runs (below)"
        resolved_behind = [c.method for c in mine if c.resolved and c.test.mean < 0]
        behind = (f" It is resolved ahead of {', '.join(resolved_behind)}." if resolved_behind else "")
        out.append(Finding("lead", lead + f"; {rival.method} (LR {_lr(here, rival.method)}) is {standing}: "
                           f"{reason}.{behind}", ratio, reference.method))
    for s in here:
        if s.runs_failed_all:
            out.append(Finding("failed_everywhere", f"At ratio {ratio}, {s.method} failed at every seed: "
                               f"{s.failed[0][1]} (a bug or a resource problem, not a result; fix it and run the "
                               "suite again).", ratio, s.method))
        elif s.failed:
            ids = ", ".join(r for r, _ in s.failed[:4]) + (", ..." if len(s.failed) > 4 else "")
            out.append(Finding("incomplete", f"At ratio {ratio}, {s.method} is incomplete: {len(s.failed)} run(s) "
                               f"failed ({s.failed[0][1]}; run ids {ids}); a failure is not the method's result, "
                               "so nothing involving it is resolved until `bench.py run` has redone them.",
                               ratio, s.method, {"runs": [r for r, _ in s.failed]}))
        if s.unfinished:
            ids = ", ".join(r for r, _ in s.unfinished[:4]) + (", ..." if len(s.unfinished) > 4 else "")
            out.append(Finding("incomplete", f"At ratio {ratio}, {s.method} is incomplete: {len(s.unfinished)} run(s) "
                               f"have no result yet ({unfinished_words(s)}; run ids {ids}); nothing involving it is "
                               "resolved until they finish (`bench.py run` resumes or redoes them; an unreadable "
                               "result needs its owner to fix its permissions).", ratio, s.method,
                               {"runs": [r for r, _ in s.unfinished]}))
        if s.untuned and not s.runs_failed_all:
            out.append(Finding("untuned", f"At ratio {ratio}, {s.method} is untuned (LRs missing: "
                               f"{', '.join(f'{lr:g}' for lr in s.missing_lrs)}): the comparison waits for those "
                               "runs.", ratio, s.method))
        if s.diverged_seeds:
            out.append(Finding("diverged", f"At ratio {ratio}, {s.method} diverged at {len(s.diverged_seeds)} of "
                               f"{len(s.per_seed)} seeds at its selected LR {s.lr_selected:g}: its accuracy there is "
                               "over the converged seeds, and no t-test is made across a diverged seed.",
                               ratio, s.method))
    return out


def _lr(here: list[Selection], method: str) -> str:
    return f"{next(s for s in here if s.method == method).lr_selected:g}"


def findings(runs: pd.DataFrame, selections: list[Selection], comparisons: list[Comparison], won: dict[str, str],
             by: str) -> list[Finding]:
    """The suite's findings, in reading order: per ratio the verdict and what blocks it, then what the seed count
    can resolve, the LR gaps, who fell to chance, the JSV's relation to the gap and how the LRs were chosen."""
    out: list[Finding] = []
    for ratio in dict.fromkeys(s.ratio for s in selections):
        here = [s for s in selections if s.ratio == ratio]
        mine = [c for c in comparisons if c.ratio == ratio]
        if mine:
            out += _ratio_findings(ratio, here, mine, won, by)
        else:
            for s in here:
                if s.runs_failed_all:
                    out.append(Finding("failed_everywhere", f"At ratio {ratio}, {s.method} failed at every seed: "
                                       f"{s.failed[0][1]}.", ratio, s.method))
    tested = [c for c in comparisons if c.test.n >= MIN_PAIRS and c.test.sd > 0]
    if tested and tested[0].correction == "Holm":  # a fixed-sample statement: a grown suite's design says its own
        n = int(np.median([c.test.n for c in tested]))
        pooled = math.sqrt(float(np.mean([c.test.sd ** 2 for c in tested])))
        family = tested[0].family
        floor = smallest_resolvable(sd_upper_bound(pooled, n), n, ALPHA / max(family, 1))
        if math.isfinite(floor):
            out.append(Finding("resolution", f"With {n} seeds and the paired spread seen here (pooled sd "
                               f"{pooled:.2f} points; its one-sided {SD_BOUND_LEVEL:.0%} upper bound "
                               f"{sd_upper_bound(pooled, n):.2f}), this suite cannot resolve a difference smaller "
                               f"than {floor:.2f} points with {POWER:.0%} power at its family's level "
                               f"({ALPHA:g}/{family}).", data={"floor": floor, "seeds": n}))
    out += _lr_findings(runs)
    grids = {s.grid for s in selections if s.grid}
    if grids and all(len(g) == 2 for g in grids):
        out.append(Finding("grid_edge", "Every method swept two retraining LRs, so every selected LR is at an edge "
                           "of its grid: the best LR may lie outside it (sweep a third LR to tell)."))
    if by != BY_VALIDATION:
        out.append(Finding("test_selected", "These LRs were chosen on the test set (no validation split), which "
                           "overstates every method; set `validation: N` in the dataset options."))
    return out


def _lr_findings(runs: pd.DataFrame) -> list[Finding]:
    out = []
    gaps = lr_gaps(runs)
    if gaps and max(g.gap for g in gaps) < 0.005:
        out.append(Finding("lr_gap", "The retraining LR does not move any method's mean test accuracy here (gap: "
                           "best minus worst mean over its LRs)."))
    elif gaps:
        top = max(gaps, key=lambda g: g.gap)
        per_method: dict[str, Gap] = {}
        for g in gaps:
            if g.method not in per_method or g.gap > per_method[g.method].gap:
                per_method[g.method] = g
        others = ", ".join(f"{g.method} {g.gap:.1f}" for g in sorted(per_method.values(), key=lambda g: -g.gap))
        out.append(Finding("lr_gap", f"The retraining LR alone moves accuracy by up to {top.gap:.1f} points: "
                           f"{top.method} at ratio {top.ratio} ({top.acc_best:.2f}% at LR {top.lr_best:g}, "
                           f"{top.acc_worst:.2f}% at LR {top.lr_worst:g}). Largest gap per method, in points: "
                           f"{others}. (Gap here: a method's best minus worst mean test accuracy over all its LRs, "
                           "diverged runs at chance; the learning-rate gap table pairs a high with a low LR over the "
                           "seeds that finished both.) The bias can show as such a gap without any change of "
                           "winner.", top.ratio, top.method))
    chance = chance_percent(runs)
    if not math.isnan(chance):
        test = outcomes(runs, "acc_final")
        means = test.groupby(["ratio", "method", "lr"], sort=False).value.mean()
        fallen = [f"{m} at ratio {r}, LR {lr:g} ({v:.1f}%)" for (r, m, lr), v in means.items()
                  if v <= chance + CHANCE_MARGIN]
        if fallen:
            out.append(Finding("chance", f"Fell to chance ({chance:.1f}%, within {CHANCE_MARGIN:g} points): "
                               + "; ".join(fallen) + "."))
    rho, p, n = jsv_gap_correlation(runs, gaps)
    if n:
        if math.isnan(rho):
            out.append(Finding("jsv", f"The JSV just after pruning cannot be set against the LR gap: {n} point(s) "
                               "(method × ratio) with both, too few or all alike."))
        else:
            reading = ("a low JSV goes with a large gap" if rho < -0.3 else
                       "a high JSV goes with a large gap" if rho > 0.3 else "no clear relation")
            caveat = (f"; with fewer than {RHO_FEW} points even a large ρ is weak evidence" if n < RHO_FEW else "")
            significant = "" if p < ALPHA else ", not significant"
            out.append(Finding("jsv", f"Does the JSV just after pruning predict the LR gap? Spearman ρ = {rho:+.2f} "
                               f"across {n} (method × ratio) points, {permutation_words(n)} = {p:.3f}"
                               f"{significant}: {reading}{caveat}.", data={"rho": rho, "p": p, "n": n}))
    return out



def permutation_words(n: int) -> str:
    """How Spearman's p over ``n`` points was found: exact up to EXACT_PERMUTATION_POINTS, else resampled."""
    return "exact permutation p" if n <= EXACT_PERMUTATION_POINTS else "permutation p (9,999 resamples)"


@dataclass
class Gap:
    """How far one method's mean test accuracy moves with the retraining LR at one ratio."""

    ratio: str
    method: str
    gap: float
    lr_best: float
    acc_best: float
    lr_worst: float
    acc_worst: float


def lr_gaps(runs: pd.DataFrame) -> list[Gap]:
    """Per ratio and method with two or more LRs: best minus worst mean test accuracy over the LRs (diverged runs at
    chance, failed runs left out)."""
    test = outcomes(runs, "acc_final")
    gaps = []
    for (ratio, method), group in test.groupby(["ratio", "method"], sort=False):
        means = group.groupby("lr").value.mean()
        if len(means) < 2:
            continue
        best, worst = means.idxmax(), means.idxmin()
        gaps.append(Gap(ratio, method, float(means[best] - means[worst]), float(best), float(means[best]),
                        float(worst), float(means[worst])))
    return gaps



def jsv_gap_correlation(runs: pd.DataFrame, gaps: list[Gap]) -> tuple[float, float, int]:
    """Spearman's ρ between the mean JSV just after pruning and the LR gap over (method, ratio) points, its
    permutation p-value (exact up to EXACT_PERMUTATION_POINTS points) and the number of points."""
    jsv = per_seed(runs[["ratio", "method", "seed", "jsv_pruned"]], "jsv_pruned")
    jsv = jsv.groupby(["ratio", "method"]).jsv_pruned.mean()
    pairs = [(jsv[(g.ratio, g.method)], g.gap) for g in gaps if (g.ratio, g.method) in jsv.index]
    if not pairs:
        return math.nan, math.nan, 0
    x, y = np.array(pairs).T
    return spearman_rho(x, y)
