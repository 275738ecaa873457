"""The most runs ANY sequential rule can save on one paired comparison: a linear program over every scale-invariant
sequential test, whatever its looks, boundaries, futility rule or statistic, beside the fixed paired t-test at
``max`` seeds. It answers whether issue 33's target (at least 40% fewer runs than ``max`` seeds at every true
difference, at most 5 points less power) is out of reach of the harness's design or of every design.

The problem. Paired differences x_1, x_2, ... are N(d sigma, sigma^2) with sigma unknown; a rule looks after each
seed and stops with "m1 ahead", "m1 behind" or "undecided", at ``max`` seeds at the latest. Its level (each tail at
most alpha/2: a false winner at most alpha), power and mean seeds must hold whatever sigma is (the harness does not
know the seed noise), so by the Hunt-Stein theorem for the scale group (averaging a rule over scales keeps all
three) the best rules are scale-invariant: they see the data only through the direction x / |x|, and the
likelihood ratio of the direction depends on it only through T_n = S_n / sqrt(Q_n) (S_n the sum, Q_n the sum of
squares; the paired t statistic is a monotone function of T_n). Under the null T_n is a Markov chain:
T_{n+1} = T_n cos(phi) + sin(phi) with tan(phi) sqrt(n) a Student t with n degrees of freedom, independent of the
past (the radius |x| of a centred normal sample is independent of its direction). Under a difference d the law of
the path is the null's times the likelihood ratio

    L_d(n, T) = exp(-n d^2 / 2) E[exp(d T chi_n)]      (chi_n a chi variable with n degrees of freedom),

so every rule's level, power and mean seeds at every d are linear in the null probabilities of reaching each
(n, T) and stopping there one way or another. Minimising the largest mean seeds over the differences, subject to the
level and to a power of at least the fixed test's minus ``loss`` at every difference, is a linear program (T_n on a
grid of ``points`` per look, the ratio made a martingale of the grid chain; randomised rules included); its optimum
bounds every rule, the harness's included. scipy's HiGHS solves it; scipy.stats gives the t and noncentral t laws.

    python benchmarks/sequential_bound.py                            # max 10: the bound, and what would move it
    python benchmarks/sequential_bound.py --points 801 --maxima 10 15 --losses 0.05 0.1   # finer grid, fewer LPs
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy import stats as sps
from scipy.optimize import linprog
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report.sequential import Design  # noqa: E402

EFFECTS = (0.0, 0.5, 1.0, 2.0)  # issue 33's true differences, in paired-difference sds
ALPHA = 0.05
PLANS = ((3, 2), (3, 1))  # (start, step) of the plans whose looks the bound is also taken at


@dataclass(frozen=True)
class Chain:
    """The null law of T_n, n = 1 .. most: each look's grid, the first look's masses, the kernels between looks."""

    grids: list[np.ndarray]
    first: np.ndarray
    kernels: list[sparse.csr_matrix]  # kernels[k][i, j]: P(T_{k+2} = grids[k+1][j] | T_{k+1} = grids[k][i])

    @property
    def most(self) -> int:
        return len(self.grids)


def invariant_chain(most: int, points: int = 401, angles: int = 20001) -> Chain:
    """T_n on ``points`` grid points in [-sqrt n, sqrt n] (two, -1 and 1, at the first seed); each kernel row from
    ``angles`` exact t-probability slices of phi in (-pi/2, pi/2), each slice's mass put on its nearest grid point."""
    grids = [np.array([-1.0, 1.0])] + [np.linspace(-math.sqrt(n), math.sqrt(n), points) for n in range(2, most + 1)]
    edges = np.linspace(-math.pi / 2, math.pi / 2, angles)
    middle = (edges[1:] + edges[:-1]) / 2
    cos, sin = np.cos(middle), np.sin(middle)
    kernels = []
    for n in range(1, most):
        mass = np.diff(sps.t.cdf(np.tan(edges) * math.sqrt(n), n))
        source, target = grids[n - 1], grids[n]
        step = target[1] - target[0]
        rows = np.zeros((len(source), len(target)))
        for i, t in enumerate(source):
            j = np.clip(np.rint((t * cos + sin - target[0]) / step).astype(int),
                        0, len(target) - 1)
            rows[i] = np.bincount(j, weights=mass, minlength=len(target))
        rows[rows < 1e-15] = 0.0
        kernels.append(sparse.csr_matrix(rows))
    return Chain(grids, np.array([0.5, 0.5]), kernels)


def likelihood_ratio(n: int, T: np.ndarray, effect: float) -> np.ndarray:
    """L_d(n, T): the density of the direction under a difference of ``effect`` sds over its null density."""
    c = np.linspace(1e-9, math.sqrt(n) + 8 + 3 * effect * math.sqrt(n), 8000)  # chi_n's support, far enough out
    log_density = (n - 1) * np.log(c) - c ** 2 / 2
    return np.exp(-n * effect ** 2 / 2 + logsumexp(log_density[None, :] + effect * T[:, None] * c[None, :], axis=1)
                  - logsumexp(log_density))


