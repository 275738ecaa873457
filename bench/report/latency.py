"""Whether a latency speed-up can be stood behind: on a busy machine a latency is the machine's, not the model's.

A speed-up is marked unreliable (and printed as such, never as a finding) where the dense model's own median latency
differs across the runs that share it by more than DENSE_SPREAD_LIMIT times, or where a measurement's IQR exceeds
IQR_LIMIT of its median; the note says how busy the machine was while timing (``bench.measure.machine_load``).
"""
from __future__ import annotations

import pandas as pd

DENSE_SPREAD_LIMIT = 1.5  # max / min of one dense model's median latency across the runs that measured it
IQR_LIMIT = 0.25  # a measurement's interquartile range over its median


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
