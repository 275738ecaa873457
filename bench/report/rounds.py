"""The rounds of a suite that grows its seeds (``seeds: {start, max, step}``), replayed from its finished runs.

Every cell (ratio × method, all its LRs) runs seeds 0 .. start-1. After each round the verdict is taken on the
seeds each cell has (``verdict.assess``: LRs chosen on validation, each method against its ratio's reference) and
every comparison is judged by the group-sequential design (``bench.report.sequential``): decided, futile or
continue. A cell gets ``step`` more seeds, at every LR of its method, when a comparison it takes part in (as the
method or as the reference) continues, until ``max``. Nothing is recorded: the rounds are a deterministic function
of the finished runs, so the controller, ``plan`` and the report replay them alike, and a killed controller resumes
where the results on disk leave it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from bench.report.comparison import (
    ALPHA,
    DIVERGED_PAIR,
    NOT_RESOLVED,
    RESOLVED,
    Comparison,
    format_p,
)
from bench.report.findings import Finding
from bench.report.selection import FINISHED
from bench.report.sequential import CONTINUE, DECIDED, FUTILE, FUTILITY, Design, Look, Spending, judge
from bench.report.tables import KEY, Table
from bench.report.verdict import Assessment, assess
from bench.suite.manifest import Manifest

Cell = tuple[str, str]  # (ratio label, method label)
DECIDED_WHY, FUTILE_WHY, MAX_WHY, GROWING, WAITING = "decided", "futile", "max", "growing", "waiting for runs"
# no t-test can ever decide these: a diverged seed stays in the pairs however many are added. An LR choice that
# hinges on a divergence is not among them: more seeds can settle the choice, so such a comparison continues
UNTESTABLE = (DIVERGED_PAIR,)


@dataclass
class Rounds:
    """Where a growing suite stands: each cell's seed count and why it stopped (or that it grows), the rounds
    done, the runs the current round still needs (or the next round adds), and the last verdict with its looks."""

    design: Design
    seeds: dict[Cell, int]  # seeds each cell has now (the current round's, when waiting)
    why: dict[Cell, str]  # DECIDED_WHY, FUTILE_WHY, MAX_WHY, GROWING or WAITING
    done: int  # rounds whose runs have all finished and been judged
    missing: list[tuple[str, str, float, int]] = field(default_factory=list)  # (ratio, method, lr, seed) not finished
    assessment: Assessment | None = None  # the verdict at the last judged round
    looks: dict[tuple[str, str], Look] = field(default_factory=dict)  # (ratio, method) -> its comparison's look
    history: list[dict[Cell, int]] = field(default_factory=list)  # seeds per cell at each round, first to last

    @property
    def finished(self) -> bool:
        """Every cell stopped: decided, futile or at max."""
        return not self.missing and all(why in (DECIDED_WHY, FUTILE_WHY, MAX_WHY) for why in self.why.values())

    def wanted(self, lrs: dict[Cell, list[float]]) -> list[tuple[str, str, float, int]]:
        """Every (ratio, method, lr, seed) the cells' current seed counts take."""
        return [(ratio, method, lr, seed) for (ratio, method), n in self.seeds.items()
                for lr in lrs[(ratio, method)] for seed in range(n)]


def family_size(cells: list[Cell]) -> int:
    """The planned comparisons: at each ratio, every method but the reference (one family, all ratios)."""
    ratios: dict[str, int] = {}
    for ratio, _ in cells:
        ratios[ratio] = ratios.get(ratio, 0) + 1
    return max(1, sum(n - 1 for n in ratios.values()))


def judge_comparison(design: Design, comparison: Comparison) -> Look:
    """A comparison's sequential look: its t-test judged by the design; a comparison no t-test can decide (a
    diverged seed in its pairs) is futile; one without a test yet (too few seeds, sd 0, an LR choice a divergence
    decided) continues."""
    if comparison.state in UNTESTABLE:
        return Look(design.look_of(comparison.test.n), math.nan, FUTILE, math.nan, math.nan)
    if comparison.state not in (RESOLVED, NOT_RESOLVED):
        return Look(design.look_of(comparison.test.n), math.nan, CONTINUE, math.nan, math.nan)
    return judge(design, comparison.test.n, comparison.test.p)


