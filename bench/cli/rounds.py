"""``bench.py run SUITE --until-decided``: the controller of a suite whose seeds grow in rounds, and what ``plan``
shows of its rounds.

The controller runs where it is started (a login node, for Slurm): each round it replays the rounds from the
finished runs on disk (``bench.report.rounds``), hands the runs the round needs to the executor (one job array on
Slurm, waited for), and loops until every cell is decided, futile or at max. It records nothing of its own beyond
the suite's manifest (rewritten each round with the seeds each cell has), so a killed controller, started again,
resumes where the results leave it, and a run already finished is never redone.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.config import Suite
from bench.core.errors import ConfigError
from bench.core.schema import to_plain
from bench.suite.grid import Run
from bench.suite.manifest import read_manifest

if TYPE_CHECKING:  # the reporter is imported only when a suite grows in rounds (it brings pandas and matplotlib)
    from bench.report.rounds import Cell, Rounds

log = logging.getLogger("bench")

Coordinates = tuple[str, str, float, int]  # (ratio label, method label, lr, seed)
RunSuite = Callable[[argparse.Namespace, Suite, list[Run], Path], int]


def coordinates(run: Run) -> Coordinates:
    d = run.describe()
    return (str(d["ratio"]), str(d["method"]), float(run.lr), int(run.seed))


def current_state(suite: Suite, runs: list[Run], results: Path) -> tuple[Rounds, dict[Cell, list[float]]]:
    """Replay the suite's rounds from its finished runs under ``results`` (only runs of this configuration: ids of
    the suite's expanded grid)."""
    import pandas as pd

    from bench.report.load import load_results
    from bench.report.rounds import cell_lrs, replay

    plan = suite.seed_plan
    assert plan is not None
    ids = {r.run_id for r in runs}
    frame = pd.DataFrame(columns=["run_id", "ratio", "method", "lr", "seed", "status"])
    if (results / suite.name / "runs").is_dir():
        loaded = load_results(results, [suite.name]).runs
        frame = loaded[loaded.run_id.isin(ids)] if len(loaded) else frame
    lrs = cell_lrs((c[0], c[1], c[2]) for c in map(coordinates, runs))
    methods = list(dict.fromkeys(r.method.label for r in runs))
    return replay(frame, lrs, methods, plan.start, plan.max, plan.step, plan.futility,
                  spending=plan.spending), lrs


def wanted_runs(state: Rounds, lrs: dict[Cell, list[float]], runs: list[Run]) -> list[Run]:
    """The runs of every cell at the seeds it has now (earlier rounds' and the current one's)."""
    wanted = set(state.wanted(lrs))
    return [r for r in runs if coordinates(r) in wanted]


def cell_words(state: Rounds) -> str:
    """'0.9 l1: 5 (decided); 0.9 tpp: 7 (growing)'."""
    return "; ".join(f"{r} {m}: {n} ({state.why[(r, m)]})" for (r, m), n in state.seeds.items())


def run_rounds(args: argparse.Namespace, suite: Suite, runs: list[Run], suite_dir: Path, run_suite: RunSuite) -> int:
    """Run rounds until every cell has stopped; ``run_suite`` runs a list of runs as ``bench.py run`` does (and
    records the manifest from them). Stops at a round with a failed run (exit 1): rerunning resumes it."""
    if not args.until_decided:
        raise ConfigError("seeds: {start, max, step} grows seeds in rounds; run it with --until-decided (or give "
                          "seeds as a list for a fixed design).", str(args.suite))
    if suite.seed_plan is None:
        raise ConfigError("--until-decided grows seeds in rounds: give the suite's seeds as {start: N, max: M, "
                          "step: K} (a list is a fixed design; run it without --until-decided).", str(args.suite))
    if args.executor == "slurm":
        args.wait = True  # each round is one job array, waited for before the next is chosen
    results = Path(args.results)
    missing_before = None
    while True:
        state, lrs = current_state(suite, runs, results)
        if state.finished:
            recorded = read_manifest(results / suite.name)
            if recorded is None or recorded.design != to_plain(suite.seed_plan):  # the plan changed since (e.g.
                code = run_suite(args, suite, wanted_runs(state, lrs, runs), suite_dir)  # its spending): record it
                if code != 0:
                    return code
            saved = len(runs) - len(wanted_runs(state, lrs, runs))
            print(f"suite '{suite.name}': every cell stopped after {state.done} round(s): {cell_words(state)}. "
                  f"{len(runs) - saved} runs of the {len(runs)} at max seeds ({saved} not needed).")
            return 0
        if state.missing == missing_before:  # the runs the round needs did not finish: do not loop
            log.warning("suite '%s': round %d still needs %d run(s) after running it; stopping",
                        suite.name, state.done + 1, len(state.missing))
            return 1
        missing_before = state.missing
        log.info("suite '%s': round %d: %s", suite.name, state.done + 1, cell_words(state))
        code = run_suite(args, suite, wanted_runs(state, lrs, runs), suite_dir)
        if code != 0:
            return code


def grown_runs(suite: Suite, runs: list[Run], results: Path) -> tuple[list[Run], list[str]]:
    """For ``plan`` and ``status``: a suite grown in rounds has the runs its cells have so far (with the current
    round's), and lines saying the rounds done and what the next round adds; a list of seeds has all its runs."""
    if suite.seed_plan is None:
        return runs, []
    from bench.report.rounds import design_words

    state, lrs = current_state(suite, runs, results)
    lines = [f"seeds grown in rounds: {design_words(state.design)}",
             f"rounds done: {state.done}; seeds per cell now: {cell_words(state)}"]
    if state.finished:
        lines.append("no next round: every cell is decided, futile or at max")
    else:
        adds: dict[Cell, set[int]] = {}
        for ratio, method, _, seed in state.missing:
            adds.setdefault((ratio, method), set()).add(seed)
        what = "; ".join(f"{r} {m}: seeds {min(s)}-{max(s)}" if len(s) > 1 else f"{r} {m}: seed {min(s)}"
                         for (r, m), s in adds.items())
        lines.append(f"round {state.done + 1} needs {len(state.missing)} run(s) not finished: {what}")
    return wanted_runs(state, lrs, runs), lines
