"""Group-sequential statistics for suites that grow their seeds adaptively (``seeds: {start, max, step}``).

Looking at the results and then adding seeds inflates false positives if the test ignores it. This module holds a
group-sequential design over the planned looks n = start, start + step, ..., max: a Lan-DeMets alpha-spending
function spends the family's level over the looks (O'Brien-Fleming type, the default: little early, most at
``max``; Pocock type: more early, a higher final boundary); the
boundaries come from the exact recursive integration of the Brownian-motion score (Armitage, McPherson & Rowe,
1969; Jennison & Turnbull, 2000, ch. 19) on a grid, with ``scipy.stats.norm`` for the distributions. A paired t-test
at a look is mapped to the normal scale by its p-value (the "significance-level" approach for group-sequential
t-tests, Jennison & Turnbull sec. 11.4), so a look with few seeds asks for a larger t. Each comparison gets
``alpha / family`` (Bonferroni over the planned comparisons); p-values are stagewise-ordered (the probability under
no difference of stopping earlier, or at this look with a larger statistic) times the family; futility is
non-binding (it never raises the false-positive rate): a comparison whose conditional power at ``max`` under the
observed trend falls below ``futility`` stops.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize
from scipy import stats as sps

GRID = 401  # points of the grid the score's density is integrated on between looks (Simpson's rule)
FUTILITY = 0.1  # a comparison stops as futile when its conditional power at max seeds falls below this
DECIDED, FUTILE, CONTINUE = "decided", "futile", "continue"


def obrien_fleming_spent(fraction: float, alpha: float) -> float:
    """The Lan-DeMets O'Brien-Fleming-type spending function, applied to each tail at alpha / 2 (as ``gsDesign``'s
    ``sfLDOF`` and ``ldbounds`` do): the two-sided level spent by information fraction ``fraction`` in (0, 1],
    2 * 2 (1 - Phi(z_{1 - alpha/4} / sqrt(fraction))); all of ``alpha`` at 1."""
    if fraction <= 0:
        return 0.0
    return float(4 * sps.norm.sf(sps.norm.isf(alpha / 4) / math.sqrt(min(fraction, 1.0))))


def pocock_spent(fraction: float, alpha: float) -> float:
    """The Lan-DeMets Pocock-type spending function (``gsDesign``'s ``sfLDPocock``): alpha ln(1 + (e - 1) fraction),
    spending more early than O'Brien-Fleming (earlier stops when a difference is large, a higher final boundary)."""
    if fraction <= 0:
        return 0.0
    return float(alpha * math.log(1 + (math.e - 1) * min(fraction, 1.0)))


#: The alpha-spending functions a seeds plan may name (``seeds: {spending: ...}``).
SPENDING = {"obrien-fleming": obrien_fleming_spent, "pocock": pocock_spent}
Spending = Literal["obrien-fleming", "pocock"]


def _simpson(low: float, high: float, points: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Grid points on [low, high] and their Simpson weights (``points`` odd)."""
    x = np.linspace(low, high, points)
    w = np.ones(points)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return x, w * (high - low) / (points - 1) / 3


@dataclass(frozen=True)
class Stage:
    """What a look leaves for the next: the sub-density of the score S = Z sqrt(t) on the continuation region
    (never stopped so far), as grid points, weights times density, and the information fraction."""

    x: np.ndarray
    mass: np.ndarray
    fraction: float

    def tails(self, c: float, fraction: float) -> float:
        """P(no crossing so far, |S at ``fraction``| >= c), S growing by N(0, fraction - self.fraction)."""
        sd = math.sqrt(fraction - self.fraction)
        return float(np.sum(self.mass * (sps.norm.sf((c - self.x) / sd) + sps.norm.cdf((-c - self.x) / sd))))

    def next(self, c: float, fraction: float) -> Stage:
        """The sub-density at ``fraction`` on (-c, c), continuing from this one."""
        sd = math.sqrt(fraction - self.fraction)
        x, w = _simpson(-c, c)
        density = (self.mass[None, :] * sps.norm.pdf((x[:, None] - self.x[None, :]) / sd) / sd).sum(axis=1)
        return Stage(x, w * density, fraction)


@functools.lru_cache(maxsize=64)
def _boundaries(looks: tuple[int, ...], most: int, level: float, spending: Spending = "obrien-fleming"
                ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[Stage, ...]]:
    """The design's boundaries, spent levels and continuation sub-densities (computed once per design: a replay
    judges every comparison at every round)."""
    fractions = [n / most for n in looks]
    bounds, spent, stages = [], [], []
    previous = 0.0
    stage = Stage(np.zeros(1), np.ones(1), 0.0)  # S = 0 at the start, with probability 1
    for fraction in fractions:
        target = SPENDING[spending](fraction, level) - previous
        root = math.sqrt(fraction)
        if target <= 1e-15:
            c = math.inf
        else:
            c = optimize.brentq(lambda z, s=stage, r=root, f=fraction, a=target: s.tails(z * r, f) - a,
                                1e-6, 40.0, xtol=1e-10)
        bounds.append(c)
        spent.append(target)
        previous += target
        stage = stage.next(min(c, 12.0) * root, fraction)
        stages.append(stage)
    return tuple(bounds), tuple(spent), tuple(stages)


@dataclass(frozen=True)
class Design:
    """A group-sequential design: looks at start, start + step, ..., max paired seeds, two-sided level ``alpha``
    across ``family`` comparisons (each gets alpha / family), O'Brien-Fleming- or Pocock-type spending, non-binding
    futility."""

    start: int
    most: int
    step: int
    alpha: float = 0.05
    family: int = 1
    futility: float = FUTILITY
    spending: Spending = "obrien-fleming"

    @property
    def looks(self) -> tuple[int, ...]:
        """The planned seed counts at which a cell is looked at: start, start + step, ... and max."""
        looks = list(range(self.start, self.most, self.step)) + [self.most]
        return tuple(dict.fromkeys(looks))

    @property
    def level(self) -> float:
        """Each comparison's two-sided level: the family's alpha split equally (Bonferroni)."""
        return self.alpha / max(self.family, 1)

    @property
    def _stages(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[Stage, ...]]:
        """Per look: the z boundary, the level spent there, and the continuation sub-density after it."""
        return _boundaries(self.looks, self.most, self.level, self.spending)


    @property
    def bounds(self) -> tuple[float, ...]:
        """The z boundary at each look (two-sided: |z| >= bound decides)."""
        return self._stages[0]

    def nominal(self, look: int) -> float:
        """The two-sided nominal level of a single test at ``look`` (index): 2 (1 - Phi(bound))."""
        return float(2 * sps.norm.sf(self.bounds[look]))

    def look_of(self, n: int) -> int | None:
        """The index of the look at ``n`` paired seeds, or None when ``n`` is not a planned look."""
        return self.looks.index(n) if n in self.looks else None

    def stagewise_p(self, look: int, z: float) -> float:
        """The stagewise-ordered p-value (one comparison) of stopping at ``look`` with |z|: the level spent at
        the earlier looks plus P(no earlier crossing, |Z| >= |z| here) under no difference."""
        bounds, spent, stages = self._stages
        fraction = self.looks[look] / self.most
        before = stages[look - 1] if look else Stage(np.zeros(1), np.ones(1), 0.0)
        return min(1.0, sum(spent[:look]) + before.tails(abs(z) * math.sqrt(fraction), fraction))

    def conditional_power(self, look: int, z: float | np.ndarray) -> float | np.ndarray:
        """The chance of crossing the final boundary at max seeds given |z| at ``look``, if the observed trend
        (drift z / sqrt(t)) is the truth; 0 at the final look unless already across. Elementwise for an array."""
        t = self.looks[look] / self.most
        z = np.abs(z)
        if t >= 1:
            power = (z >= self.bounds[-1]).astype(float)
        else:
            power = sps.norm.sf((self.bounds[-1] - z * math.sqrt(t) - z / math.sqrt(t) * (1 - t)) / math.sqrt(1 - t))
        return float(power) if np.ndim(power) == 0 else power

    def states(self, look: int, z: np.ndarray) -> np.ndarray:
        """The decisions at ``look`` (index) for matched z values, elementwise: DECIDED across the boundary, FUTILE
        when the conditional power at max is below ``futility`` (before max), else CONTINUE. ``judge`` takes one."""
        futile = (self.conditional_power(look, z) < self.futility) & (self.looks[look] < self.most)
        return np.where(z >= self.bounds[look], DECIDED, np.where(futile, FUTILE, CONTINUE))


def matched_z(p: float) -> float:
    """The normal deviate with the same two-sided p-value as a t statistic (0 for p = 1, NaN for NaN)."""
    if math.isnan(p):
        return math.nan
    return float(sps.norm.isf(max(p, 1e-300) / 2))


@dataclass(frozen=True)
class Look:
    """One comparison at one look: the look's index, the matched z, the decision and the numbers behind it."""

    look: int | None
    z: float
    state: str  # DECIDED, FUTILE or CONTINUE
    p: float  # stagewise-ordered, times the family (Bonferroni), capped at 1; NaN when no test could be made
    conditional_power: float


def judge(design: Design, n: int, p_t: float) -> Look:
    """The sequential decision for a paired t-test with two-sided p-value ``p_t`` over ``n`` pairs: decided when it
    crosses this look's boundary, futile when its conditional power at max is below the design's threshold (or
    when no t-test can be made and n is at a look: NaN p), else continue. ``n`` off the planned looks (a cell
    short of runs) continues and says nothing."""
    look = design.look_of(n)
    if look is None or math.isnan(p_t):
        return Look(look, math.nan, CONTINUE, math.nan, math.nan)
    z = matched_z(p_t)
    p = min(1.0, design.family * design.stagewise_p(look, z))
    return Look(look, z, str(design.states(look, np.array([z]))[0]), p, design.conditional_power(look, z))
