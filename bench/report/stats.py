"""Small exact statistics for the report, without scipy: Student-t intervals, the paired t-test with Holm's
correction, the seeds a difference would need, and Kendall's and Spearman's rank correlations.

Seed counts are small integers, so the t distribution's CDF has a closed form (Abramowitz & Stegun 26.7.3/4)
that bisection inverts to machine precision; it is the one t distribution of the whole reporter (intervals and
p-values alike). scipy would be a heavy dependency for these few functions; the tests check them against
published tables and scipy's documented values.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom ``df`` >= 1 (exact series)."""
    theta = math.atan(t / math.sqrt(df))
    c = math.cos(theta) ** 2
    term, total = 1.0, 1.0
    if df % 2:  # odd: (2/pi) * (theta + sin cos * (1 + 2/3 c + 2*4/(3*5) c^2 + ...)), (df-3)/2 terms after 1
        if df == 1:
            return 2 * theta / math.pi
        for k in range(1, (df - 3) // 2 + 1):
            term *= c * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    for k in range(1, (df - 2) // 2 + 1):  # even: sin * (1 + 1/2 c + 1*3/(2*4) c^2 + ...)
        term *= c * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. 0.975, 2 -> 4.3027)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    mass = abs(2 * p - 1)
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, int(df)) < mass:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if _t_two_sided_mass(mid, int(df)) < mass:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * max(1.0, high):
            break
    return math.copysign((low + high) / 2, p - 0.5)


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided Student-t interval, n) over the finite values.

    The half-width is ``t_{(1+level)/2, n-1} * s / sqrt(n)`` with the sample standard deviation ``s``; it is
    NaN for fewer than two values (no interval), and the mean is NaN for none.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, 1
    half = t_quantile((1 + level) / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, half, n


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: the two-sided p-value of a t statistic."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return max(0.0, 1.0 - _t_two_sided_mass(abs(t), int(df)))


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: mean difference with its t-interval half-width, t statistic, two-sided p, pairs."""

    mean: float
    half: float
    t: float
    p: float
    n: int
    sd: float


def paired_t_test(differences: Sequence[float] | np.ndarray, level: float = 0.95) -> PairedTest:
    """The paired t-test of per-pair differences against zero (``scipy.stats.ttest_rel``'s statistic and
    two-sided p); with fewer than two pairs there is no test (NaN), and all-equal differences give p 0 or 1."""
    x = np.asarray(differences, dtype=float)
    x = x[np.isfinite(x)]
    mean, half, n = mean_ci(x, level)
    if n < 2:
        return PairedTest(mean, half, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0:
        return PairedTest(mean, 0.0, math.copysign(math.inf, mean) if mean else math.nan,
                          0.0 if mean else 1.0, n, 0.0)
    t = mean / (sd / math.sqrt(n))
    return PairedTest(mean, half, t, t_two_sided_p(t, n - 1), n, sd)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the comparisons given; NaN stays NaN):
    sort ascending, multiply the i-th smallest by (k - i), carry the running maximum, cap at 1."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    k = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (k - rank) * p))
        adjusted[i] = running
    return adjusted


def against_reference(reference: pd.Series, others: Sequence[pd.Series], level: float = 0.95
                      ) -> list[tuple[PairedTest, float]]:
    """Each of ``others`` (per-seed values, indexed by seed) minus ``reference``, paired on the seeds both have:
    the paired t-test and its Holm-adjusted p across these comparisons. The one rule behind every "resolved" and
    every bolded winner of the report."""
    tests = []
    for other in others:
        seeds = other.dropna().index.intersection(reference.dropna().index)
        tests.append(paired_t_test((other[seeds] - reference[seeds]).to_numpy(dtype=float), level))
    return list(zip(tests, holm([t.p for t in tests])))


def beats_every_other(reference: pd.Series, others: Sequence[pd.Series], alpha: float = 0.05) -> bool:
    """True when ``reference`` is ahead of every one of ``others`` by a paired difference that Holm's correction
    across them resolves (p < ``alpha``, two or more pairs each): the report's only reason to bold a winner."""
    return bool(others) and all(t.n >= 2 and t.mean < 0 and p < alpha for t, p in against_reference(reference, others))


def seeds_to_resolve(mean: float, sd: float, alpha: float = 0.05, most: int = 1000) -> int | None:
    """The fewest pairs at which a paired difference of this mean and standard deviation would be significant at
    ``alpha`` (two-sided, uncorrected): the smallest n with |mean| > t_{1-alpha/2, n-1} * sd / sqrt(n). None when
    the mean is zero or more than ``most`` would be needed."""
    if not math.isfinite(mean) or not math.isfinite(sd) or mean == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if abs(mean) > t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n):
            return n
    return None


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, int]:
    """Spearman's rank correlation (average ranks for ties) over the pairs where both are finite, and that count;
    NaN for fewer than three pairs or a constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3:
        return math.nan, n
    ra, rb = _average_ranks(a), _average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan, n
    return float(np.corrcoef(ra, rb)[0, 1]), n


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two paired samples (ties handled as in tau-b); NaN when undefined.

    1 means the same order, -1 the reverse; NaN for fewer than two pairs or when one side is all ties.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2:
        return math.nan
    i, j = np.triu_indices(a.size, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    pairs = i.size
    denominator = math.sqrt(float(pairs - np.sum(da == 0)) * float(pairs - np.sum(db == 0)))
    return float(np.sum(da * db)) / denominator if denominator > 0 else math.nan