def tilts(chain: Chain, effect: float) -> list[np.ndarray]:
    """The likelihood ratio at every look made a martingale of the grid chain: exact at ``max``, each earlier look's
    the chain's expectation of the next (as the true ratio is of the true law), scaled so the first look's mean is 1.
    Under these the grid is a probability law at every difference, so a rule's mean seeds and power add up."""
    ratio = [likelihood_ratio(chain.most, chain.grids[-1], effect)]
    for kernel in reversed(chain.kernels):
        ratio.insert(0, kernel @ ratio[0])
    scale = float(chain.first @ ratio[0])
    return [r / scale for r in ratio]


def fixed_power(most: int, effect: float, alpha: float = ALPHA) -> float:
    """The fixed paired t-test at ``most`` seeds: P(m1 resolved ahead) at ``effect`` sds (alpha/2 under the null)."""
    critical = sps.t.ppf(1 - alpha / 2, most - 1)
    return float(sps.nct.sf(critical, most - 1, effect * math.sqrt(most)) if effect else alpha / 2)


def chain_power(chain: Chain, effect: float, alpha: float = ALPHA) -> float:
    """The same fixed test computed through the chain: how far the grid is from the exact law."""
    mass = chain.first
    for kernel in chain.kernels:
        mass = kernel.T @ mass
    n, T = chain.most, chain.grids[-1]
    critical = sps.t.ppf(1 - alpha / 2, n - 1)
    return float((mass * tilts(chain, effect)[-1] * (T > critical * math.sqrt(n / (n - 1 + critical ** 2)))).sum())


@dataclass(frozen=True)
class Bound:
    """The best rule's mean seeds and chance of m1 resolved ahead per difference (at 0: wrongly), None where no rule
    reaches the power asked."""

    seeds: dict[float, float] | None
    power: dict[float, float] | None

    @property
    def worst(self) -> float:
        return max(self.seeds.values()) if self.seeds else math.inf


def bound(chain: Chain, effects: tuple[float, ...] = EFFECTS, loss: float = 0.05, alpha: float = ALPHA,
          looks: tuple[int, ...] | None = None, power: dict[float, float] | None = None) -> Bound:
    """Minimise the largest mean seeds over ``effects`` among rules that look only at ``looks`` (every seed if None),
    keep each tail at alpha/2 and reach at least ``power[d]`` (default: the fixed test's minus ``loss``) at each
    difference d > 0. Variables per look and grid point: the null probability of being there and going on, stopping
    with m1 ahead, with m1 behind, or undecided."""
    most, sizes = chain.most, [len(g) for g in chain.grids]
    looks = tuple(range(1, most + 1)) if looks is None else looks
    offsets = np.cumsum([0] + [4 * s for s in sizes])
    total = int(offsets[-1]) + 1  # the last variable: the largest mean seeds

    def index(n: int, kind: int) -> np.ndarray:  # kind 0 go on, 1 ahead, 2 behind, 3 undecided
        return offsets[n - 1] + kind * sizes[n - 1] + np.arange(sizes[n - 1])

    blocks, rhs = [], []
    for n in range(1, most + 1):  # reaching (n, T): the mass the last look sent on, split four ways
        split = sparse.hstack([sparse.identity(sizes[n - 1])] * 4)
        row = [sparse.csr_matrix((sizes[n - 1], int(offsets[n - 1])))]
        if n > 1:
            row = [sparse.csr_matrix((sizes[n - 1], int(offsets[n - 2]))), -chain.kernels[n - 2].T,
                   sparse.csr_matrix((sizes[n - 1], 3 * sizes[n - 2]))]
        row += [split, sparse.csr_matrix((sizes[n - 1], total - int(offsets[n])))]
        blocks.append(sparse.hstack(row))
        rhs.append(chain.first if n == 1 else np.zeros(sizes[n - 1]))
    equal = sparse.vstack(blocks).tocsr()
    bounds = [(0.0, None)] * total
    for n in range(1, most + 1):
        for kind in ((1, 2, 3) if n not in looks else ()) + ((0,) if n == most else ()):
            for j in index(n, kind):
                bounds[j] = (0.0, 0.0)
    ratio = {d: tilts(chain, d) for d in effects}
    power = power or {d: fixed_power(most, d, alpha) - loss for d in effects if d > 0}
    def row(kind: int, weights: list[np.ndarray] | list[float], scale: float = 1.0) -> np.ndarray:
        """One inequality row: ``scale`` times the ``kind`` variables, each look's weighted by ``weights``."""
        out = np.zeros(total)
        for n in range(1, most + 1):
            out[index(n, kind)] = scale * weights[n - 1]
        return out

    upper = [row(kind, [1.0] * most) for kind in (1, 2)]  # each tail at alpha / 2 under the null
    limits = [alpha / 2, alpha / 2]
    for d in effects:
        if d > 0:  # power: m1 resolved ahead
            upper.append(row(1, ratio[d], -1.0))
            limits.append(-power[d])
        upper.append(row(0, ratio[d]))  # mean seeds = 1 + the chance of going on after each seed <= the largest
        upper[-1][-1] = -1.0
        limits.append(-1.0)
    objective = np.zeros(total)
    objective[-1] = 1.0
    result = linprog(objective, A_ub=np.array(upper), b_ub=limits, A_eq=equal, b_eq=np.concatenate(rhs),
                     bounds=bounds, method="highs")
    if result.status == 2:  # infeasible: no rule reaches the power asked
        return Bound(None, None)
    if result.status != 0:
        raise RuntimeError(f"the linear program did not solve: {result.message}")
    x = result.x
    seeds = {d: 1 + sum(float(ratio[d][n - 1] @ x[index(n, 0)]) for n in range(1, most + 1)) for d in effects}
    resolved = {d: sum(float(ratio[d][n - 1] @ x[index(n, 1)]) for n in range(1, most + 1)) for d in effects}
    return Bound(seeds, resolved)


