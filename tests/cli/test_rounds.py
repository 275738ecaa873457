"""``bench.py run SUITE --until-decided`` (issue 33): the round controller driven on generated results (a stand-in
executor writes synthetic results with known effects under the runs' real ids), killed between and inside rounds,
resumes to the same seeds and numbers without redoing a run; one real tiny suite end to end."""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.cli import build_parser, main, record_suite
from bench.cli.rounds import current_state, run_rounds
from bench.core.errors import ConfigError
from bench.report.synthetic import write_synthetic_results
from bench.suite.grid import Run
from bench.suite.session import load_runs
from tests.conftest import tiny_suite

LRS = [0.05, 0.01]
MEANS = {"l1": 80.0, "random": 83.0, "close": 82.5}  # random leads; l1 far behind (decided), close near (not)
PATTERN = [1.0, -1.0, 0.5, -0.5, 0.8, -0.8, 0.2, -0.2, 0.0, 0.0]  # each seed's noise in units of 0.4 points: mean 0


def accuracy(method: str, ratio: float, lr: float, seed: int) -> float:
    """Test accuracy: the method's mean (3 points less at the low LR) plus a fixed noise per seed (none for the
    reference): close is 0.5 points behind with a paired sd of about 0.3, undecided at 3 and 5 seeds."""
    noise = 0.0 if method == "random" else 0.4 * PATTERN[seed]
    return validation(method, ratio, lr, seed) + noise / 100


def validation(method: str, ratio: float, lr: float, seed: int) -> float:
    """Validation accuracy without noise, so the reference (the best on validation) is the same at every round."""
    return (MEANS[method] - (3.0 if lr == min(LRS) else 0.0)) / 100


def adaptive_suite(**plan: Any) -> dict[str, Any]:
    return tiny_suite(methods=["l1", "random", {"l1 + orthp": {"label": "close"}}], retrain={"epochs": 1, "lr": LRS},
                      seeds={"start": 3, "max": 10, "step": 2, **plan})


class Executor:
    """Stands in for the executor: records the manifest as ``run`` does and writes each unfinished run's synthetic
    result under its real id; raises KeyboardInterrupt (a kill) after ``kill_after`` runs or at call ``kill_call``."""

    def __init__(self, results: Path, count: Counter[str], kill_after: int | None = None,
                 kill_call: int | None = None) -> None:
        self.results, self.count, self.kill_after, self.kill_call, self.calls = results, count, kill_after, kill_call, 0

    def __call__(self, args: Any, suite: Any, runs: list[Run], suite_dir: Path) -> int:
        self.calls += 1
        if self.calls == self.kill_call:
            raise KeyboardInterrupt
        record_suite(self.results, suite, suite_dir, runs)
        for run in runs:
            target = self.results / suite.name / "runs" / run.run_id / "result.json"
            if target.exists():
                continue
            if self.kill_after is not None and sum(self.count.values()) >= self.kill_after:
                raise KeyboardInterrupt
            with tempfile.TemporaryDirectory() as scratch:
                (path,) = write_synthetic_results(Path(scratch), suite.name, [run.method.label], [float(run.ratio)],
                                                  [run.lr], [run.seed], epochs=2, accuracy=accuracy,
                                                  validation=validation)
                record = json.loads(path.read_text()) | {"run_id": run.run_id}
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(record))
            self.count[run.run_id] += 1
        return 0


def drive(suite_path: Path, results: Path, count: Counter[str], **kill: int) -> int:
    args = build_parser().parse_args(["run", str(suite_path), "--results", str(results), "--until-decided"])
    suite, runs, suite_dir = load_runs(suite_path)
    return run_rounds(args, suite, runs, suite_dir, Executor(results, count, **kill))


def final(suite_path: Path, results: Path) -> tuple[dict, dict, list[tuple]]:
    suite, runs, _ = load_runs(suite_path)
    state, _ = current_state(suite, runs, results)
    numbers = [(c.method, c.reference, c.test.n, round(c.test.mean, 12), round(c.p_holm, 12), c.state)
               for c in state.assessment.comparisons]
    return state.seeds, state.why, numbers


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Counter[str], tuple]:
    folder = tmp_path_factory.mktemp("rounds")
    suite_path = folder / "suite.yaml"
    suite_path.write_text(json.dumps(adaptive_suite()))
    count: Counter[str] = Counter()
    assert drive(suite_path, folder / "results", count) == 0
    return suite_path, folder / "results", count, final(suite_path, folder / "results")


