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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.report.plots import chance_percent
from bench.report.stats import (
    MIN_PAIRS,
    POWER,
    SD_BOUND_LEVEL,
    PairedTest,
    holm,
    paired_differences,
    paired_t_test,
    probability_of_improvement,
    sd_upper_bound,
    seeds_for_power,
    smallest_resolvable,
    spearman_rho,
)
from bench.report.tables import KEY, LEVEL, Cell, Table, per_seed, ratio_order

ALPHA = 0.05  # family-wise error rate over every comparison the verdict states (all ratios of a suite)
CHANCE_MARGIN = 5.0  # points above chance at which a mean accuracy still counts as "fell to chance"
PI_SEEDS = 5  # the probability of improvement is shown from this many seeds on
RHO_FEW = 10  # Spearman's rho over fewer points than this carries a caveat
BY_VALIDATION = "validation"
BY_TEST = "test (optimistic)"
FINISHED = ("ok", "diverged")  # an outcome of the method; anything else is not its result
UNFINISHED = ("running", "unknown", "corrupt", "interrupted", "pending")  # no outcome yet
RESOLVED, NOT_RESOLVED, TOO_FEW = "resolved", "not resolved", "too few seeds"
HINGES = "LR choice hinges on a divergence"
DIVERGED_PAIR, UNTUNED, INCOMPLETE, NOT_ASSESSED = ("diverged seed: not tested by t", "untuned", "incomplete",
                                                    "not assessed (LRs chosen on test)")