def report(most: int = 10, losses: tuple[float, ...] = (0.05, 0.10, 0.20), maxima: tuple[int, ...] = (10, 15, 20),
           points: int = 401, effects: tuple[float, ...] = EFFECTS) -> Iterator[str]:
    """The bound at ``most`` (per difference), then by plan looks, then by power lost and max, as printable lines,
    each as soon as its linear programs are solved."""
    name = {d: "null" if d == 0 else f"{d:g} sd" for d in effects}
    chains = {m: invariant_chain(m, points) for m in sorted({most, *maxima})}
    chain = chains[most]
    yield (f"The grid's error ({points} points per look): the fixed paired t-test at {most} seeds through the chain "
           "against its exact law, P(m1 resolved ahead): "
           + ", ".join(f"{name[d]} {chain_power(chain, d):.4f} / {fixed_power(most, d):.4f}" for d in effects))
    best = bound(chain, effects, 0.05)
    yield from ["", f"The best rule at max {most} (each tail at {ALPHA / 2:g}, at most 5 points of power below the "
                "fixed test at every difference, looks at every seed, any boundaries or futility):",
                "difference   mean seeds   runs saved   power   fixed power   (null: m1 wrongly ahead)"]
    # the grid's error can put a power a hair above 1 at 2 sd: shown at most 1
    yield from (f"{name[d]:>10}   {best.seeds[d]:>10.2f}   {1 - best.seeds[d] / most:>10.0%}   "
                f"{min(best.power[d], 1.0):>5.3f}   {min(fixed_power(most, d), 1.0):>11.3f}"
                for d in effects)
    yield (f"At its worst difference it saves {1 - best.worst / most:.0%} of the runs: "
           + ("the target (40% everywhere) is within reach." if best.worst <= 0.6 * most else
              "no rule of any kind meets the target (40% everywhere at most 5 points less power)."))
    yield from ["", "Looks restricted to a plan's (the rest as above): runs saved at the worst difference, looking at"]
    yield f"  {'every seed from 1':<44} {1 - best.worst / most:>4.0%}"
    for start, step in PLANS:
        looks = Design(start, most, step).looks
        label = f"{', '.join(map(str, looks))} (start {start}, step {step})"
        yield f"  {label:<44} {1 - bound(chain, effects, 0.05, looks=looks).worst / most:>4.0%}"
    yield from ["", "What would move it: runs saved at the worst difference, by max seeds and power lost",
                "power lost  " + "  ".join(f"{f'max {m}':>7}" for m in maxima)]
    for loss in losses:
        row = [bound(chains[m], effects, loss) for m in maxima]
        yield f"{loss * 100:>7.0f} pts  " + "  ".join(
            f"{1 - b.worst / m:>7.0%}" if b.seeds else f"{'none':>7}" for b, m in zip(row, maxima))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", dest="most", type=int, default=10, help="the plan's max seeds (default 10)")
    parser.add_argument("--maxima", type=int, nargs="+", default=[10, 15, 20], help="max seeds to compare")
    parser.add_argument("--losses", type=float, nargs="+", default=[0.05, 0.10, 0.20],
                        help="power given up against the fixed test, as fractions (default 0.05 0.10 0.20)")
    parser.add_argument("--points", type=int, default=401, help="grid points per look (default 401; 801 agrees)")
    args = parser.parse_args(argv)
    if args.most < 3 or args.points < 21 or any(m < 3 for m in args.maxima):
        parser.error("--max and --maxima need at least 3 seeds and --points at least 21")
    began = time.perf_counter()
    for line in report(args.most, tuple(args.losses), tuple(args.maxima), args.points):
        print(line, flush=True)
    print(f"\n{time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
