"""Is the verdict calibrated? Simulated suites pushed through the real report code (the synthetic result records,
``from_records`` -- the rows ``load_results`` builds from result.json files, built in memory -- and
``verdict.assess``, exactly what ``bench.py report`` runs), printing one table per section:

- ``null``: the false-winner rate when no method is better than any other: the share of simulated suites in which
  the verdict calls any comparison resolved, at 3, 5 and 10 seeds across 2, 4 and 8 methods (target <= 0.05
  within Monte-Carlo error), once as drawn (failed runs in it) and once after ``bench.py run`` redid the failed
  runs (the verdict a user would read in the end);
- ``power``: the power the verdict achieves where it says "N seeds for 80% power": a pilot suite of two methods
  whose true paired difference is 0.5, 1 or 2 paired-difference sds is run at ``--pilot-seeds`` seeds; where its
  power column names N seeds, a fresh suite with N seeds is run and whether it resolves is counted (target
  >= 0.75), until ``--power-reps`` suites per effect have run at N.

Seed noise: each run's test accuracy is its method's true mean plus independent normal noise of ``--sd`` points
(default 0.4: fair_mlp's 3-seed verdict measured paired-difference sds of 0.12 to 0.79 points, pooled 0.57 =
0.4 * sqrt 2); the validation accuracy adds its own noise of the same size; every run diverges with probability
``--diverge`` and fails (an infrastructure fault) with probability ``--fail``. Two LRs per method, the lower one 3
points worse. Every suite draws from its own generator, seeded by (``--seed``, section, cell, repetition), so the
figures do not depend on ``--workers``.

    python benchmarks/verdict_calibration.py                       # both sections, the figures docs/reports.md quotes
    python benchmarks/verdict_calibration.py --sections null --reps 100 --workers 1
    python benchmarks/verdict_calibration.py --sections adaptive      # issue 33: rounds beside max seeds everywhere
    python benchmarks/verdict_calibration.py --sections frontier      # issue 33: every seeds plan screened
    python benchmarks/verdict_calibration.py --sections bound         # issue 33: the most any sequential rule saves

Another section is one function ``section(args, pool) -> None`` registered in SECTIONS (with its options added in
``parser()``); ``simulate`` (one suite's comparisons), ``draw_runs`` (seed by seed: more seeds extend a suite),
``redo_failed`` and ``verdict_of`` simulate suites, ``rate_text`` and ``print_table`` print rates.
"""
from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from bench.report import from_records  # noqa: E402
from bench.report.synthetic import synthetic_results  # noqa: E402
from bench.report.verdict import NOT_RESOLVED, RESOLVED, Assessment, Comparison, assess  # noqa: E402

LRS = (0.01, 0.001)
LOW_LR_COST = 3.0  # points the lower LR costs every method: the LR choice is easy, the comparison is the question
BASE = 80.0  # every method's true test accuracy (%) at its better LR, before its effect
RATIO = 0.9
SUITE = "sim"
FIGURES = ("null", "power")  # the sections run by default


RunKey = tuple[str, float, float, int]  # (method, ratio, lr, seed), as bench.report.synthetic
Draws = dict[RunKey, tuple[float, float, str]]  # run -> (test accuracy %, validation accuracy %, status)


def names(methods: int) -> list[str]:
    """The simulated methods' names, in the report's method order."""
    return [f"m{i}" for i in range(methods)]


def lead(methods: int, effect: float) -> list[float]:
    """True effects where method m1 leads every other method by ``effect`` points (0: the null)."""
    return [effect if i == 1 else 0.0 for i in range(methods)]


def _draw(effect: float, lr: float, sd: float, diverge: float, fail: float, rng: np.random.Generator
          ) -> tuple[float, float, str]:
    """One run: test and validation accuracy (%) around the method's true mean at this LR, and its outcome."""
    mean = BASE + effect - (LOW_LR_COST if lr != LRS[0] else 0.0)
    test, val = mean + rng.normal(0.0, sd, 2)
    draw = rng.random()
    status = "diverged" if draw < diverge else "failed" if draw < diverge + fail else "ok"
    return float(test), float(val), status


