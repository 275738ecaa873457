"""The verdict's first step: each method's retraining LR chosen on validation (a diverged seed at chance, failed runs
never counted), with the test accuracy there, the test oracle's LR and what the runs' outcomes allow to be said.
``bench.report.verdict`` builds the verdict's tables from these selections."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.report.cells import Cell
from bench.report.plots import chance_percent
from bench.report.tables import ratio_order

BY_VALIDATION = "validation"
BY_TEST = "test (optimistic)"
FINISHED = ("ok", "diverged")  # an outcome of the method; anything else is not its result
# no outcome yet ("unreadable": this user may not read its result.json): left out, never counted at chance
UNFINISHED = ("running", "unknown", "corrupt", "unreadable", "interrupted", "pending")
# the runs table's columns the selection reads: it works on these alone (a tenth of the table, ten times faster)
SELECTION_COLUMNS = ["run_id", "ratio", "ratio_value", "method", "lr", "seed", "status", "error", "dense_id",
                     "num_classes", "acc_final", "acc_val_final"]


def outcomes(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per run that ended as the method's result (ok or diverged): ``column`` in percent, a diverged run at chance
    (or 0 when the number of classes is unknown). Failed runs are infrastructure's, never counted."""
    done = runs.loc[runs.status.isin(FINISHED), ["ratio", "method", "lr", "seed", "dense_id", "status", column]]
    chance = chance_percent(runs)
    values = pd.to_numeric(done[column]).astype(float) * 100
    value = values.where(done.status == "ok", chance if not math.isnan(chance) else 0.0)
    return done[["ratio", "method", "lr", "seed", "dense_id", "status"]].assign(value=value.to_numpy())


def selected_by(runs: pd.DataFrame) -> str:
    """'validation' when every finished run measured the validation split, else 'test (optimistic)'."""
    validation = runs.acc_val_final[runs.status == "ok"]
    return BY_VALIDATION if len(validation) and validation.notna().all() else BY_TEST


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
    unfinished: tuple[tuple[str, str], ...] = ()  # (run id, status) of every run here without a result yet

    @property
    def untuned(self) -> bool:
        return bool(self.missing_lrs)

    @property
    def incomplete(self) -> bool:
        return bool(self.failed or self.unfinished)

    @property
    def notes(self) -> str:
        """What a reader must know about this choice, in words ("" when nothing)."""
        parts = []
        if self.runs_failed_all:
            parts.append(f"failed at every seed: {self.failed[0][1]}")
        elif self.failed:
            parts.append(f"incomplete: {len(self.failed)} failed run(s) to rerun ({self.failed[0][1]})")
        if self.unfinished:
            parts.append(f"incomplete: {len(self.unfinished)} run(s) without a result yet ({unfinished_words(self)})")
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


def unfinished_words(selection: Selection) -> str:
    """'2 running, 1 unreadable': the runs of a selection without a result yet, by status."""
    counts: dict[str, int] = {}
    for _, status in selection.unfinished:
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _grid_counts(mine: pd.DataFrame) -> dict[float, dict[str, int]]:
    """lr -> status -> runs, over one method's runs at one ratio."""
    counts: dict[float, dict[str, int]] = {}
    for lr, status in sorted(zip(mine.lr.astype(float), mine.status.astype(str))):
        if not math.isnan(lr):
            counts.setdefault(lr, {})[status] = counts.get(lr, {}).get(status, 0) + 1
    return counts


