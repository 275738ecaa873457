"""The verdict's first step: each method's retraining LR chosen on validation (a diverged seed at chance, failed runs
never counted), with the test accuracy there, the test oracle's LR and what the runs' outcomes allow to be said.
``bench.report.verdict`` builds the verdict's tables from these selections."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.report.cells import Cell
from bench.report.plots import chance_percent
from bench.report.tables import ratio_order

BY_VALIDATION = "validation"
BY_TEST = "test (optimistic)"
FINISHED = ("ok", "diverged")  # an outcome of the method; anything else is not its result
# no outcome yet ("unreadable": this user may not read its result.json): left out, never counted at chance
UNFINISHED = ("running", "unknown", "corrupt", "unreadable", "interrupted", "pending")


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
            # a run without a result yet at an LR that is compared (one with a finished run): the cell waits for it
            waiting = everything[everything.status.isin(UNFINISHED) & everything.lr.astype(float).isin(finished_lrs)]
            unfinished = tuple((str(r.run_id), str(r.status)) for r in waiting.sort_values(["lr", "seed"]).itertuples())
            counts = _grid_counts(runs, ratio, method)
            if not mine.any():  # nothing finished: still shown, with why
                empty = pd.Series(dtype=float)
                chosen.append(Selection(ratio, method, math.nan, Cell(math.nan, math.nan, 0), math.nan, math.nan,
                                        math.nan, math.nan, "", empty, empty, by, (), failure_at, (), failed,
                                        len(failed) == len(everything), missing, grid, counts,
                                        unfinished=unfinished))
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
                                    missing, grid, counts, hinge, unfinished))
    return chosen
