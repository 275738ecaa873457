"""Small exact statistics for the report: Student-t intervals and Kendall's tau, without scipy.

Seed counts are small integers, so the t distribution's CDF has a closed form (Abramowitz & Stegun 26.7.3/4)
that bisection inverts to machine precision; scipy would be a heavy dependency for two functions.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np


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