def outcomes(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per run that ended as the method's result (ok or diverged): ``column`` in percent, a diverged run at chance
    (or 0 when the number of classes is unknown). Failed runs are infrastructure's, never counted."""
    done = runs[runs.status.isin(FINISHED)]
    chance = chance_percent(runs)
    values = pd.to_numeric(done[column]).astype(float) * 100
    value = values.where(done.status == "ok", chance if not math.isnan(chance) else 0.0)
    return done[["ratio", "method", "lr", "seed", "dense_id", "status"]].assign(value=value.to_numpy())


def selected_by(runs: pd.DataFrame) -> str:
    """'validation' when every finished run measured the validation split, else 'test (optimistic)'."""
    ok = runs[runs.status == "ok"]
    return BY_VALIDATION if len(ok) and ok.acc_val_final.notna().all() else BY_TEST


def _first_line(error: object) -> str:
    text = str(error).strip().splitlines()[0] if isinstance(error, str) and error.strip() else "no error recorded"
    return text[:160]


@dataclass
class Selection:
    """One method at one ratio, retrained at its selected LR, with what its runs' outcomes allow to be said."""

    ratio: str
    method: str
    lr_selected: float
    acc: Cell  # test accuracy (%) at the selected LR over the *converged* seeds, inside [0, 100]
    score: float  # the mean selection accuracy (%) at the selected LR, diverged seeds at chance
    lr_oracle: float
    acc_oracle: float
    regret: float  # points: the oracle's accuracy minus the selected LR's (diverged seeds at chance in both)
    edge: str  # "" or which end of this method's swept LRs the selected LR sits at (grids of three or more LRs)
    per_seed: pd.Series  # seed -> test accuracy (%) at the selected LR, a diverged seed at chance
    dense_ids: pd.Series  # seed -> the dense model the run started from
    by: str = BY_VALIDATION
    seeds_left_out: tuple[int, ...] = ()  # seeds without a finished run at every LR: not used to compare LRs
    failure_at: float = math.nan  # the accuracy (%) a diverged run counts at: chance, or 0 when unknown
    diverged_seeds: tuple[int, ...] = ()  # at the selected LR
    failed: tuple[tuple[str, str], ...] = ()  # (run id, first line of the error) of every failed run here
    runs_failed_all: bool = False  # every run of the method at this ratio failed
    missing_lrs: tuple[float, ...] = ()  # LRs of the grid with no finished run: the method is untuned
    grid: tuple[float, ...] = ()
    counts: dict[float, dict[str, int]] = field(default_factory=dict)  # lr -> status -> runs
    lr_without_divergence: float = math.nan  # the LR the converged seeds alone would choose, where it differs

    @property
    def untuned(self) -> bool:
        return bool(self.missing_lrs)

    @property
    def incomplete(self) -> bool:
        return bool(self.failed)

    @property
    def notes(self) -> str:
        """What a reader must know about this choice, in words ("" when nothing)."""
        parts = []
        if self.runs_failed_all:
            parts.append(f"failed at every seed: {self.failed[0][1]}")
        elif self.failed:
            parts.append(f"incomplete: {len(self.failed)} failed run(s) to rerun ({self.failed[0][1]})")
        if self.untuned and not self.runs_failed_all:
            parts.append("untuned (LRs missing: " + ", ".join(f"{lr:g}" for lr in self.missing_lrs) + ")")
        if self.diverged_seeds:
            parts.append(f"{len(self.diverged_seeds)} of {len(self.per_seed)} seeds diverged at this LR "
                         "(accuracy over the converged seeds)")
        if not math.isnan(self.lr_without_divergence):
            parts.append(f"the LR choice hinges on a divergence (the converged seeds alone choose LR "
                         f"{self.lr_without_divergence:g})")
        if self.edge:
            parts.append(f"the best LR may lie outside the grid ({self.edge})")
        if self.seeds_left_out:
            seeds = ", ".join(str(s) for s in self.seeds_left_out)
            parts.append(f"seed(s) {seeds} left out: not finished at every LR")
        return "; ".join(parts)


def _grid_counts(runs: pd.DataFrame, ratio: str, method: str) -> dict[float, dict[str, int]]:
    mine = runs[(runs.ratio == ratio) & (runs.method == method)]
    return {float(lr): {str(k): int(v) for k, v in g.status.value_counts().items()}
            for lr, g in mine.groupby("lr")}


def select_lrs(runs: pd.DataFrame, methods: list[str]) -> list[Selection]:
    """For every ratio and method: the retraining LR with the best mean selection accuracy over seeds (a diverged
    seed at chance), the test accuracy there, the LR the test set would have chosen (ties go to the higher LR), and
    the method's outcomes: failed runs (incomplete), LRs of its grid without a finished run (untuned), divergences.

    LRs are compared on the same seeds: only seeds with a finished run at every finished LR count (the others are
    named), unless no seed has them all, when each LR's mean uses its own seeds (said in the note)."""
    by = selected_by(runs)
    test = outcomes(runs, "acc_final")
    score = outcomes(runs, "acc_val_final" if by == BY_VALIDATION else "acc_final")
    chance = chance_percent(runs)
    failure_at = chance if not math.isnan(chance) else 0.0
    chosen = []
    for ratio in ratio_order(runs):
        for method in methods:
            everything = runs[(runs.ratio == ratio) & (runs.method == method)]
            if everything.empty:
                continue
            failed_runs = everything[everything.status == "failed"].sort_values(["lr", "seed"])
            failed = tuple((str(r.run_id), _first_line(r.error)) for r in failed_runs.itertuples())
            grid = tuple(sorted(float(lr) for lr in everything.lr.dropna().unique()))
            mine = (test.ratio == ratio) & (test.method == method)
            finished_lrs = set(test[mine].lr.astype(float))
            missing = tuple(sorted((lr for lr in grid if lr not in finished_lrs), reverse=True))
            counts = _grid_counts(runs, ratio, method)
            if not mine.any():  # nothing finished: still shown, with why
                empty = pd.Series(dtype=float)
                chosen.append(Selection(ratio, method, math.nan, Cell(math.nan, math.nan, 0), math.nan, math.nan,
                                        math.nan, math.nan, "", empty, empty, by, (), failure_at, (), failed,
                                        len(failed) == len(everything), missing, grid, counts))
                continue
            seeds_by_lr = test[mine].groupby("lr").seed.apply(set)
            common = set.intersection(*seeds_by_lr)
            left_out = tuple(sorted(set.union(*seeds_by_lr) - common)) if common else ()
            if common:
                mine &= test.seed.isin(common)
            score_means = score[mine].groupby("lr").value.mean().sort_index(ascending=False)
            test_means = test[mine].groupby("lr").value.mean().sort_index(ascending=False)
            lr, oracle = float(score_means.idxmax()), float(test_means.idxmax())
            at = test[mine & (test.lr == lr)].set_index("seed").sort_index()
            diverged = tuple(int(s) for s in at.index[at.status != "ok"])
            edge = ""
            if len(grid) > 2 and lr == grid[-1]:
                edge = "highest LR swept for it"
            elif len(grid) > 2 and lr == grid[0]:
                edge = "lowest LR swept for it"
            if not common:
                edge = (edge + "; " if edge else "") + "no seed finished at every LR: LRs compared on different seeds"
            converged = Cell.of(at.value[at.status == "ok"], bounds=(0.0, 100.0))
            # Would the converged seeds alone choose another LR? Then a divergence decided the choice: a rare,
            # random divergence must not make a method look worse by a resolved margin (verdict_calibration.py).
            ok_scores = score[mine & (score.status == "ok")].groupby("lr").value.mean()
            alone = float(ok_scores.idxmax()) if len(ok_scores) else lr
            hinge = alone if alone != lr and (test[mine].status != "ok").any() else math.nan
            chosen.append(Selection(ratio, method, lr, converged, float(score_means[lr]), oracle,
                                    float(test_means[oracle]), float(test_means[oracle] - test_means[lr]), edge,
                                    at.value, at.dense_id, by, left_out, failure_at, diverged, failed, False,
                                    missing, grid, counts, hinge))
    return chosen


@dataclass
class Comparison:
    """One method against its ratio's reference, each at its own selected LR, paired by seed."""

    ratio: str
    reference: str
    method: str
    test: PairedTest  # of (method - reference), points; p NaN where no t-test may be made
    p_holm: float  # Holm across every comparison of the suite that has a p-value (the family)
    pairing: str
    state: str  # RESOLVED, NOT_RESOLVED, TOO_FEW, DIVERGED_PAIR, UNTUNED, INCOMPLETE or NOT_ASSESSED
    seeds_needed: int | None = None  # pairs for 80% power at the family's strictest level, sd at its upper bound
    improvement: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # P(method > reference), its CI
    family: int = 0

    @property
    def resolved(self) -> bool:
        return self.state == RESOLVED

    @property
    def assessed(self) -> bool:
        return self.state != NOT_ASSESSED


def _reference(here: list[Selection]) -> tuple[Selection, list[Selection]]:
    """The best validation score at its selected LR; ties are ties (the first in method order is the reference)."""
    best = max(s.score for s in here)
    tied = [s for s in here if abs(s.score - best) <= 1e-9]
    return tied[0], tied[1:]


def compare(selections: list[Selection]) -> list[Comparison]:
    """Per ratio, every method against the reference (the best *validation* accuracy at its selected LR; ties go
    to the report's method order and are declared), paired by seed. One family: Holm across every comparison of
    every ratio that has a p-value, so each "resolved" survives everything the verdict states."""
    drafts = []
    for ratio in dict.fromkeys(s.ratio for s in selections):
        here = [s for s in selections if s.ratio == ratio and not math.isnan(s.score)]
        if len(here) < 2:
            continue
        reference, _ = _reference(here)
        for other in (s for s in here if s is not reference):
            differences = paired_differences(other.per_seed, reference.per_seed)
            seeds = other.per_seed.index.intersection(reference.per_seed.index)
            shared = bool(len(seeds)) and bool((other.dense_ids[seeds] == reference.dense_ids[seeds]).all())
            pairing = "same seed, same dense model" if shared else "same seed only (own dense training)"
            diverged = bool(set(other.diverged_seeds) | set(reference.diverged_seeds))
            test = paired_t_test(differences, LEVEL)
            if diverged:  # bimodal data: no t-test, no t-interval
                test = PairedTest(test.mean, math.nan, math.nan, math.nan, test.n, math.nan)
            elif test.too_few:
                test = PairedTest(test.mean, test.half, math.nan, math.nan, test.n, test.sd)
            improvement = (probability_of_improvement(other.per_seed[seeds], reference.per_seed[seeds])
                           if len(seeds) >= PI_SEEDS else (math.nan, math.nan, math.nan))
            drafts.append((ratio, reference, other, test, pairing, diverged, improvement))
    adjusted = holm([d[3].p for d in drafts])
    family = sum(not math.isnan(d[3].p) for d in drafts)
    out = []
    for (ratio, reference, other, test, pairing, diverged, improvement), p_holm in zip(drafts, adjusted):
        if reference.by != BY_VALIDATION:
            state = NOT_ASSESSED
        elif reference.incomplete or other.incomplete:
            state = INCOMPLETE
        elif reference.untuned or other.untuned:
            state = UNTUNED
        elif diverged:
            state = DIVERGED_PAIR
        elif not (math.isnan(reference.lr_without_divergence) and math.isnan(other.lr_without_divergence)):
            state = HINGES
        elif test.too_few:
            state = TOO_FEW
        else:
            state = RESOLVED if p_holm < ALPHA else NOT_RESOLVED
        needed = None
        if not diverged and test.n >= MIN_PAIRS and test.sd > 0:
            needed = seeds_for_power(test.mean, sd_upper_bound(test.sd, test.n), ALPHA / max(family, 1))
        out.append(Comparison(ratio, reference.method, other.method, test, p_holm, pairing, state, needed,
                              improvement, family))
    return out


def winners(selections: list[Selection], comparisons: list[Comparison]) -> dict[str, str]:
    """Ratio -> the reference method, only where it is ahead of every other method on test by a resolved paired
    difference: the only case in which the report bolds a winner."""
    result = {}
    for ratio in dict.fromkeys(c.ratio for c in comparisons):
        mine = [c for c in comparisons if c.ratio == ratio]
        if all(c.resolved and c.test.mean < 0 for c in mine):
            result[ratio] = mine[0].reference
    return result


# ----------------------------------------------------------------------------------------- findings

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


def assess(runs: pd.DataFrame, methods: list[str]) -> Assessment:
    """The one pass that decides the verdict and writes its findings."""
    selections = select_lrs(runs, methods)
    comparisons = compare(selections)
    won = winners(selections, comparisons)
    by = selected_by(runs)
    return Assessment(selections, comparisons, won, findings(runs, selections, comparisons, won, by), by)


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ratio_findings(ratio: str, here: list[Selection], mine: list[Comparison], won: dict[str, str], by: str
                    ) -> list[Finding]:
    """The sentences about one ratio: who leads, whether it is resolved, what blocks a verdict."""
    out: list[Finding] = []
    ranked = [s for s in here if not math.isnan(s.score)]
    reference, tied = _reference(ranked)
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
    family_words = f"Holm over all {family} comparisons of the suite" if family else "no comparison could be tested"
    if not mine[0].assessed:
        weakest = max(mine, key=lambda c: c.p_holm if not math.isnan(c.p_holm) else math.inf)
        out.append(Finding("lead", lead + ": not assessed: with the LRs chosen on the test set the comparison would "
                           f"favour the leader (p Holm would be {_p(weakest.p_holm)}).", ratio, reference.method))
    elif ratio in won:
        largest = max(c.p_holm for c in mine)
        out.append(Finding("winner", lead + f", ahead of every other method on test by a resolved margin "
                           f"(largest p {_p(largest)}, {family_words}).", ratio, reference.method))
    elif ahead:
        best = max(ahead, key=lambda c: c.test.mean)
        out.append(Finding("ahead", lead + f"; but {best.method} (LR {_lr(here, best.method)}) is ahead of it on "
                           f"test by a resolved margin ({best.test.mean:+.2f} points, p {_p(best.p_holm)}, "
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
            reason = f"not resolved (p {_p(weakest.p_holm)}, {family_words}"
            reason += (f"; a difference of this size needs about {weakest.seeds_needed} seeds for {POWER:.0%} power)"
                       if weakest.seeds_needed else ")")
        elif weakest.state == TOO_FEW:
            reason = (f"too few seeds to test ({weakest.test.n} paired, and at least {MIN_PAIRS} with some spread "
                      "are needed)")
        elif weakest.state == DIVERGED_PAIR:
            reason = "not resolved: a diverged seed makes the accuracies bimodal, so no t-test is made"
        elif weakest.state == HINGES:
            reason = ("not resolved: a diverged seed decided an LR choice (the converged seeds alone would choose "
                      "another LR), so the difference may be the divergence's, not the method's")
        elif weakest.state == INCOMPLETE:
            reason = "not resolved: a run failed and must be redone (below)"
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
        elif s.incomplete:
            ids = ", ".join(r for r, _ in s.failed[:4]) + (", ..." if len(s.failed) > 4 else "")
            out.append(Finding("incomplete", f"At ratio {ratio}, {s.method} is incomplete: {len(s.failed)} run(s) "
                               f"failed ({s.failed[0][1]}; run ids {ids}); a failure is not the method's result, "
                               "so nothing involving it is resolved until `bench.py run` has redone them.",
                               ratio, s.method, {"runs": [r for r, _ in s.failed]}))
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
    if tested:
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
                               f"across {n} (method × ratio) points, exact permutation p = {p:.3f}"
                               f"{significant}: {reading}{caveat}.", data={"rho": rho, "p": p, "n": n}))
    return out


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
            "the cell is incomplete until `bench.py run` redoes it. A method without a finished run at every LR of "
            "its grid is untuned. LRs are compared on the seeds that finished at every LR of the method. 'Best LR on "
            "test' is the oracle's choice; the regret is what choosing without the test set cost, in points. Bold: "
            "a winner ahead of every other method by a paired difference resolved in the comparisons below.")
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
    header = [(KEY, "ratio"), (KEY, "reference"), (KEY, "method"), ("method − reference (points)", "mean ± CI"),
              (KEY, "pairs"), (KEY, "p"), (KEY, "p (Holm, suite)"), (KEY, "verdict"),
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
            needed = str(max(c.seeds_needed, t.n + 1))
        pi, pi_low, pi_high = c.improvement
        pi_text = "—" if math.isnan(pi) else f"{pi:.2f}" + ("" if math.isnan(pi_low) else
                                                            f" [{pi_low:.2f}, {pi_high:.2f}]")
        rows.append([c.ratio, c.reference, c.method, diff, str(t.n), _p(t.p), _p(c.p_holm), c.state, needed,
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
            f"of this suite, so 'resolved' (p (Holm) < {ALPHA:g}) survives everything the headline states. Fewer than "
            f"{MIN_PAIRS} pairs or differences without spread are 'too few seeds'; a comparison across a diverged "
            "seed is not tested by t (bimodal data), nor one where a divergence decided a method's LR (its converged "
            "seeds alone would choose another); an untuned or incomplete method is never resolved; with the "
            f"LRs chosen on test nothing is assessed. 'Seeds for {POWER:.0%} power': the pairs the t-test at the "
            f"family's strictest level ({ALPHA:g}/{max(family, 1)}, Holm's first step) needs for {POWER:.0%} power "
            "against the observed difference, with the sd at its one-sided "
            f"{SD_BOUND_LEVEL:.0%} upper confidence bound (chi-square), noncentral t; none across a diverged seed or "
            f"below {MIN_PAIRS} pairs. P(method > reference): the probability of improvement as rliable defines it "
            f"(all run pairs, ties half) with a 95% percentile bootstrap interval, from {PI_SEEDS} seeds on.")
    return Table("paired", "Paired comparisons against the best method", note, header, rows, pd.DataFrame(data), bold)


# ----------------------------------------------------------------------------------------- LR gaps, the JSV

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


def headline(runs: pd.DataFrame, methods: list[str]) -> list[str]:
    """The headline's sentences: the findings' text, in order."""
    return assess(runs, methods).headline


def jsv_gap_correlation(runs: pd.DataFrame, gaps: list[Gap]) -> tuple[float, float, int]:
    """Spearman's ρ between the mean JSV just after pruning and the LR gap over (method, ratio) points, its exact
    permutation p-value and the number of points."""
    jsv = per_seed(runs, "jsv_pruned").groupby(["ratio", "method"]).jsv_pruned.mean()
    pairs = [(jsv[(g.ratio, g.method)], g.gap) for g in gaps if (g.ratio, g.method) in jsv.index]
    if not pairs:
        return math.nan, math.nan, 0
    x, y = np.array(pairs).T
    return spearman_rho(x, y)