def _by_cell(frame: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(ratio, method) -> that method's rows at that ratio."""
    return {(str(ratio), str(method)): group for (ratio, method), group in frame.groupby(["ratio", "method"],
                                                                                         sort=False)}


def _lr_means(values: np.ndarray, lr_of: np.ndarray, lrs: list[float], keep: np.ndarray) -> dict[float, Any]:
    """lr -> the mean of the finite ``values`` kept at that LR (NaN when all are NaN, None when none is kept)."""
    means: dict[float, Any] = {}
    for lr in lrs:
        chosen = values[keep & (lr_of == lr)]
        finite = chosen[np.isfinite(chosen)]
        means[lr] = float(finite.mean()) if finite.size else (math.nan if chosen.size else None)
    return means


def _best(means: dict[float, Any]) -> float:
    """The LR with the highest mean, the first in the given order on a tie (NaN and None never win; the first LR
    when no mean is a number)."""
    numbers = {lr: m for lr, m in means.items() if m is not None and not math.isnan(m)}
    return max(numbers, key=numbers.__getitem__) if numbers else next(iter(means))


def select_lrs(runs: pd.DataFrame, methods: list[str]) -> list[Selection]:
    """For every ratio and method: the retraining LR with the best mean selection accuracy over seeds (a diverged
    seed at chance), the test accuracy there, the LR the test set would have chosen (ties go to the higher LR), and
    the method's outcomes: failed runs (incomplete), LRs of its grid without a finished run (untuned), divergences.

    LRs are compared on the same seeds: only seeds with a finished run at every finished LR count (the others are
    named), unless no seed has them all, when each LR's mean uses its own seeds (said in the note)."""
    runs = runs[SELECTION_COLUMNS]
    by = selected_by(runs)
    test = outcomes(runs, "acc_final")
    score = outcomes(runs, "acc_val_final" if by == BY_VALIDATION else "acc_final")
    chance = chance_percent(runs)
    failure_at = chance if not math.isnan(chance) else 0.0
    chosen = []
    # one frame of the finished runs with both accuracies (outcomes keeps the same rows in the same order)
    every_run, tests = _by_cell(runs), _by_cell(test.assign(score=score.value.to_numpy()))
    for ratio in ratio_order(runs):
        for method in methods:
            everything = every_run.get((ratio, method))
            if everything is None:
                continue
            failed_runs = everything[everything.status == "failed"].sort_values(["lr", "seed"])
            failed = tuple((str(r), _first_line(e)) for r, e in zip(failed_runs.run_id, failed_runs.error))
            grid = tuple(sorted(float(lr) for lr in everything.lr.dropna().unique()))
            mine = tests.get((ratio, method), test.iloc[:0])
            finished_lrs = set(mine.lr.astype(float))
            missing = tuple(sorted((lr for lr in grid if lr not in finished_lrs), reverse=True))
            # a run without a result yet at an LR that is compared (one with a finished run): the cell waits for it
            waiting = everything[everything.status.isin(UNFINISHED) & everything.lr.astype(float).isin(finished_lrs)]
            waiting = waiting.sort_values(["lr", "seed"])
            unfinished = tuple((str(r), str(st)) for r, st in zip(waiting.run_id, waiting.status))
            counts = _grid_counts(everything)
            if mine.empty:  # nothing finished: still shown, with why
                empty = pd.Series(dtype=float)
                chosen.append(Selection(ratio, method, math.nan, Cell(math.nan, math.nan, 0), math.nan, math.nan,
                                        math.nan, math.nan, "", empty, empty, by, (), failure_at, (), failed,
                                        len(failed) == len(everything), missing, grid, counts,
                                        unfinished=unfinished))
                continue
            lr_of, seed_of = mine.lr.to_numpy(dtype=float), mine.seed.to_numpy()
            value, scored = mine.value.to_numpy(dtype=float), mine.score.to_numpy(dtype=float)
            ok = (mine.status == "ok").to_numpy()
            lrs = sorted({x for x in lr_of.tolist() if not math.isnan(x)}, reverse=True)  # ties: the higher LR
            seeds_by_lr = [set(seed_of[lr_of == x].tolist()) for x in lrs]
            common = set.intersection(*seeds_by_lr)
            left_out = tuple(sorted(set.union(*seeds_by_lr) - common)) if common else ()
            keep = np.isin(seed_of, list(common)) if common else np.ones(len(mine), dtype=bool)
            score_means, test_means = _lr_means(scored, lr_of, lrs, keep), _lr_means(value, lr_of, lrs, keep)
            lr, oracle = _best(score_means), _best(test_means)
            at = np.flatnonzero(keep & (lr_of == lr))
            at = at[np.argsort(seed_of[at], kind="stable")]
            index = pd.Index(seed_of[at], name="seed")
            per_seed = pd.Series(value[at], index=index, name="value")
            dense_ids = pd.Series(mine.dense_id.to_numpy()[at], index=index, name="dense_id")
            diverged = tuple(int(seed) for seed in seed_of[at][~ok[at]])
            edge = ""
            if len(grid) > 2 and lr == grid[-1]:
                edge = "highest LR swept for it"
            elif len(grid) > 2 and lr == grid[0]:
                edge = "lowest LR swept for it"
            if not common:
                edge = (edge + "; " if edge else "") + "no seed finished at every LR: LRs compared on different seeds"
            converged = Cell.of(value[at][ok[at]], bounds=(0.0, 100.0))
            # Would the converged seeds alone choose another LR? Then a divergence decided the choice: a rare,
            # random divergence must not make a method look worse by a resolved margin (verdict_calibration.py).
            ok_means = {x: m for x, m in _lr_means(scored, lr_of, lrs, keep & ok).items() if m is not None}
            alone = _best(ok_means) if ok_means else lr
            hinge = alone if alone != lr and not ok[keep].all() else math.nan
            chosen.append(Selection(ratio, method, lr, converged, score_means[lr], oracle, test_means[oracle],
                                    test_means[oracle] - test_means[lr], edge, per_seed, dense_ids, by, left_out,
                                    failure_at, diverged, failed, False, missing, grid, counts, hinge, unfinished))
    return chosen
