"""Seeds grown in rounds (issue 33): the group-sequential design against published boundaries and a simulation of its
level, and the round replay on generated result trees with known effects (decided cells stop, undecided ones grow at
every LR, futile ones stop)."""
from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

from bench.report import load_results  # noqa: E402
from bench.report.rounds import (  # noqa: E402
    DECIDED_WHY,
    FUTILE_WHY,
    MAX_WHY,
    Rounds,
    cell_lrs,
    family_size,
    replay,
)
from bench.report.sequential import (  # noqa: E402
    DECIDED,
    FUTILE,
    Design,
    judge,
    matched_z,
    obrien_fleming_spent,
    pocock_spent,
)
from bench.report.synthetic import write_synthetic_results  # noqa: E402
from tests.conftest import benchmark  # noqa: E402

LRS = (0.01, 0.001)

# ----------------------------------------------------------------------------------------- the design


def test_obrien_fleming_boundaries_match_published_values() -> None:
    # Lan-DeMets O'Brien-Fleming spending, 5 equally spaced looks, two-sided 0.05 (0.025 a tail): R's gsDesign
    # (sfLDOF) and ldbounds give 4.877, 3.357, 2.680, 2.290, 2.031
    design = Design(start=2, most=10, step=2)
    assert design.looks == (2, 4, 6, 8, 10)
    assert design.bounds == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=2e-3)
    assert obrien_fleming_spent(1.0, 0.05) == pytest.approx(0.05)
    assert obrien_fleming_spent(0.2, 0.05) == pytest.approx(4 * 2.69e-7, rel=0.02)  # 4 (1 - Phi(2.2414 / sqrt 0.2))


def test_pocock_spends_more_early_and_holds_the_level() -> None:
    # Lan-DeMets Pocock spending (gsDesign's sfLDPocock), 5 equal looks, two-sided 0.05: the first look spends
    # 0.05 ln(1 + (e - 1) 0.2) = 0.01477, so its boundary is z_{1 - 0.01477/2} = 2.437 (gsDesign: 2.438); the later
    # boundaries fall slowly and the last stays well above O'Brien-Fleming's 2.031
    pocock, obf = Design(2, 10, 2, spending="pocock"), Design(2, 10, 2)
    assert pocock_spent(0.2, 0.05) == pytest.approx(0.014769, abs=1e-6) and pocock_spent(1.0, 0.05) == 0.05
    assert pocock.bounds[0] == pytest.approx(2.437, abs=2e-3)
    assert all(a >= b for a, b in zip(pocock.bounds, pocock.bounds[1:])) and pocock.bounds[-1] > 2.3
    assert pocock.bounds[0] < obf.bounds[0] and pocock.bounds[-1] > obf.bounds[-1]
    fractions = np.array(pocock.looks) / pocock.most  # 40,000 null Brownian paths: crossing chance is alpha
    rng = np.random.default_rng(1)
    steps = rng.normal(size=(40_000, len(fractions))) * np.sqrt(np.diff(np.concatenate([[0], fractions])))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    assert (np.abs(z) >= np.array(pocock.bounds)).any(axis=1).mean() == pytest.approx(0.05, abs=0.004)
    # the same p judged at the first look: Pocock decides where O'Brien-Fleming waits
    assert judge(pocock, 2, 0.005).state == DECIDED and judge(obf, 2, 0.005).state != DECIDED


def test_the_vectorised_decisions_are_judges() -> None:
    design = Design(3, 10, 2, futility=0.2)
    p = np.concatenate([np.logspace(-6, 0, 200), [0.3, 0.9]])
    for look, n in enumerate(design.looks):
        z = np.array([matched_z(v) for v in p])
        assert list(design.states(look, z)) == [judge(design, n, v).state for v in p]
        assert design.conditional_power(look, z) == pytest.approx([design.conditional_power(look, v) for v in z])


def test_one_look_is_the_fixed_test_and_the_family_splits_alpha() -> None:
    single = Design(start=5, most=5, step=1)
    assert single.looks == (5,) and single.bounds[0] == pytest.approx(1.959964, abs=1e-5)
    assert single.stagewise_p(0, 1.959964) == pytest.approx(0.05, abs=1e-5)
    three = Design(start=5, most=5, step=1, family=3)
    assert three.bounds[0] == pytest.approx(2.393980, abs=1e-5)  # z_{1 - 0.05/6}
    assert Design(3, 10, 2).looks == (3, 5, 7, 9, 10) and Design(3, 10, 3).looks == (3, 6, 9, 10)


