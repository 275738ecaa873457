"""Is a suite grown in rounds (``seeds: {start, max, step}``, ``bench.py run --until-decided``) calibrated, and what
does it save? Simulated suites pushed through the real round and report code (``bench.report.rounds.replay``, which
runs ``verdict.assess`` at every round exactly as the controller and the report do), beside the fixed design that
runs ``max`` seeds everywhere (``verdict.assess``, Holm), printing per true difference (0 under the null):

- the false-winner rate (null) or the power (a difference): the share of suites whose verdict resolves the leading
  method's comparison in the right direction (under the null: any comparison resolved), adaptive and fixed;
- the mean seeds per cell and the runs the adaptive design used as a share of the fixed design's.

Seed noise as in ``verdict_calibration.py``: each run's test accuracy is its method's mean plus independent normal
noise of ``--sd`` points (0.4, from fair_mlp), validation its own noise of the same size; two LRs per method, the
lower 3 points worse; the true difference is in paired-difference sds (sd * sqrt 2). The suite's result tree is
written once by the synthetic writer and loaded by the report's loader; each simulated suite then only redraws the
accuracy columns of that frame (in memory), so a few hundred suites take minutes.

    python benchmarks/adaptive_calibration.py                         # 200 suites per difference, 2 methods
    python benchmarks/adaptive_calibration.py --reps 400 --methods 4 --step 1
    python benchmarks/adaptive_calibration.py --frontier                # every plan a suite can set, screened

``--frontier`` screens the plans a suite can set (spending, start, step, futility, at the given max) for the
issue's target (at least 40% fewer runs than max seeds at every difference, at most 5 points less power than max
seeds everywhere): one comparison's paired differences drawn directly (normal, sd 1; the same draws for every plan)
and judged at each look by the real design (``Design.states``, the rule ``sequential.judge`` applies: its
boundaries, conditional power and futility), beside the fixed paired t-test at max seeds. It leaves out the LR
choice and the loader, so it is a screen: a plan it finds is then checked through the whole report code by the
default section.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from bench.report.load import from_records  # noqa: E402
from bench.report.rounds import cell_lrs, replay  # noqa: E402
from bench.report.sequential import CONTINUE, DECIDED, FUTILITY, SPENDING, Design, matched_z  # noqa: E402
from bench.report.stats import paired_t_test  # noqa: E402
from bench.report.synthetic import synthetic_results  # noqa: E402
from bench.report.verdict import RESOLVED, assess  # noqa: E402

LRS = (0.01, 0.001)
ALPHA_FIXED = 0.05  # the fixed design's level for one comparison (Holm over one is the plain p)
RATIO = 0.9
# the columns the verdict reads (a narrow frame makes each round's row selections several times faster)
VERDICT_COLUMNS = ["suite", "run_id", "method", "ratio", "ratio_value", "lr", "seed", "status", "error", "num_classes",
                   "dense_id", "acc_final", "acc_val_final", "acc_pruned", "jsv_pruned", "jsv_final"]


def template(methods: int, most: int) -> pd.DataFrame:
    """The runs frame of a suite with every seed up to ``most`` finished (the report's loader's rows, in memory)."""
    names = [f"m{i}" for i in range(methods)]
    records = synthetic_results("sim", names, [RATIO], list(LRS), list(range(most)), epochs=2,
                                validation=lambda *key: 0.8)
    return from_records((result, "sim") for result in records).runs[VERDICT_COLUMNS]


def draw(frame: pd.DataFrame, lead: float, sd: float, rng: np.random.Generator) -> pd.DataFrame:
    """The frame with fresh accuracies: 80% (77% at the low LR), m1 ``lead`` points better, noise of ``sd`` points."""
    mean = 80.0 + np.where(frame.method == "m1", lead, 0.0) - np.where(frame.lr == min(LRS), 3.0, 0.0)
    return frame.assign(acc_final=(mean + rng.normal(0, sd, len(frame))) / 100,
                        acc_val_final=(mean + rng.normal(0, sd, len(frame))) / 100)


def hit(comparisons: list, lead: float) -> bool:
    """Under the null, any comparison resolved (a false winner); else m1's comparison resolved with m1 ahead."""
    if lead == 0:
        return any(c.state == RESOLVED for c in comparisons)
    for c in comparisons:
        if c.state == RESOLVED and "m1" in (c.method, c.reference):
            ahead = c.test.mean > 0 if c.method == "m1" else c.test.mean < 0
            if ahead:
                return True
    return False