def draw_runs(effects: Sequence[float], seeds: Sequence[int], sd: float, diverge: float, fail: float,
              rng: np.random.Generator) -> Draws:
    """Every run of one simulated suite: method ``m<i>`` has true test accuracy BASE + effects[i] (%) at LR 0.01 and
    LOW_LR_COST less at 0.001, plus normal noise of ``sd`` points per run (test and validation each their own); a
    run diverges with probability ``diverge``, or else fails with probability ``fail``. Drawn seed by seed, so the
    draws of seeds 0-4 merged with those of seeds 5-9 drawn next make a 10-seed suite (for sequential designs)."""
    return {(name, RATIO, lr, seed): _draw(effect, lr, sd, diverge, fail, rng)
            for seed in seeds for name, effect in zip(names(len(effects)), effects) for lr in LRS}


def redo_failed(draws: Draws, effects: Sequence[float], sd: float, diverge: float, rng: np.random.Generator
                ) -> Draws:
    """The runs after ``bench.py run`` redid the failed ones: each drawn afresh, ending ok or diverged."""
    return {key: _draw(effects[int(key[0][1:])], key[2], sd, diverge, 0.0, rng) if value[2] == "failed" else value
            for key, value in draws.items()}


def records_of(draws: Draws) -> list[dict[str, Any]]:
    """The result.json contents of the drawn runs, as the runner writes them (bench.report.synthetic)."""
    methods = sorted({k[0] for k in draws}, key=lambda m: int(m[1:]))
    seeds = sorted({k[3] for k in draws})
    statuses = {k: v[2] for k, v in draws.items() if v[2] != "ok"}
    return synthetic_results(SUITE, methods, [RATIO], list(LRS), seeds, epochs=2, accuracy=lambda *k: draws[k][0] / 100,
                             validation=lambda *k: draws[k][1] / 100, statuses=statuses)


def verdict_of(draws: Draws) -> Assessment:
    """The verdict ``bench.py report`` gives on these runs: the runs frame load_results would build from their
    result.json files (built in memory by ``from_records``), then ``verdict.assess`` in the methods' order."""
    runs = from_records((record, SUITE) for record in records_of(draws)).runs
    return assess(runs, sorted(set(runs.method), key=lambda m: int(m[1:])))


def simulate(methods: int, seeds: int, effects: Sequence[float], sd: float, diverge: float, fail: float,
             rng: np.random.Generator) -> list[Comparison]:
    """One simulated suite of ``methods`` methods (``effects``: each one's true lead in points over a common base)
    at ``seeds`` seeds, run noise ``sd`` points, divergence and failure rates per run: the verdict's comparisons."""
    if len(effects) != methods:
        raise ValueError(f"{len(effects)} effects for {methods} methods")
    return verdict_of(draw_runs(effects, range(seeds), sd, diverge, fail, rng)).comparisons


def any_resolved(comparisons: list[Comparison]) -> bool:
    """A false winner under the null: any comparison of the suite called resolved."""
    return any(c.state == RESOLVED for c in comparisons)


def rate_text(hits: int, reps: int) -> str:
    """'0.048 ± 0.011 [0.030, 0.073]': a rate over ``reps`` simulated suites, its Monte-Carlo standard error and
    its exact (Clopper-Pearson) 95% interval, which stays inside [0, 1]; '—' for no suites."""
    if reps == 0:
        return "—"
    rate = hits / reps
    ci = sps.binomtest(hits, reps).proportion_ci(0.95, method="exact")
    return f"{rate:.3f} ± {math.sqrt(rate * (1 - rate) / reps):.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def interval(hits: int, reps: int) -> tuple[float, float]:
    """The exact 95% interval of a rate (NaN for no suites)."""
    if reps == 0:
        return math.nan, math.nan
    ci = sps.binomtest(hits, reps).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table with right-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)), flush=True)