def test_the_boundaries_hold_the_level_on_brownian_paths() -> None:
    # 40,000 null paths of the z statistic at the looks (exact normal increments): the chance of ever crossing is
    # the design's alpha (MC standard error 0.0011)
    design = Design(start=3, most=10, step=2)
    fractions = np.array(design.looks) / design.most
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(40_000, len(fractions))) * np.sqrt(np.diff(np.concatenate([[0], fractions])))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    crossed = (np.abs(z) >= np.array(design.bounds)).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=0.004)


def test_stagewise_p_is_below_the_level_exactly_when_a_boundary_is_crossed() -> None:
    design = Design(start=3, most=10, step=2)
    for look, bound in enumerate(design.bounds):  # at the boundary: the level spent so far, by construction
        spent = obrien_fleming_spent(design.looks[look] / design.most, 0.05)
        assert design.stagewise_p(look, bound) == pytest.approx(spent, abs=1e-5)
        assert design.stagewise_p(look, bound - 0.05) > spent > design.stagewise_p(look, bound + 0.05)
    assert design.stagewise_p(len(design.looks) - 1, design.bounds[-1] - 0.01) > 0.05


def test_judge_decides_continues_and_calls_futile() -> None:
    design = Design(start=3, most=10, step=2)
    assert judge(design, 5, 0.001).state == DECIDED  # z 3.29 > 2.78
    assert judge(design, 3, 0.001).state != DECIDED  # z 3.29 < 3.58: three seeds need more
    assert judge(design, 3, 0.9).state == FUTILE  # no trend at all: cannot be decided by 10 seeds
    assert judge(design, 3, 0.15).state == "continue"
    assert judge(design, 10, 0.9).state == "continue"  # at max the cell stops for max, not futility
    assert judge(design, 4, 0.001).state == "continue" and judge(design, 4, 0.001).look is None  # off the looks
    assert matched_z(0.05) == pytest.approx(1.959964, abs=1e-5)


# ----------------------------------------------------------------------------------------- rounds on generated trees


def noisy(means: dict[str, float], sd: float = 0.4) -> Callable[[str, float, float, int], float]:
    """Accuracy (fraction) of a run: its method's mean, 3 points less at the low LR, plus seeded normal noise."""
    def accuracy(method: str, ratio: float, lr: float, seed: int) -> float:
        noise = random.Random(f"{method}/{ratio}/{lr}/{seed}").gauss(0, sd)
        return (means[method] - (3.0 if lr == min(LRS) else 0.0) + noise) / 100
    return accuracy


def grow(root: Path, means: dict[str, float], start: int = 3, most: int = 10, step: int = 2,
         ratios: tuple[float, ...] = (0.9,), statuses: dict[tuple[str, float, float, int], str] | None = None
         ) -> tuple[Rounds, list[tuple[str, float, float, int]]]:
    """Drive the rounds to the end on a generated tree: each round writes the runs the replay asks for (with the
    ``statuses`` given, e.g. a diverged run). Returns the final state and every run written, in order."""
    methods = list(means)
    lrs = cell_lrs((f"{r:g}", m, lr) for r in ratios for m in methods for lr in LRS)
    accuracy, written = noisy(means), []
    while True:
        runs = load_results(root).runs if (root / "sim").exists() else pd.DataFrame(
            columns=["ratio", "method", "lr", "seed", "status"])
        state = replay(runs, lrs, methods, start, most, step)
        if state.finished:
            return state, written
        for ratio, method, lr, seed in state.missing:
            write_synthetic_results(root, "sim", [method], [float(ratio)], [lr], [seed], epochs=2, accuracy=accuracy,
                                    validation=accuracy, statuses={k: v for k, v in (statuses or {}).items()
                                                                   if k == (method, float(ratio), lr, seed)})
            written.append((method, float(ratio), lr, seed))


