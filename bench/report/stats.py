"""The report's statistics, with scipy.stats doing the arithmetic: Student-t intervals kept inside the possible range,
the paired t-test with Holm's correction, the seeds a difference needs for 80% power (noncentral t, with an upper
confidence bound on the spread), the probability of improvement with a bootstrap interval (as ``rliable`` defines
it), and Kendall's and Spearman's rank correlations (Spearman's with an exact permutation p-value).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special
from scipy import stats as sps

MIN_PAIRS = 3  # fewer paired seeds never resolve anything: one or two pairs say nothing about the spread
# differences whose sd is below this share of their size are equal: float rounding (1e-15 relative), not seed noise
# (one test image in 10,000 is 1e-4 of an accuracy)
ROUNDING = 1e-9
SD_BOUND_LEVEL = 0.8  # the one-sided confidence level of the upper bound on the sd that the power advice uses
POWER = 0.8
EXACT_PERMUTATION_POINTS = 9  # up to 9! = 362,880 orderings, Spearman's permutation p-value is exact


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. 0.975, 2 -> 4.3027)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    return float(special.stdtrit(df, p))  # what scipy.stats.t.ppf computes, without its per-call overhead


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
    return float(2 * sps.t.sf(abs(t), df))


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: mean difference with its t-interval half-width, t statistic, two-sided p, pairs."""

    mean: float
    half: float
    t: float
    p: float
    n: int
    sd: float

    @property
    def too_few(self) -> bool:
        """Fewer than MIN_PAIRS pairs, or no spread at all among the differences: no test can speak."""
        return self.n < MIN_PAIRS or not self.sd > 0


def paired_t_test(differences: Sequence[float] | np.ndarray, level: float = 0.95) -> PairedTest:
    """The paired t-test of per-pair differences against zero (``scipy.stats.ttest_1samp``, two-sided). Fewer than
    two pairs, or differences that are all equal (sd 0: the t statistic is infinite or undefined; equal up to float
    rounding counts, else a t of 1e15 would resolve on rounding alone), give no p-value (NaN): such data are "too few
    seeds", never a resolved difference."""
    x = np.asarray(differences, dtype=float)
    x = x[np.isfinite(x)]
    mean, half, n = mean_ci(x, level)
    if n < 2:
        return PairedTest(mean, half, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    if not sd > ROUNDING * float(np.abs(x).max()):
        return PairedTest(mean, 0.0, math.nan, math.nan, n, 0.0)
    result = sps.ttest_1samp(x, 0.0)
    return PairedTest(mean, half, float(result.statistic), float(result.pvalue), n, sd)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the comparisons given; NaN stays NaN and
    is not counted in the family): sort ascending, multiply the i-th smallest by (k - i), carry the running maximum,
    cap at 1."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    k = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (k - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_differences(a: pd.Series, b: pd.Series) -> np.ndarray:
    """``a - b`` over the seeds (index) both have with a finite value."""
    seeds = a.dropna().index.intersection(b.dropna().index)
    return (a[seeds] - b[seeds]).to_numpy(dtype=float)


def sd_upper_bound(sd: float, n: int, level: float = SD_BOUND_LEVEL) -> float:
    """The one-sided ``level`` upper confidence bound on a normal population's sd from a sample sd over ``n``
    values (chi-square with n - 1 degrees of freedom): sd * sqrt((n - 1) / chi2_{1 - level, n - 1})."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return sd * math.sqrt((n - 1) / float(special.chdtri(n - 1, level)))  # chi2.ppf(1 - level, n - 1)


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """The power of the two-sided one-sample t-test at level ``alpha`` with ``n`` pairs when the true mean paired
    difference is ``effect`` and its sd ``sd`` (noncentral t with n - 1 degrees of freedom)."""
    if n < 2 or not sd > 0:
        return math.nan
    df, critical = n - 1, t_quantile(1 - alpha / 2, n - 1)
    noncentrality = abs(effect) / (sd / math.sqrt(n))
    # scipy.special's noncentral t CDF, the one scipy.stats.nct uses, called directly: the power search calls it
    # often, and scipy.stats' distribution layer costs thirty times the arithmetic
    upper = 1.0 - float(special.nctdtr(df, noncentrality, critical))
    lower = float(special.nctdtr(df, noncentrality, -critical))  # the wrong-sign tail: negligible, NaN when tiny
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def seeds_for_power(effect: float, sd: float, alpha: float, target: float = POWER, most: int = 1000) -> int | None:
    """The fewest pairs (at least MIN_PAIRS) at which the paired t-test at ``alpha`` has ``target`` power against a
    true difference ``effect`` with spread ``sd``; None when the effect is zero or more than ``most`` are needed."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0 or not sd > 0:
        return None
    # the normal approximation as a first guess, then step to the first n that reaches the target (power grows with n)
    z = float(special.ndtri(1 - alpha / 2) + special.ndtri(target))
    n = min(max(MIN_PAIRS, math.ceil((z * sd / abs(effect)) ** 2)), most)
    if power(effect, sd, n, alpha) >= target:
        while n > MIN_PAIRS and power(effect, sd, n - 1, alpha) >= target:
            n -= 1
        return n
    while n < most:
        n += 1
        if power(effect, sd, n, alpha) >= target:
            return n
    return None