def simulate(frame: pd.DataFrame, methods: int, effect: float, sd: float, start: int, most: int, step: int,
             futility: float, reps: int, rng: np.random.Generator, spending: str = "obrien-fleming"
             ) -> dict[str, float]:
    """``reps`` suites with m1 ``effect`` paired-difference sds ahead: the adaptive and fixed designs' rates, the
    adaptive mean seeds per cell and its runs as a share of the fixed design's."""
    names = [f"m{i}" for i in range(methods)]
    lrs = cell_lrs((f"{RATIO:g}", m, lr) for m in names for lr in LRS)
    lead = effect * sd * math.sqrt(2)
    adaptive = fixed = 0
    seeds: list[float] = []
    for _ in range(reps):
        runs = draw(frame, lead, sd, rng)
        state = replay(runs, lrs, names, start, most, step, futility, spending=spending)
        adaptive += hit(state.assessment.comparisons, lead)
        fixed += hit(assess(runs, names).comparisons, lead)
        seeds.append(float(np.mean(list(state.seeds.values()))))
    return {"adaptive": adaptive / reps, "fixed": fixed / reps, "seeds": float(np.mean(seeds)),
            "share": float(np.mean(seeds)) / most}


def mc_error(rate: float, reps: int) -> float:
    """The Monte-Carlo standard error of a rate from ``reps`` independent suites."""
    return math.sqrt(max(rate * (1 - rate), 1 / reps) / reps)


def adaptive_section(reps: int = 200, methods: int = 2, effects: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0),
                     sd: float = 0.4, start: int = 3, most: int = 10, step: int = 2, futility: float = FUTILITY,
                     seed: int = 0, spending: str = "obrien-fleming") -> list[str]:
    """The adaptive calibration as printable lines (``verdict_calibration.py --sections adaptive`` prints these)."""
    rng = np.random.default_rng(seed)
    frame = template(methods, most)
    lines = [f"Seeds grown in rounds (start {start}, max {most}, step {step}, futility {futility:g}, {spending} "
             f"spending; {methods} "
             f"methods, {reps} suites per row, run sd {sd} points; ± Monte-Carlo standard error) beside {most} seeds "
             "everywhere:",
             "effect (diff sd)  rate: adaptive        fixed  seeds/cell  runs vs fixed  saved"]
    for effect in effects:
        r = simulate(frame, methods, effect, sd, start, most, step, futility, reps, rng, spending)
        what = "false winners" if effect == 0 else "power"
        lines.append(f"{effect:>16g}  {r['adaptive']:.3f} ± {mc_error(r['adaptive'], reps):.3f}  "
                     f"{r['fixed']:.3f} ± {mc_error(r['fixed'], reps):.3f}  {r['seeds']:>10.2f}  "
                     f"{r['share']:>13.0%}  {1 - r['share']:>5.0%}   ({what})")
    return lines


def screen(design: Design, draws: dict[float, np.ndarray]) -> dict[float, tuple[float, float]]:
    """Per true difference: the share of ``draws`` (suites x max paired differences) the design decides with the
    right sign (any sign under the null), and its mean seeds; each look's paired t-tests (scipy's, as
    ``stats.paired_t_test``) matched to z (``sequential.matched_z``) and judged by ``Design.states``, the rule
    ``sequential.judge`` applies."""
    out = {}
    for effect, x in draws.items():
        open_ = np.ones(len(x), dtype=bool)
        hits, seeds = np.zeros(len(x), dtype=bool), np.full(len(x), design.most)
        for look, n in enumerate(design.looks):
            test = sps.ttest_1samp(x[:, :n], 0.0, axis=1)
            z = np.array([matched_z(p) for p in test.pvalue])
            states = design.states(look, z)
            stop = open_ & (states != CONTINUE)
            hits |= stop & (states == DECIDED) & ((effect == 0) | (test.statistic > 0))
            seeds[stop] = n
            open_ &= ~stop
        out[effect] = (float(hits.mean()), float(seeds.mean()))
    return out