Pool = Callable[[Callable[[Any], Any], list[Any]], list[Any]]  # map a function over tasks, results in task order


def make_pool(workers: int) -> tuple[Pool, Callable[[], None]]:
    """A map over ``workers`` forked processes (1: this process), and how to close it."""
    if workers < 2 or not sys.platform.startswith("linux"):
        return (lambda fn, tasks: [fn(t) for t in tasks]), (lambda: None)
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return (lambda fn, tasks: list(executor.map(fn, tasks, chunksize=max(1, len(tasks) // (8 * workers))))), \
        executor.shutdown


# ----------------------------------------------------------------------------------------- null: false winners

def null_suite(task: tuple[argparse.Namespace, int, int, int]) -> tuple[bool, bool, bool]:
    """One null suite: (false winner as drawn, some cell incomplete as drawn, false winner after the redo)."""
    args, methods, seeds, rep = task
    rng = np.random.default_rng([args.seed, 0, methods, seeds, rep])
    effects = lead(methods, 0.0)
    draws = draw_runs(effects, range(seeds), args.sd, args.diverge, args.fail, rng)
    drawn = verdict_of(draws)
    incomplete = any(s.incomplete for s in drawn.selections)
    redone = verdict_of(redo_failed(draws, effects, args.sd, args.diverge, rng)) if incomplete else drawn
    return any_resolved(drawn.comparisons), incomplete, any_resolved(redone.comparisons)


def null_section(args: argparse.Namespace, pool: Pool) -> None:
    """The false-winner rate under the null, as drawn and after the failed runs were redone."""
    print(f"False-winner rate under the null (any comparison of the suite resolved when no method is better; "
          f"{args.reps} suites per cell; rate ± Monte-Carlo standard error [exact 95% interval]; run sd {args.sd} "
          f"points, divergence {args.diverge}, failure {args.fail} per run):")
    cells = [(m, s) for s in args.seeds for m in args.methods]
    results = pool(null_suite, [(args, m, s, rep) for m, s in cells for rep in range(args.reps)])
    by_cell = {cell: results[i * args.reps:(i + 1) * args.reps] for i, cell in enumerate(cells)}
    for title, index in (("after `bench.py run` redid the failed runs (the verdict a user reads in the end)", 2),
                         ("as drawn, failed runs in it (their cells incomplete)", 0)):
        print(f"\n{title}:")
        rows = [[str(s)] + [rate_text(sum(r[index] for r in by_cell[(m, s)]), args.reps) for m in args.methods]
                for s in args.seeds]
        print_table(["seeds"] + [f"{m} methods" for m in args.methods], rows)
    incomplete = {cell: sum(r[1] for r in rs) / args.reps for cell, rs in by_cell.items()}
    print("\nshare of suites with a failed run as drawn: " + ", ".join(
        f"{s} seeds × {m} methods {incomplete[(m, s)]:.2f}" for s in args.seeds for m in args.methods))
    worst = max(interval(sum(r[i] for r in rs), args.reps)[0] for rs in by_cell.values() for i in (0, 2))
    print(f"target (<= {args.target_null:g} within Monte-Carlo error, i.e. no cell's 95% interval above it): "
          f"{'met' if worst <= args.target_null else 'NOT met'} (largest lower end {worst:.3f})", flush=True)


# ----------------------------------------------------------------------------------------- power: the advice kept

def power_suite(task: tuple[argparse.Namespace, float, int]) -> tuple[int | None, bool]:
    """One pilot and, where its power column advises N seeds (N <= --most), a fresh N-seed suite: (N advised or None,
    the fresh suite resolved)."""
    args, effect, rep = task
    rng = np.random.default_rng([args.seed, 1, round(effect * 1000), rep])
    points = effect * args.sd * math.sqrt(2)  # in paired-difference sds: the difference of two runs' noises
    (pilot,) = simulate(2, args.pilot_seeds, lead(2, points), args.sd, 0.0, 0.0, rng)
    advice = pilot.seeds_advised if pilot.state == NOT_RESOLVED else None
    if advice is None or advice > args.most:
        return advice, False
    (again,) = simulate(2, advice, lead(2, points), args.sd, 0.0, 0.0, rng)
    return advice, again.state == RESOLVED


def power_section(args: argparse.Namespace, pool: Pool) -> None:
    """The power achieved where the verdict advises N seeds, per true effect."""
    print(f"\nAchieved power where the verdict says 'N seeds for 80% power' (2 methods; advice from "
          f"{args.pilot_seeds}-seed pilots that were not resolved; pilots drawn until {args.power_reps} suites per "
          f"effect ran at N; N above {args.most} not run; no divergence or failure: the verdict gives no power advice "
          "across a diverged seed, and failed runs are redone):")
    rows, met = [], True
    for effect in args.effects:
        outcomes: list[tuple[int | None, bool]] = []
        run = 0
        batch = 0
        while run < args.power_reps and len(outcomes) < 100 * args.power_reps:
            size = max(args.power_reps - run, 8)
            new = pool(power_suite, [(args, effect, rep) for rep in range(batch, batch + size)])
            batch += size
            for outcome in new:
                if run >= args.power_reps:
                    break
                outcomes.append(outcome)
                run += outcome[0] is not None and outcome[0] <= args.most
        advised = [n for n, _ in outcomes if n is not None]
        ran = [(n, ok) for n, ok in outcomes if n is not None and n <= args.most]
        hits = sum(ok for _, ok in ran)
        high = interval(hits, len(ran))[1]
        met &= bool(ran) and high >= args.target_power
        quartiles = (" / ".join(f"{q:.0f}" for q in np.percentile([n for n, _ in ran], [25, 50, 75]))
                     if ran else "—")
        rows.append([f"{effect:g}", str(len(outcomes)), str(len(advised)), quartiles, str(len(ran)),
                     rate_text(hits, len(ran))])
    print_table(["effect (paired sds)", "pilots", "advised", "N (quartiles)", "run at N", "resolved at N (power)"],
                rows)
    print(f"target (>= {args.target_power:g} within Monte-Carlo error, i.e. no effect's 95% interval below it): "
          f"{'met' if met else 'NOT met'}", flush=True)


def sibling(name: str) -> Any:
    """A sibling script of benchmarks/ (adaptive_calibration, sequential_bound), imported by name on use (this
    folder on sys.path, as when this file runs as a script)."""
    import importlib

    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def adaptive_section(args: argparse.Namespace, pool: Pool) -> None:
    """Seeds grown in rounds (issue 33) beside ``--adaptive-max`` seeds everywhere: false winners, power, runs saved
    (``benchmarks/adaptive_calibration.py``, through the real round replay and ``verdict.assess``; one process)."""
    print()
    print(*sibling("adaptive_calibration").adaptive_section(
        args.adaptive_reps, args.adaptive_methods, (0.0, *args.effects), args.sd, args.adaptive_start,
        args.adaptive_max, args.adaptive_step, seed=args.seed, spending=args.adaptive_spending), sep="\n", flush=True)


def frontier_section(args: argparse.Namespace, pool: Pool) -> None:
    """Every seeds plan a suite can set, screened for issue 33's target (``adaptive_calibration.py --frontier``)."""
    print()
    print(*sibling("adaptive_calibration").frontier_section(args.frontier_reps, (0.0, *args.effects), args.adaptive_max,
                                              seed=args.seed), sep="\n", flush=True)


def bound_section(args: argparse.Namespace, pool: Pool) -> None:
    """The most runs any sequential rule can save (``sequential_bound.py``: a linear program over every rule), at
    ``--adaptive-max`` and the maxima and power losses of ``--bound-maxima`` and ``--bound-losses``."""
    print()
    for line in sibling("sequential_bound").report(args.adaptive_max, tuple(args.bound_losses),
                                                   tuple(args.bound_maxima), args.bound_points, (0.0, *args.effects)):
        print(line, flush=True)


SECTIONS: dict[str, Callable[[argparse.Namespace, Pool], None]] = {"null": null_section, "power": power_section,
                                                                    "adaptive": adaptive_section,
                                                                    "frontier": frontier_section,
                                                                    "bound": bound_section}


def parser() -> argparse.ArgumentParser:
    """The command line: which sections, and each section's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=",".join(FIGURES),
                   help=f"comma-separated, from {', '.join(SECTIONS)} (default {','.join(FIGURES)})")
    p.add_argument("--sd", type=float, default=0.4, help="each run's seed noise, points (default 0.4)")
    p.add_argument("--diverge", type=float, default=0.03, help="probability that a run diverges (default 0.03)")
    p.add_argument("--fail", type=float, default=0.02, help="probability that a run fails (default 0.02)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                   help="processes simulating suites (default: one per core, at most 4; 1: this one)")
    null = p.add_argument_group("null")
    null.add_argument("--reps", type=int, default=400, help="simulated null suites per cell (default 400)")
    null.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    null.add_argument("--methods", type=int, nargs="+", default=[2, 4, 8])
    null.add_argument("--target-null", type=float, default=0.05)
    power = p.add_argument_group("power")
    power.add_argument("--power-reps", type=int, default=200, help="suites run at the advised N per effect")
    power.add_argument("--effects", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                       help="true differences, in paired-difference sds")
    power.add_argument("--pilot-seeds", type=int, default=5, help="seeds of the pilot whose advice is tested")
    power.add_argument("--most", type=int, default=200, help="the largest N seeds a power check runs")
    power.add_argument("--target-power", type=float, default=0.75)
    adaptive = p.add_argument_group("adaptive (seeds grown in rounds; the null and --effects)")
    adaptive.add_argument("--adaptive-reps", type=int, default=200, help="suites per difference (default 200)")
    adaptive.add_argument("--adaptive-methods", type=int, default=2)
    adaptive.add_argument("--adaptive-start", type=int, default=3)
    adaptive.add_argument("--adaptive-max", type=int, default=10)
    adaptive.add_argument("--adaptive-step", type=int, default=2)
    adaptive.add_argument("--adaptive-spending", choices=["obrien-fleming", "pocock"], default="obrien-fleming")
    adaptive.add_argument("--frontier-reps", type=int, default=1000,
                          help="frontier: suites of one comparison per difference (default 1000)")
    adaptive.add_argument("--bound-points", type=int, default=401, help="bound: grid points per look (default 401)")
    adaptive.add_argument("--bound-maxima", type=int, nargs="+", default=[10, 15, 20],
                          help="bound: max seeds compared (default 10 15 20)")
    adaptive.add_argument("--bound-losses", type=float, nargs="+", default=[0.05, 0.10, 0.20],
                          help="bound: power given up against the fixed test, as fractions (default 0.05 0.10 0.20)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        print(f"error: --sections {args.sections!r}: unknown section(s) {', '.join(unknown) or '(none given)'}; "
              f"choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    logging.disable(logging.WARNING)
    began = time.perf_counter()
    pool, close = make_pool(args.workers)
    try:
        for section in chosen:
            SECTIONS[section](args, pool)
    finally:
        close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    spent = os.times()
    cpu = spent.user + spent.system + spent.children_user + spent.children_system
    print(f"\n{time.perf_counter() - began:.0f} s wall, {cpu:.0f} s CPU (workers included), {args.workers} worker(s), "
          f"1-minute load average at the end {load:.1f} on {os.cpu_count()} cores", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