def smallest_resolvable(sd: float, n: int, alpha: float, target: float = POWER) -> float:
    """The smallest true difference (same units as ``sd``) that ``n`` pairs resolve with ``target`` power at
    ``alpha``: what a suite's seed count can hope to tell apart."""
    if n < MIN_PAIRS or not sd > 0:
        return math.nan
    # to a millionth of the sd: the report prints two decimals
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha) - target, 1e-9 * sd, 1e3 * sd, xtol=1e-6 * sd))


def probability_of_improvement(a: Sequence[float], b: Sequence[float], resamples: int = 2000, level: float = 0.95,
                               seed: int = 0) -> tuple[float, float, float]:
    """P(A > B) as ``rliable`` defines it (the Mann-Whitney U statistic over all run pairs, ties counting half) and
    its percentile bootstrap interval, runs of each method resampled independently (``scipy.stats.bootstrap``)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not x.size or not y.size:
        return math.nan, math.nan, math.nan

    def statistic(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        u, v = np.moveaxis(u, axis, -1)[..., :, None], np.moveaxis(v, axis, -1)[..., None, :]
        return ((u > v) + 0.5 * (u == v)).mean(axis=(-2, -1))

    point = float(statistic(x, y))
    if x.size < 2 or y.size < 2:
        return point, math.nan, math.nan
    result = sps.bootstrap((x, y), statistic, n_resamples=resamples, confidence_level=level, method="percentile",
                           vectorized=True, rng=np.random.default_rng(seed))
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


def _rho_with(b: np.ndarray) -> Callable[..., np.ndarray]:
    """Spearman's rho of each row of its argument with ``b``: the Pearson correlation of their ranks (vectorized, so
    the 9! orderings of an exact test take a moment)."""
    rb = sps.rankdata(b)
    rb = (rb - rb.mean()) / np.linalg.norm(rb - rb.mean())

    def rho(u: np.ndarray, axis: int = -1) -> np.ndarray:
        ru = np.moveaxis(sps.rankdata(u, axis=axis), axis, -1)
        ru = ru - ru.mean(axis=-1, keepdims=True)
        return (ru @ rb) / np.linalg.norm(ru, axis=-1)

    return rho


@functools.lru_cache(maxsize=32)
def _exact_null(ranks_a: tuple[float, ...], ranks_b: tuple[float, ...]) -> np.ndarray:
    """Spearman's rho over every ordering of one side against the other: the exact permutation null, which depends
    on the two sets of ranks alone (cached: a report, or a simulation of thousands, meets the same few)."""
    return sps.permutation_test((np.array(ranks_a),), _rho_with(np.array(ranks_b)), permutation_type="pairings",
                                vectorized=True, n_resamples=math.inf).null_distribution


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, resamples: int = 9999
                 ) -> tuple[float, float, int]:
    """Spearman's rank correlation over the pairs where both are finite, its two-sided permutation p-value (exact
    up to EXACT_PERMUTATION_POINTS points, else ``resamples`` seeded permutations; both as
    ``scipy.stats.permutation_test`` gives them) and the count of pairs; NaN for fewer than three pairs or a
    constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan, math.nan, n
    rho = _rho_with(b)
    if n > EXACT_PERMUTATION_POINTS:
        result = sps.permutation_test((a,), rho, permutation_type="pairings", alternative="two-sided",
                                      vectorized=True, n_resamples=resamples, rng=np.random.default_rng(0))
        return float(result.statistic), float(result.pvalue), n
    observed = float(rho(a))
    null = _exact_null(tuple(np.sort(sps.rankdata(a))), tuple(np.sort(sps.rankdata(b))))
    gamma = abs(100 * np.finfo(float).eps * observed)  # scipy's tolerance for ties in the null distribution
    low, high = np.mean(null <= observed + gamma), np.mean(null >= observed - gamma)
    return observed, float(min(1.0, 2 * min(low, high))), n


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two paired samples (``scipy.stats.kendalltau``); NaN for fewer than two pairs or when
    one side is all ties. 1 means the same order, -1 the reverse."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(sps.kendalltau(a, b).statistic)


def against_reference(reference: pd.Series, others: Sequence[pd.Series], level: float = 0.95
                      ) -> list[tuple[PairedTest, float]]:
    """Each of ``others`` (per-seed values, indexed by seed) minus ``reference``, paired on the seeds both have:
    the paired t-test and its Holm-adjusted p across these comparisons."""
    tests = [paired_t_test(paired_differences(other, reference), level) for other in others]
    return list(zip(tests, holm([t.p for t in tests])))


def beats_every_other(reference: pd.Series, others: Sequence[pd.Series], alpha: float = 0.05) -> bool:
    """True when ``reference`` is ahead of every one of ``others`` by a paired difference that Holm's correction
    across them resolves (p < ``alpha``, at least MIN_PAIRS pairs with some spread each): the fixed-LR tables' rule
    for bolding a winner."""
    return bool(others) and all(not t.too_few and t.mean < 0 and p < alpha
                                for t, p in against_reference(reference, others))