def test_rounds_stop_decided_cells_and_grow_the_others_at_every_lr(uninterrupted) -> None:
    suite_path, results, count, (seeds, why, numbers) = uninterrupted
    assert seeds[("0.5", "l1")] == 5 and why[("0.5", "l1")] == "decided"
    assert seeds[("0.5", "close")] > 5 and seeds[("0.5", "random")] == seeds[("0.5", "close")]
    _, runs, _ = load_runs(suite_path)
    done = {(r.method.label, r.lr, r.seed) for r in runs if r.run_id in count}
    assert done == {(m, lr, s) for (_, m), n in seeds.items() for lr in LRS for s in range(n)}
    assert set(count.values()) == {1}  # no run twice
    manifest = json.loads((results / "tiny" / "manifest.json").read_text())
    assert manifest["design"] == {"start": 3, "max": 10, "step": 2, "futility": 0.1, "spending": "obrien-fleming"}
    assert manifest["cells"] == {f"0.5 {m}": list(range(n)) for (_, m), n in seeds.items()}
    assert set(manifest["runs"]) == set(count)  # the manifest lists exactly the runs the cells have


@pytest.mark.parametrize("kill", [{"kill_call": 2}, {"kill_after": 22}, {"kill_after": 18}],
                         ids=["between rounds", "inside round 2", "at the end of round 1"])
def test_a_killed_controller_resumes_to_the_same_seeds_and_numbers(uninterrupted, tmp_path: Path,
                                                                   kill: dict[str, int]) -> None:
    suite_path, _, reference_count, expected = uninterrupted
    count: Counter[str] = Counter()
    with pytest.raises(KeyboardInterrupt):
        drive(suite_path, tmp_path / "results", count, **kill)
    assert drive(suite_path, tmp_path / "results", count) == 0
    assert final(suite_path, tmp_path / "results") == expected
    assert count == reference_count  # every run once, the same runs


def test_until_decided_needs_a_seed_plan_and_a_plan_needs_the_flag(write_suite, tmp_path: Path) -> None:
    fixed = write_suite(tiny_suite(seeds=[0, 1, 2]), "fixed.yaml")
    args = build_parser().parse_args(["run", str(fixed), "--results", str(tmp_path), "--until-decided"])
    suite, runs, suite_dir = load_runs(fixed)
    with pytest.raises(ConfigError, match="--until-decided grows seeds in rounds"):
        run_rounds(args, suite, runs, suite_dir, Executor(tmp_path, Counter()))
    grown = write_suite(adaptive_suite(), "grown.yaml")
    assert main(["run", str(grown), "--results", str(tmp_path / "r"), "--quiet"]) == 2
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_real_suite_grows_with_todays_run_ids_and_plan_shows_its_rounds(write_suite, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    suite = tiny_suite(seeds={"start": 3, "max": 4, "step": 1}, retrain={"epochs": 1, "lr": [0.05]},
                       pretrain={"epochs": 1, "batch_size": 64, "lr": 0.05}, trainability={"enabled": False},
                       latency={"enabled": False})
    suite["dataset"] = dict(suite["dataset"], validation=128)
    path, results = write_suite(suite), tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--until-decided", "--quiet"]) == 0
    manifest = json.loads((results / "tiny" / "manifest.json").read_text())
    fixed = write_suite(dict(suite, seeds=list(range(4))), "fixed.yaml")
    fixed_ids = {r.run_id: (r.method.label, r.seed) for r in load_runs(fixed)[1]}
    assert set(manifest["runs"]) <= set(fixed_ids)  # a seed's run is today's run
    assert manifest["cells"] == {f"0.5 {m}": list(range(len(s))) for m, s in
                                 (("l1", manifest["cells"]["0.5 l1"]), ("random", manifest["cells"]["0.5 random"]))}
    capsys.readouterr()
    assert main(["plan", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "rounds done:" in out and "no next round" in out
    assert main(["status", str(path), "--results", str(results)]) == 0  # the runs the rounds asked for, not max's
    assert f"suite 'tiny': {len(manifest['runs'])} runs" in capsys.readouterr().out
    assert main(["run", str(path), "--results", str(results), "--until-decided", "--quiet"]) == 0  # nothing to redo
    assert main(["report", "--results", str(results), "--workers", "1", "--quiet"]) == 0
    summary = (results / "tiny" / "report" / "summary.md").read_text()
    assert "## Seeds per cell (sequential design)" in summary and "p (sequential, suite)" in summary
    assert "This suite grew its seeds in rounds" in summary and "over the looks at 3, 4 seeds" in summary
    assert "O'Brien-Fleming alpha spending" in summary  # the default
    # seeds.spending rides from the YAML into the manifest's design and the report's words (ids unchanged)
    pocock = write_suite(dict(suite, seeds={"start": 3, "max": 4, "step": 1, "spending": "pocock"}), "pocock.yaml")
    assert {r.run_id for r in load_runs(pocock)[1]} == {r.run_id for r in load_runs(path)[1]}
    assert main(["run", str(pocock), "--results", str(results), "--until-decided", "--quiet"]) == 0
    assert json.loads((results / "tiny" / "manifest.json").read_text())["design"]["spending"] == "pocock"
    assert main(["report", "--results", str(results), "--workers", "1", "--quiet"]) == 0
    assert "Pocock alpha spending" in (results / "tiny" / "report" / "summary.md").read_text()