def sequential(comparisons: list[Comparison], design: Design) -> tuple[list[Comparison], dict[Cell, Look]]:
    """The comparisons re-judged by the design: p (Holm) becomes the sequential p (stagewise, Bonferroni over the
    family), resolved means the boundary was crossed; no fixed-sample power advice (the design decides)."""
    out, looks = [], {}
    for c in comparisons:
        look = judge_comparison(design, c)
        looks[(c.ratio, c.method)] = look
        state = c.state
        if state in (RESOLVED, NOT_RESOLVED):
            state = RESOLVED if look.state == DECIDED else NOT_RESOLVED
        out.append(dataclasses.replace(c, p_holm=look.p, state=state, seeds_needed=None, family=design.family,
                                       correction="sequential"))
    return out, looks


def _restrict(runs: pd.DataFrame, seeds: dict[Cell, int]) -> pd.DataFrame:
    """The runs of each cell at its first ``seeds[cell]`` seeds."""
    limit = pd.Series([seeds.get((str(r), str(m)), 0) for r, m in zip(runs.ratio, runs.method)], index=runs.index)
    return runs[pd.to_numeric(runs.seed, errors="coerce") < limit]  # a row without a seed (corrupt) is left out


def _missing(runs: pd.DataFrame, wanted: list[tuple[str, str, float, int]]) -> list[tuple[str, str, float, int]]:
    """The wanted (ratio, method, lr, seed) without a finished (ok or diverged) run."""
    done = runs[runs.status.isin(FINISHED)]
    have = {(str(r), str(m), float(lr), int(s)) for r, m, lr, s in zip(done.ratio, done.method, done.lr, done.seed)}
    return [w for w in wanted if w not in have]


def replay(runs: pd.DataFrame, lrs: dict[Cell, list[float]], methods: list[str], start: int, most: int, step: int,
           futility: float = FUTILITY, alpha: float = ALPHA, spending: Spending = "obrien-fleming") -> Rounds:
    """Replay the rounds from the runs on disk: judge each round whose runs have all finished and grow the cells
    it leaves open, until a round still waits for runs or every cell has stopped. ``lrs``: each cell's LR grid."""
    cells = list(lrs)
    design = Design(start, most, step, alpha, family_size(cells), futility, spending)
    seeds = {cell: start for cell in cells}
    state = Rounds(design, dict(seeds), {cell: WAITING for cell in cells}, 0, history=[dict(seeds)])
    while True:
        missing = _missing(runs, state.wanted(lrs))
        if missing:
            state.missing = missing
            for cell in cells:
                if any((r, m) == cell for r, m, _, _ in missing):
                    state.why[cell] = WAITING
            return state
        state.assessment = assess(_restrict(runs, seeds), methods, lambda cs: sequential(cs, design)[0])
        comparisons = state.assessment.comparisons
        looks = {(c.ratio, c.method): judge_comparison(design, c) for c in comparisons}
        state.looks, state.done = looks, state.done + 1
        grow = set()
        for c in comparisons:
            if looks[(c.ratio, c.method)].state == CONTINUE:
                grow |= {(c.ratio, c.method), (c.ratio, c.reference)}
        for cell in cells:
            mine = [looks[(c.ratio, c.method)].state for c in comparisons
                    if c.ratio == cell[0] and cell[1] in (c.method, c.reference)]
            if seeds[cell] >= most:
                state.why[cell] = MAX_WHY
            elif cell in grow:
                state.why[cell] = GROWING
            else:
                state.why[cell] = DECIDED_WHY if mine and all(s == DECIDED for s in mine) else FUTILE_WHY
        growing = [cell for cell in cells if state.why[cell] == GROWING]
        if not growing:
            return state
        for cell in growing:
            seeds[cell] = min(seeds[cell] + step, most)
        state.seeds = dict(seeds)
        state.history.append(dict(seeds))


def cell_lrs(grid: Iterable[tuple[str, str, float]]) -> dict[Cell, list[float]]:
    """Each cell's LR grid from the suite's (ratio label, method label, lr) triples, cells by ratio (first seen)
    then method (first seen)."""
    triples = [(str(r), str(m), float(lr)) for r, m, lr in grid]
    ratios, methods = dict.fromkeys(t[0] for t in triples), dict.fromkeys(t[1] for t in triples)
    out: dict[Cell, list[float]] = {}
    for ratio in ratios:
        for method in methods:
            lrs = sorted({lr for r, m, lr in triples if (r, m) == (ratio, method)})
            if lrs:
                out[(ratio, method)] = lrs
    return out