def test_decided_cell_stops_while_an_undecided_one_grows_at_every_lr(tmp_path: Path) -> None:
    # b is the reference (best); a is 3 points behind (decided at the second look), c 0.35 behind (undecided)
    state, written = grow(tmp_path, {"a": 80.0, "b": 83.0, "c": 82.65})
    assert state.seeds[("0.9", "a")] == 5 and state.why[("0.9", "a")] == DECIDED_WHY
    assert state.seeds[("0.9", "c")] > 5 and state.seeds[("0.9", "b")] == state.seeds[("0.9", "c")]
    assert not [w for w in written if w[0] == "a" and w[3] >= 5]  # the decided cell got no more seeds
    for method in "abc":  # every round added its seeds at every LR of the method
        mine = {(lr, seed) for m, _, lr, seed in written if m == method}
        assert mine == {(lr, seed) for lr in LRS for seed in range(state.seeds[("0.9", method)])}
    assert len(written) == len(set(written))  # no run asked for twice
    assert state.history[0] == {("0.9", m): 3 for m in "abc"} and state.history[1][("0.9", "a")] == 5
    a = next(c for c in state.assessment.comparisons if c.method == "a")
    assert a.resolved and a.correction == "sequential" and a.test.n == 5


def test_no_difference_stops_as_futile_long_before_max(tmp_path: Path) -> None:
    state, written = grow(tmp_path, {"a": 80.0, "b": 80.0})
    assert set(state.why.values()) == {FUTILE_WHY} and max(state.seeds.values()) < 10
    assert not any(c.resolved for c in state.assessment.comparisons)


def test_a_cell_stops_at_max_when_still_undecided(tmp_path: Path) -> None:
    state, _ = grow(tmp_path, {"a": 80.0, "b": 80.25}, start=3, most=5, step=1)
    assert state.seeds == {("0.9", "a"): 5, ("0.9", "b"): 5}
    assert set(state.why.values()) == {MAX_WHY}


def test_an_lr_choice_a_divergence_decided_keeps_growing(tmp_path: Path) -> None:
    """a's better LR diverges at seed 1, so a is retrained at its lower LR while its converged seeds alone would
    choose the other: no t-test yet, but more seeds can settle the choice (fair_mlp_adaptive's random was resolved at
    10 seeds after this rule called it futile at 5), so the cells grow to max instead of stopping as futile."""
    high = max(LRS)
    state, written = grow(tmp_path, {"a": 80.0, "b": 83.0}, start=3, most=5, step=2,
                          statuses={("a", 0.9, high, 1): "diverged"})
    a = next(c for c in state.assessment.comparisons if c.method == "a")
    assert a.state == "LR choice hinges on a divergence" and not a.resolved
    assert state.seeds == {("0.9", "a"): 5, ("0.9", "b"): 5} and set(state.why.values()) == {MAX_WHY}
    assert ("a", 0.9, high, 4) in written


def test_the_family_is_every_comparison_of_every_ratio() -> None:
    cells = [("0.5", "a"), ("0.5", "b"), ("0.5", "c"), ("0.9", "a"), ("0.9", "b")]
    assert family_size(cells) == 3


def test_a_waiting_round_names_the_runs_it_needs(tmp_path: Path) -> None:
    accuracy = noisy({"a": 80.0, "b": 83.0})
    write_synthetic_results(tmp_path, "sim", ["a", "b"], [0.9], list(LRS), [0, 1], epochs=2, accuracy=accuracy,
                            validation=accuracy)
    lrs = cell_lrs(("0.9", m, lr) for m in "ab" for lr in LRS)
    state = replay(load_results(tmp_path).runs, lrs, ["a", "b"], 3, 10, 2)
    assert state.done == 0 and not state.finished and state.assessment is None
    assert sorted(state.missing) == sorted(("0.9", m, lr, 2) for m in "ab" for lr in LRS)
    assert math.isnan(judge(Design(3, 10, 2), 3, math.nan).p)