def frontier_section(reps: int = 1000, effects: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0), most: int = 10,
                     starts: tuple[int, ...] = (3, 4, 5), steps: tuple[int, ...] = (1, 2, 3),
                     futilities: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3),
                     spendings: tuple[str, ...] = tuple(SPENDING), seed: int = 0) -> list[str]:
    """Every plan (spending, start, step, futility) at ``max`` screened for the issue's target (see the module's
    docstring), as printable lines: each plan's rates and runs saved, which plans meet the target, and among the
    plans that keep the null's level and lose at most 5 points of power anywhere, the most runs saved."""
    rng = np.random.default_rng(seed)
    draws = {effect: rng.normal(effect, 1.0, (reps, most)) for effect in effects}
    fixed = {effect: float(np.mean([(p := paired_t_test(row)).p < ALPHA_FIXED and (effect == 0 or p.mean > 0)
                                    for row in x])) for effect, x in draws.items()}
    name = {e: "null" if e == 0 else f"d={e:g}" for e in effects}
    lines = [f"Plans screened at max {most} ({reps} suites of one comparison per difference, paired differences "
             f"N(d, 1), the same draws for every plan; fixed {most} seeds: "
             + ", ".join(f"{'false positives' if e == 0 else f'power at {e:g}'} {fixed[e]:.3f}" for e in effects) + ")",
             "spending       start step futility  " + "  ".join(f"{name[e]:>15}" for e in effects)
             + "  (rate / runs saved)"]
    within, met = [], 0
    for spending, start, step, futility in itertools.product(spendings, starts, steps, futilities):
        r = screen(Design(start, most, step, futility=futility, spending=spending), draws)
        saved = {e: 1 - r[e][1] / most for e in effects}
        # the level: no more false positives than 0.05, or than the exact fixed test on these same draws, within
        # two Monte-Carlo standard errors
        keeps = (r[0.0][0] <= max(0.05, fixed[0.0]) + 2 * mc_error(0.05, reps) if 0.0 in r else True) and all(
            fixed[e] - r[e][0] <= 0.05 for e in effects if e > 0)
        meets = keeps and min(saved.values()) >= 0.40
        met += meets
        if keeps:
            within.append((f"{spending} start {start} step {step} futility {futility:g}", saved))
        lines.append(f"{spending:<14} {start:>5} {step:>4} {futility:>8g}  "
                     + "  ".join(f"{r[e][0]:.3f} / {saved[e]:>4.0%}" for e in effects)
                     + ("  meets the target" if meets else ""))
    lines.append(f"{met} of {len(lines) - 2} plans meet the target (at least 40% of the runs saved at every "
                 "difference, the null's level kept (at most 0.05, or the fixed test's rate on these draws, plus two "
                 "standard errors), at most 5 points of power lost at any difference).")
    if within:
        best = max(within, key=lambda w: min(w[1].values()))
        lines.append(f"{len(within)} plans keep the level and the power; the most runs any of them saves: "
                     + ", ".join(f"{name[e]} {max(w[1][e] for w in within):.0%}" for e in effects)
                     + f"; the best at its worst difference: {best[0]} ("
                     + ", ".join(f"{name[e]} {best[1][e]:.0%}" for e in effects) + ").")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="simulated suites per difference (default 200)")
    parser.add_argument("--methods", type=int, default=2)
    parser.add_argument("--effects", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0],
                        help="true differences of m1 over the others, in paired-difference sds (0: the null)")
    parser.add_argument("--sd", type=float, default=0.4, help="each run's seed noise, points (default 0.4)")
    parser.add_argument("--start", type=int, default=3)
    parser.add_argument("--max", dest="most", type=int, default=10)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--futility", type=float, default=FUTILITY)
    parser.add_argument("--spending", choices=list(SPENDING), default="obrien-fleming")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frontier", action="store_true",
                        help="screen every plan (spending, start 3-5, step 1-3, futility 0-0.3) for the target instead")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    began = time.perf_counter()
    if args.frontier:
        for line in frontier_section(args.reps, tuple(args.effects), args.most, seed=args.seed):
            print(line, flush=True)
        print(f"\n{time.perf_counter() - began:.0f} s")
        return 0
    for line in adaptive_section(args.reps, args.methods, tuple(args.effects), args.sd, args.start, args.most,
                                 args.step, args.futility, args.seed, args.spending):
        print(line, flush=True)
    print(f"\n{time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
