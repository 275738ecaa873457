"""Is the verdict calibrated? Simulated suites pushed through the real report code (the synthetic result writer,
``load_results`` and ``verdict.assess``, exactly what ``bench.py report`` runs), printing:

- the false-winner rate under the null (no true difference between any methods): the share of simulated suites in
  which the verdict calls any comparison resolved, at 3, 5 and 10 seeds across 2, 4 and 8 methods (target <= 0.05
  within Monte-Carlo error);
- the power the verdict achieves where it says "N seeds give 80%": a suite of two methods whose true paired
  difference is 0.5, 1 or 2 paired-difference sds is run at a few seeds; where the verdict's power column names N
  seeds, a fresh suite with N seeds is run and whether it resolves is counted (target >= 0.75); these suites have
  no divergence or failure (the verdict gives no power advice across a diverged seed, and failed runs are redone).

Seed noise: each run's test accuracy is its method's mean plus independent normal noise of ``--sd`` points (default
0.4: fair_mlp's 3-seed verdict measured paired-difference sds of 0.12 to 0.79 points, pooled 0.57 = 0.4 * sqrt 2);
the validation accuracy adds its own noise of the same size; every run diverges with probability ``--diverge`` and
fails (an infrastructure fault) with probability ``--fail``. Two LRs per method, the lower one 3 points worse.

    python benchmarks/verdict_calibration.py                 # the default: a few minutes on a loaded 2-core machine
    python benchmarks/verdict_calibration.py --reps 400 --power-reps 200   # tighter Monte-Carlo error
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from bench.report import load_results  # noqa: E402
from bench.report.synthetic import write_synthetic_results  # noqa: E402
from bench.report.verdict import RESOLVED, assess  # noqa: E402

LRS = (0.01, 0.001)


def simulate(root: Path, methods: int, seeds: int, effect: float, sd: float, diverge: float, fail: float,
             rng: np.random.Generator) -> list:
    """Write one simulated suite under ``root``, load it and return the verdict's comparisons (real report code).
    ``effect``: method m1's true lead over every other method, in points."""
    names = [f"m{i}" for i in range(methods)]
    test, val, statuses = {}, {}, {}
    for name in names:
        for lr in LRS:
            for seed in range(seeds):
                key = (name, 0.9, lr, seed)
                mean = 80.0 + (effect if name == "m1" else 0.0) - (3.0 if lr == 0.001 else 0.0)
                test[key] = (mean + rng.normal(0, sd)) / 100
                val[key] = (mean + rng.normal(0, sd)) / 100
                draw = rng.random()
                if draw < diverge:
                    statuses[key] = "diverged"
                elif draw < diverge + fail:
                    statuses[key] = "failed"
    with tempfile.TemporaryDirectory(dir=root) as folder:
        write_synthetic_results(Path(folder), "sim", names, [0.9], list(LRS), list(range(seeds)),
                                accuracy=lambda *k: test[k], validation=lambda *k: val[k], statuses=statuses,
                                epochs=2)
        runs = load_results(Path(folder)).runs
    return assess(runs, names).comparisons


def mc_error(rate: float, reps: int) -> float:
    """The Monte-Carlo standard error of a rate estimated from ``reps`` independent suites."""
    return math.sqrt(max(rate * (1 - rate), 1 / reps) / reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="simulated null suites per cell (default 30)")
    parser.add_argument("--power-reps", type=int, default=20, help="suites per effect size for the power check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--methods", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--effects", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="true differences for the power check, in paired-difference sds")
    parser.add_argument("--pilot-seeds", type=int, default=5, help="seeds of the suite whose power advice is tested")
    parser.add_argument("--sd", type=float, default=0.4, help="each run's seed noise, points (default 0.4)")
    parser.add_argument("--diverge", type=float, default=0.03, help="probability that a run diverges")
    parser.add_argument("--fail", type=float, default=0.02, help="probability that a run fails")
    parser.add_argument("--most", type=int, default=80, help="the largest N seeds a power check runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    rng = np.random.default_rng(args.seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calibration-") as scratch:
        root = Path(scratch)
        print(f"False-winner rate under the null (any comparison resolved; {args.reps} suites per cell, ± Monte-Carlo "
              f"standard error; run sd {args.sd} points, divergence {args.diverge}, failure {args.fail}):")
        print("seeds  " + "  ".join(f"{m} methods".rjust(15) for m in args.methods))
        for seeds in args.seeds:
            cells = []
            for methods in args.methods:
                false = sum(any(c.state == RESOLVED for c in simulate(root, methods, seeds, 0.0, args.sd,
                                                                         args.diverge, args.fail, rng))
                            for _ in range(args.reps))
                rate = false / args.reps
                cells.append(f"{rate:.3f} ± {mc_error(rate, args.reps):.3f}".rjust(15))
            print(f"{seeds:>5}  " + "  ".join(cells), flush=True)
        diff_sd = args.sd * math.sqrt(2)
        print(f"\nAchieved power where the verdict says 'N seeds for 80% power' (2 methods, advice from "
              f"{args.pilot_seeds}-seed suites, {args.power_reps} per effect; N above {args.most} not run; no "
              "divergence or failure here: the verdict gives no power advice across a diverged seed, and failed runs "
              "are redone):")
        print("effect (diff sd)  advised  median N  suites run at N  resolved at N (power)")
        for effect in args.effects:
            advised, resolved, ns = 0, 0, []
            for _ in range(args.power_reps):
                (pilot,) = simulate(root, 2, args.pilot_seeds, effect * diff_sd, args.sd, 0.0, 0.0, rng)
                if pilot.state == RESOLVED or pilot.seeds_needed is None:
                    continue
                advised += 1
                if pilot.seeds_needed > args.most:
                    continue
                ns.append(pilot.seeds_needed)
                (again,) = simulate(root, 2, pilot.seeds_needed, effect * diff_sd, args.sd, 0.0, 0.0, rng)
                resolved += again.state == RESOLVED
            power = resolved / len(ns) if ns else math.nan
            error = mc_error(power, len(ns)) if ns else math.nan
            median = f"{int(np.median(ns))}" if ns else "—"
            print(f"{effect:>16g}  {advised:>7}  {median:>8}  {len(ns):>15}  {power:.3f} ± {error:.3f}", flush=True)
    print(f"\n{time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