def test_the_adaptive_calibration_runs_through_the_round_code() -> None:
    """A smoke run of benchmarks/adaptive_calibration.py (docs/reports.md prints its full output): a few suites per
    difference, its rows well formed, and a 2-sd difference found by both designs with fewer seeds adaptively."""
    module = benchmark("adaptive_calibration")
    frame = module.template(2, 6)
    strong = module.simulate(frame, 2, 2.0, 0.4, 3, 6, 1, 0.1, 4, np.random.default_rng(0))
    assert strong["fixed"] == 1.0 and strong["adaptive"] >= 0.75 and 3 <= strong["seeds"] < 6
    lines = module.adaptive_section(reps=2, effects=(0.0,), most=5, step=1)
    assert lines[1].startswith("effect (diff sd)") and lines[2].split()[0] == "0" and "(false winners)" in lines[2]
    # the frontier screen: futility is what saves runs under the null; without it a plan runs nearly every seed,
    # and a 2-sd difference is decided early by either spending (Pocock earlier)
    draws = {d: np.random.default_rng(i).normal(d, 1, (300, 10)) for i, d in enumerate((0.0, 2.0))}
    none, some = module.screen(Design(3, 10, 1, futility=0.0), draws), module.screen(Design(3, 10, 1), draws)
    assert none[0.0][1] > 9.5 and some[0.0][1] < 6.5 and some[0.0][0] <= none[0.0][0]
    pocock = module.screen(Design(3, 10, 1, spending="pocock"), draws)
    assert some[2.0][0] > 0.95 and pocock[2.0][1] < some[2.0][1] < 7
    frontier = module.frontier_section(reps=40, effects=(0.0, 1.0), starts=(3,), steps=(2,), futilities=(0.0, 0.1))
    assert len(frontier) >= 2 + 4 + 1 and len(frontier[2].split()) == 4 + 2 * 3
    assert any(line.split()[1:4] == ["of", "4", "plans"] for line in frontier[6:])


def test_the_sequential_bound_is_a_bound_on_real_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/sequential_bound.py's linear program over every scale-invariant sequential rule: its chain gives the
    exact t-test's power, its trivial corners are exact, and the harness's own design, a rule it ranges over, never
    spends fewer seeds than the optimum at the power the design reached (a wrong likelihood ratio or kernel breaks
    one of these)."""
    bound = benchmark("sequential_bound")
    adaptive = benchmark("adaptive_calibration")
    most, effects = 6, (0.0, 1.0, 2.0)
    chain = bound.invariant_chain(most, points=121)
    for d in (0.0, 0.5, 1.0):
        assert bound.chain_power(chain, d) == pytest.approx(bound.fixed_power(most, d), abs=0.01)
    # nothing asked of the power: stop after the first seed at every difference
    anything = bound.bound(chain, effects, loss=1.0)
    assert max(anything.seeds.values()) == pytest.approx(1.0, abs=1e-6)
    # one look at max and the fixed test's own power: the fixed test itself, max seeds everywhere
    fixed_only = bound.bound(chain, effects, looks=(most,), power={d: bound.chain_power(chain, d) - 1e-4
                                                                     for d in effects if d})
    assert fixed_only.worst == pytest.approx(most, abs=1e-6)
    # more power than any rule has: infeasible, said as such
    assert bound.bound(chain, effects, power={1.0: 0.99, 2.0: 0.99}).seeds is None
    # the harness's design (start 3, step 1, futility 0.1) at the power it reaches: the optimum at its looks spends no
    # more seeds at its worst difference, and looking at every seed can only help
    draws = {d: np.random.default_rng(i).normal(d, 1, (3000, most)) for i, d in enumerate(effects)}
    design = Design(3, most, 1, futility=0.1)
    reached = adaptive.screen(design, draws)
    harness = max(seeds for _, seeds in reached.values())
    # at the level and power it reached (its t-to-z match is a little liberal at 2-5 degrees of freedom), less two
    # Monte-Carlo standard errors
    level, asked = reached[0.0][0] + 0.01, {d: reached[d][0] - 0.02 for d in effects if d}
    at_looks = bound.bound(chain, effects, alpha=level, looks=design.looks, power=asked)
    anywhere = bound.bound(chain, effects, alpha=level, power=asked)
    assert anywhere.worst <= at_looks.worst + 1e-6 <= harness + 0.05
    assert at_looks.worst > 3.0  # and the optimum does not come for free
    # verdict_calibration.py's bound section prints the same report, the plans' looks taken at its max
    calibration = benchmark("verdict_calibration")
    assert calibration.main(["--sections", "bound", "--adaptive-max", "6", "--bound-points", "41",
                             "--bound-maxima", "6", "--bound-losses", "0.05", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "no rule of any kind meets the target" in out and "3, 5, 6 (start 3, step 2)" in out
