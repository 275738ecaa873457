"""The verdict's paired comparisons: per ratio every method at its selected LR against the reference (the best on
validation), paired by seed, with Holm's correction across every comparison of the suite (one family), each
comparison's state (resolved, too few seeds, a diverged seed, untuned, incomplete ...) and the seeds 80% power
would need; the winners the report may bold."""
from __future__ import annotations

import math
from dataclasses import dataclass

from bench.report.cells import LEVEL
from bench.report.selection import BY_VALIDATION, Selection
from bench.report.stats import (
    MIN_PAIRS,
    PairedTest,
    holm,
    paired_differences,
    paired_t_test,
    probability_of_improvement,
    sd_upper_bound,
    seeds_for_power,
)

ALPHA = 0.05  # family-wise error rate over every comparison the verdict states (all ratios of a suite)
PI_SEEDS = 5  # the probability of improvement is shown from this many seeds on
RESOLVED, NOT_RESOLVED, TOO_FEW = "resolved", "not resolved", "too few seeds"
HINGES = "LR choice hinges on a divergence"
DIVERGED_PAIR, UNTUNED, INCOMPLETE, NOT_ASSESSED = ("diverged seed: not tested by t", "untuned", "incomplete",
                                                    "not assessed (LRs chosen on test)")


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
    correction: str = "Holm"  # how p_holm corrects for the family: Holm, or sequential (an adaptively grown suite)

    @property
    def resolved(self) -> bool:
        return self.state == RESOLVED

    @property
    def assessed(self) -> bool:
        return self.state != NOT_ASSESSED

    @property
    def seeds_advised(self) -> int | None:
        """The seeds the power column advises (at least one more than the pairs in hand); None where it gives none
        or the comparison is resolved already."""
        if self.seeds_needed is None or self.resolved:
            return None
        return max(self.seeds_needed, self.test.n + 1)


def reference_of(here: list[Selection]) -> tuple[Selection, list[Selection]]:
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
        reference, _ = reference_of(here)
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


def blockers(selections: list[Selection], ratio: str) -> list[str]:
    """The methods at ``ratio`` that stop any winner being declared there: failed at every seed (never compared),
    incomplete (a failed run to redo) or untuned (LRs of its grid without a finished run)."""
    return [s.method for s in selections
            if s.ratio == ratio and (math.isnan(s.score) or s.incomplete or s.untuned)]


def winners(selections: list[Selection], comparisons: list[Comparison]) -> dict[str, str]:
    """Ratio -> the reference method, only where it is ahead of every other method on test by a resolved paired
    difference and no method at the ratio is incomplete, failed everywhere or untuned: the only case in which the
    report bolds a winner."""
    result = {}
    for ratio in dict.fromkeys(c.ratio for c in comparisons):
        mine = [c for c in comparisons if c.ratio == ratio]
        if all(c.resolved and c.test.mean < 0 for c in mine) and not blockers(selections, ratio):
            result[ratio] = mine[0].reference
    return result



def format_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