def design_words(design: Design) -> str:
    """The design in one sentence, for the report and ``plan``."""
    looks = ", ".join(str(n) for n in design.looks)
    kind = {"obrien-fleming": "O'Brien-Fleming", "pocock": "Pocock"}[design.spending]
    return (f"group-sequential design over the looks at {looks} seeds: Lan-DeMets {kind} alpha spending, "
            f"{design.alpha:g} over the {design.family} planned comparison(s) (each at {design.level:.4g}, "
            f"Bonferroni), paired t-tests matched to the normal scale by their p-values, stagewise-ordered p-values, "
            f"non-binding futility at conditional power below {design.futility:g}")


def manifest_lrs(manifest: Manifest) -> dict[Cell, list[float]]:
    """Each cell's LR grid from the runs a manifest lists."""
    return cell_lrs((e["ratio"], e["method"], e["lr"]) for e in manifest.runs.values())


def suite_assessment(runs: pd.DataFrame, methods: list[str], manifest: Manifest | None
                     ) -> tuple[Assessment, Rounds | None]:
    """The verdict of a suite: fixed-sample (Holm) for a list of seeds; for a suite grown in rounds (its manifest
    holds the design), the verdict at the last round judged, with group-sequential p-values, and its rounds."""
    if manifest is None or not manifest.design:
        return assess(runs, methods), None
    plan = manifest.design
    state = replay(runs, manifest_lrs(manifest), methods, int(plan["start"]), int(plan["max"]), int(plan["step"]),
                   plan.get("futility", FUTILITY), spending=plan.get("spending", "obrien-fleming"))
    base = state.assessment or assess(runs, methods, lambda cs: sequential(cs, state.design)[0])
    counts = sorted(set(state.seeds.values()))
    where = (f"round {state.done + 1} waits for {len(state.missing)} run(s)" if state.missing else
             f"{state.done} round(s), every cell stopped")
    text = (f"This suite grew its seeds in rounds (seeds: start {plan['start']:g}, max {plan['max']:g}, step "
            f"{plan['step']:g}; {where}): cells have {', '.join(str(n) for n in counts)} seeds (table 'Seeds per "
            f"cell'), so its p-values are group-sequential ({design_words(state.design)}), not Holm's.")
    finding = Finding("sequential", text, data={"seeds": {f"{r} {m}": n for (r, m), n in state.seeds.items()}})
    return Assessment(base.selections, base.comparisons, base.winners, [*base.findings, finding], base.by), state


def rounds_table(state: Rounds) -> Table:
    """Per cell: the seeds it got, why it stopped (or that it waits or grows), and its comparison's last look."""
    header = [(KEY, "ratio"), (KEY, "method"), (KEY, "seeds"), (KEY, "stopped"), ("its comparison", "z"),
              ("its comparison", "boundary"), ("its comparison", "p (sequential)"),
              ("its comparison", "conditional power")]
    rows, data = [], []
    for (ratio, method), n in state.seeds.items():
        look = state.looks.get((ratio, method))
        index = look.look if look is not None else None
        bound = state.design.bounds[index] if index is not None else math.nan
        z, p, power = (look.z, look.p, look.conditional_power) if look else (math.nan,) * 3
        rows.append([ratio, method, str(n), state.why[(ratio, method)], _num(z), _num(bound),
                     format_p(p), _num(power)])
        data.append({"ratio": ratio, "method": method, "seeds": n, "stopped": state.why[(ratio, method)], "z": z,
                     "boundary": bound, "p_sequential": p, "conditional_power": power})
    history = " → ".join("/".join(str(n) for n in dict.fromkeys(sorted(h.values()))) for h in state.history)
    note = (f"A cell (ratio × method, every LR) runs its first {state.design.start} seeds, then gets "
            f"{state.design.step} more per round, at every LR, while a comparison it takes part in (as the method or "
            "as the reference) is neither decided nor futile, up to "
            f"{state.design.most}. Stopped: decided (every comparison crossed its boundary), futile (none can be "
            "decided by max at the observed trend, or a diverged seed in its pairs leaves no t-test; an LR choice a "
            "divergence decided keeps growing, as more seeds can settle it), max, or growing / waiting "
            f"for runs. The design: {design_words(state.design)}. The z, boundary and p are of the cell's own "
            "comparison against its ratio's reference (none for the reference). Seeds per cell by round: "
            f"{history}.")
    return Table("rounds", "Seeds per cell (sequential design)", note, header, rows, pd.DataFrame(data))


def _num(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"
