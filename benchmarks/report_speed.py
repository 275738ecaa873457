"""Time the reporter on 1,000 synthetic runs (5 methods × 5 ratios × 4 LRs × 10 seeds, 30 epochs each).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/report_speed.py [--seeds 10] [--workers N] [--keep DIR]``; prints the
time to load the results and to render every table, figure and the HTML page (target: under 10 s), as wall
and CPU seconds (CPU time is the fairer figure on a shared, busy machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import load_results, write_reports  # noqa: E402
from bench.report.synthetic import write_synthetic_results  # noqa: E402

METHODS = ["l1", "random", "tpp", "l1+orthp", "scratch"]
RATIOS = [0.3, 0.5, 0.7, 0.9, 0.95]
LRS = [0.1, 0.01, 0.001, 0.0001]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the figure workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    """Generate the runs, then time loading and the full report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per cell (10 gives 1,000 runs)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, help="figure processes (default: one per core; 1: serial)")
    parser.add_argument("--keep", help="write the results (and report) here instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-speed-") as scratch:
        run(Path(args.keep) if args.keep else Path(scratch), args)
        if args.keep:
            print(f"report: {Path(args.keep) / 'speed' / 'report' / 'index.html'}")


def run(root: Path, args: argparse.Namespace) -> None:
    """Write the synthetic results under ``root`` and time the reporter on them."""
    began = time.perf_counter()
    paths = write_synthetic_results(root, "speed", METHODS, RATIOS, LRS, range(args.seeds), epochs=args.epochs)
    generated = time.perf_counter() - began
    began = time.perf_counter()
    loaded = load_results(root)
    loading = time.perf_counter() - began
    began, cpu = time.perf_counter(), cpu_seconds()
    written = write_reports(root, workers=args.workers)
    total, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    print(f"{len(paths)} runs generated in {generated:.2f} s; loading {loading:.2f} s "
          f"({len(loaded.runs)} runs, {len(loaded.history)} epoch rows)")
    print(f"report render time (load + tables + figures + HTML, {len(written)} files): {total:.2f} s wall, "
          f"{cpu:.2f} s CPU incl. figure workers [target < 10 s]; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
