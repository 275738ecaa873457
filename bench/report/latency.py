"""Whether a latency speed-up can be stood behind: on a busy machine a latency is the machine's, not the model's.

A speed-up is marked unreliable (and printed as such, never as a finding) where the dense model's own median latency
differs across the runs that share it by more than DENSE_SPREAD_LIMIT times, or where a measurement's IQR exceeds
IQR_LIMIT of its median; the note says how busy the machine was while timing
(``bench.training.measure.machine_load``). The efficiency table (``bench.report.efficiency``) takes its latency columns,
cells and note from here.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

DENSE_SPREAD_LIMIT = 1.5  # max / min of one dense model's median latency across the runs that measured it
IQR_LIMIT = 0.25  # a measurement's interquartile range over its median


def latency_columns(runs: pd.DataFrame) -> tuple[str, str] | None:
    """The (dense, pruned) latency metric columns to compare: median ms when recorded, else the first common pair."""
    suffixes = [c.removeprefix("latency_dense_") for c in runs.columns if c.startswith("latency_dense_")]
    common = [s for s in suffixes if f"latency_pruned_{s}" in runs and runs[f"latency_pruned_{s}"].notna().any()]
    if not common:
        return None
    suffix = "median_ms" if "median_ms" in common else sorted(common)[0]
    return f"latency_dense_{suffix}", f"latency_pruned_{suffix}"


def _numbers(runs: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(dtype=float, index=runs.index)


def dense_spread(runs: pd.DataFrame, dense_column: str) -> pd.Series:
    """Per dense id: the largest over the smallest median latency its runs recorded for the same dense model."""
    medians = _numbers(runs, dense_column)
    valid = medians > 0
    grouped = medians[valid].groupby(runs.dense_id[valid].astype(str))
    return grouped.max() / grouped.min()


def unreliable_why(runs: pd.DataFrame, mine: pd.DataFrame, dense_column: str, pruned_column: str) -> str:
    """Why the latency speed-up of ``mine`` (some runs of ``runs``, the suite's) cannot be stood behind, or ''."""
    reasons = []
    spread = dense_spread(runs, dense_column)
    ids = set(mine.dense_id.dropna().astype(str)) & set(spread.index)
    worst = max((float(spread[i]) for i in ids), default=1.0)
    if worst > DENSE_SPREAD_LIMIT:
        reasons.append(f"the same dense model measured {worst:.3g}× apart across runs (limit {DENSE_SPREAD_LIMIT}×)")
    if dense_column.endswith("_median_ms"):
        ratios = []
        for column in (dense_column, pruned_column):
            iqr = _numbers(mine, column.removesuffix("median_ms") + "iqr_ms")
            ratios.append((iqr / _numbers(mine, column)).max())
        largest = max((r for r in ratios if pd.notna(r)), default=0.0)
        if largest > IQR_LIMIT:
            reasons.append(f"an IQR of {largest:.0%} of the median (limit {IQR_LIMIT:.0%})")
    return "; ".join(reasons)


def load_sentence(runs: pd.DataFrame, dense_column: str) -> str:
    """How busy the machine was while the runs timed their models (the median over runs), or '' if not recorded."""
    prefix = dense_column.removesuffix("median_ms")
    share, load = _numbers(runs, prefix + "others_cpu_share"), _numbers(runs, prefix + "load_1min_before")
    if share.notna().sum() == 0:
        return ""
    return (f"While timing, other processes kept a median {share.median():.0%} of the cores busy (1-minute load "
            f"average {load.median():.2f} on {_numbers(runs, prefix + 'cpus').median():.0f} cores).")


def speedup_cells(runs: pd.DataFrame, mine: pd.DataFrame, dense_column: str, pruned_column: str
                  ) -> tuple[list[str], dict[str, Any]]:
    """The efficiency table's latency cells for ``mine`` (dense ms, pruned ms, speed-up: "unreliable (x)" where
    ``unreliable_why`` finds a reason) and its record's ``latency_*`` entries."""
    dense_ms, pruned_ms = (float(pd.to_numeric(mine[c]).mean()) for c in (dense_column, pruned_column))
    why = unreliable_why(runs, mine, dense_column, pruned_column)
    speedup = dense_ms / pruned_ms if pruned_ms > 0 and dense_ms >= 0 else math.nan  # NaN (no number) fails both
    shown = "—" if math.isnan(speedup) else f"{speedup:.2f}"
    cells = [_ms(dense_ms), _ms(pruned_ms), f"unreliable ({shown})" if why and not math.isnan(speedup) else shown]
    return cells, {"latency_dense": dense_ms, "latency_pruned": pruned_ms, "latency_speedup": speedup,
                   "latency_unreliable": why}


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3g}"


def reliability_note(runs: pd.DataFrame, dense_column: str, reasons: list[str]) -> str:
    """What the efficiency table's note adds on latency: the machine's load while timing, and how many speed-ups
    are marked unreliable and why (``reasons``: one per row, '' where reliable); '' when there is nothing to say."""
    note = f" {load}" if (load := load_sentence(runs, dense_column)) else ""
    unreliable = [why for why in reasons if why]
    if unreliable:
        note += (f" {len(unreliable)} latency speed-ups are marked unreliable and are no finding: the machine, not the "
                 f"model, set them ({sorted(set(unreliable), key=len)[-1]}). Measure again on an idle machine with "
                 "pinned threads (docs/performance.md: Measuring latency).")
    return note
