"""What a run spent (steps, epochs, training FLOPs per stage) and equal-budget comparisons, on tiny suites."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.cli import main
from bench.config import Schedule, load_suite
from bench.cost import budgeted
from bench.errors import ConfigError, UserError
from bench.grid import expand
from bench.measure import training_step_flops
from bench.report.costs import cost_text
from bench.report.plots import pareto_front
from bench.store import content_hash
from bench.train import Recipe
from tests.conftest import tiny_suite

# t_s = ceil(ceiling / delta) * update_interval = 2, K_s = 21: the phase has t_s + K_s + 1 = 24 steps (README formula)
TPP = {"tpp": {"delta": 0.5, "update_interval": 1, "stabilize": 21, "zero_out_interval": 1}}
TPP_STEPS = 2 + 21 + 1
RETRAIN = {"epochs": 2, "batch_size": 64, "lr": [0.05], "schedule": {"name": "step", "milestones": [1]}}
STEPS_PER_EPOCH = 512 // 64  # the tiny suite's 512 training images


def run_suite(root: Path, **changes: object) -> dict[str, dict]:
    """Run a tiny suite of l1 and TPP (one LR) and report it; its results by method."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "suite.yaml").write_text(yaml.safe_dump(tiny_suite(methods=["l1", TPP], retrain=RETRAIN, **changes)))
    assert main(["run", str(root / "suite.yaml"), "--results", str(root / "results"), "--quiet"]) == 0
    assert main(["report", "--results", str(root / "results")]) == 0
    found = [json.loads(p.read_text()) for p in (root / "results" / "tiny" / "runs").glob("*/result.json")]
    return {r["method"]: r for r in found}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("plain")
    return root, run_suite(root)


@pytest.fixture(scope="module")
def matched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("matched")
    return root, run_suite(root, budget={"match": "tpp"})


def test_tpp_phase_counts_its_schedule_and_l1_spends_nothing_before_retraining(plain) -> None:
    root, results = plain
    tpp, l1 = results["tpp"]["metrics"]["cost"], results["l1"]["metrics"]["cost"]
    assert tpp["phase"]["steps"] == TPP_STEPS and tpp["phase"]["samples"] == TPP_STEPS * 64
    assert (l1["phase"]["steps"], l1["phase"]["flops"], l1["select"]["flops"]) == (0, 0, 0)
    for cost in (tpp, l1):
        assert cost["dense"]["steps"] == 2 * STEPS_PER_EPOCH and cost["dense"]["epochs"] == 2.0
        assert cost["retrain"]["steps"] == 2 * STEPS_PER_EPOCH and cost["retrain"]["shared"] is None
    # one dense model, counted in both runs and marked shared by its id; the same step FLOPs in every stage
    assert tpp["dense"] == l1["dense"] and tpp["dense"]["flops"] > 0
    assert tpp["dense"]["shared"] == content_hash(results["tpp"]["config"]["dense"]) and not tpp["dense"]["own"]
    assert tpp["phase"]["shared"] == results["tpp"]["prune_id"]
    dense_per_step = tpp["dense"]["flops"] / tpp["dense"]["steps"]
    assert l1["retrain"]["flops"] < dense_per_step * l1["retrain"]["steps"]  # the slim model costs less per step
    # TPP's Gram term is counted: its phase costs more per step than the dense model's plain steps
    assert tpp["phase"]["flops"] / TPP_STEPS > 1.5 * dense_per_step
    runs = pd.read_csv(root / "results" / "tiny" / "report" / "runs.csv").set_index("method")
    for column in ("cost_steps_dense", "cost_steps_phase", "cost_steps_retrain", "cost_flops_phase",
                   "cost_flops_total", "cost_epochs_phase", "cost_flops_amortised"):
        assert column in runs.columns, column
    assert runs.loc["tpp", "cost_steps_phase"] == TPP_STEPS and runs.loc["l1", "cost_flops_phase"] == 0
    assert (runs.cost_seconds_retrain > 0).all() and (runs.cost_seconds_dense > 0).all()  # wall time, from timings
    # amortised: the shared dense model split between the two runs that use it
    assert runs.loc["l1", "cost_flops_amortised"] == pytest.approx(
        l1["dense"]["flops"] / 2 + l1["retrain"]["flops"])


def test_a_matched_budget_gives_every_method_tpp_steps_and_the_verdict_says_so(matched, plain) -> None:
    root, results = matched
    budget = TPP_STEPS + 2 * STEPS_PER_EPOCH  # TPP's phase and its retraining: 40 steps
    for method, result in results.items():
        cost = result["metrics"]["cost"]
        assert cost["budget"] == {"steps": budget, "match": "tpp", "rule": "last_stage", "spent": budget}, method
        assert cost["phase"]["steps"] + cost["retrain"]["steps"] == budget, method
        assert result["config"]["budget"] == {"steps": budget}
    l1 = results["l1"]
    assert len(l1["history"]["retrain"]) == math.ceil(budget / STEPS_PER_EPOCH)  # extended, stopped by a step limit
    assert [row["lr"] for row in l1["history"]["retrain"]][1:] == pytest.approx([0.005] * 4)  # extra: last stage
    # the budget changes only the retraining: the pruned models are shared with the suite without one
    plain_ids = {m: r["prune_id"] for m, r in plain[1].items()}
    assert {m: r["prune_id"] for m, r in results.items()} == plain_ids
    assert results["tpp"]["metrics"]["acc_final"] == plain[1]["tpp"]["metrics"]["acc_final"]
    assert results["tpp"]["run_id"] != plain[1]["tpp"]["run_id"]
    report = root / "results" / "tiny" / "report"
    verdict = (report / "tables" / "verdict.md").read_text()
    assert "training cost: vs cheapest" in verdict
    summary = (report / "summary.md").read_text()
    assert f"every method trained exactly {budget} SGD steps" in summary and "matched to tpp" in summary
    assert "figures/accuracy_vs_cost.png" in summary
    assert "Accuracy against training cost" in (report / "index.html").read_text()


def test_a_matched_budget_resolves_to_steps_before_ids(write_suite) -> None:
    matched = expand(load_suite(write_suite(tiny_suite(methods=["l1", TPP], retrain=RETRAIN,
                                                       budget={"match": "tpp"}))))
    alone = expand(load_suite(write_suite(tiny_suite(methods=["l1"], retrain=RETRAIN, budget={"steps": 40}))))
    plain = expand(load_suite(write_suite(tiny_suite(methods=["l1"], retrain=RETRAIN))))
    assert matched[0].key["budget"] == {"steps": 40}
    assert matched[0].run_id == alone[0].run_id  # the id holds the number, not which methods sit beside it
    assert "budget" not in plain[0].key and plain[0].prune_id == alone[0].prune_id != "" and \
        plain[0].run_id != alone[0].run_id
    # the rule enters the id only when it is not the default
    explicit = expand(load_suite(write_suite(tiny_suite(methods=["l1"], retrain=RETRAIN,
                                                        budget={"steps": 40, "rule": "last_stage"}))))
    stretched = expand(load_suite(write_suite(tiny_suite(methods=["l1"], retrain=RETRAIN,
                                                         budget={"steps": 40, "rule": "stretch"}))))
    assert explicit[0].run_id == alone[0].run_id and stretched[0].key["budget"] == {"steps": 40, "rule": "stretch"}
    assert stretched[0].run_id != alone[0].run_id and stretched[0].prune_id == alone[0].prune_id


@pytest.mark.parametrize("budget, expected", [({}, "exactly one"), ({"steps": 5, "match": "l1"}, "exactly one"),
                                              ({"match": "tppp"}, "not a method of the suite"),
                                              ({"steps": 0}, "budget.steps")])
def test_a_wrong_budget_is_named(write_suite, budget: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        expand(load_suite(write_suite(tiny_suite(methods=["l1", TPP], budget=budget))))


def test_budget_rule_extends_or_cuts_retraining_to_exactly_the_budget() -> None:
    recipe = Recipe(epochs=3, lr=0.1)
    longer = budgeted(recipe, 100, 24.0, 10, "l1")
    assert (longer.epochs, longer.max_steps, longer.schedule) == (8, 76, recipe.schedule)
    shorter = budgeted(recipe, 20, 0.0, 10, "l1")
    assert (shorter.epochs, shorter.max_steps) == (3, 20)
    assert budgeted(recipe, 24, 24.0, 10, "tpp").epochs == 0
    with pytest.raises(UserError, match="more than the budget"):
        budgeted(recipe, 10, 24.0, 10, "tpp")


def test_stretch_rule_scales_every_lr_stage_in_proportion() -> None:
    recipe = Recipe(epochs=30, lr=0.1, schedule=Schedule(name="step", milestones=[10, 20]))
    longer = budgeted(recipe, 18_901, 0.0, 430, "l1", "stretch")  # fair_mlp_budget's l1: 18,901 steps for 12,900
    assert (longer.epochs, longer.max_steps, longer.schedule.milestones) == (44, 18_901, [15, 29])
    shorter = budgeted(recipe, 150, 0.0, 10, "l1", "stretch")  # half the steps: every stage halved
    assert (shorter.epochs, shorter.max_steps, shorter.schedule.milestones) == (15, 150, [5, 10])
    same = budgeted(recipe, 300, 0.0, 10, "tpp", "stretch")  # the matched method's own spend: unchanged
    assert (same.epochs, same.schedule) == (30, recipe.schedule)
    cosine = Recipe(epochs=30, lr=0.1, schedule=Schedule(name="cosine"))  # its T_max is the recipe's epochs
    assert budgeted(cosine, 150, 0.0, 10, "l1", "stretch").epochs == 15  # compressed: it still reaches its end
    assert budgeted(cosine, 150, 0.0, 10, "l1").epochs == 30  # last_stage cuts it at step 150, halfway down
    # a recipe with its own step limit (Scratch-B: 41 epochs, stopped at 4,050 steps) is scaled by its steps
    scratch_b = Recipe(epochs=41, lr=0.1, max_steps=4_050, schedule=Schedule(name="step", milestones=[20, 34]))
    doubled = budgeted(scratch_b, 8_100, 0.0, 100, "scratch", "stretch")
    assert (doubled.epochs, doubled.max_steps, doubled.schedule.milestones) == (81, 8_100, [40, 68])
    # compressed milestones stay increasing: each stage keeps at least one epoch
    piecewise = Schedule(name="piecewise", milestones=[1, 2, 3], factors=[1.0, 0.5, 0.1, 0.01])
    squeezed = budgeted(Recipe(epochs=10, lr=0.1, schedule=piecewise), 30, 0.0, 10, "l1", "stretch")
    assert squeezed.schedule.milestones == [1, 2, 3] and squeezed.max_steps == 30


def test_a_budget_is_counted_at_the_retraining_batch_size() -> None:
    """Scratch retrains with the dense recipe's batch size: 100 steps at the suite's batch 128 are 200 at 64."""
    recipe = Recipe(epochs=3, lr=0.1, batch_size=64)
    for rule in ("last_stage", "stretch"):
        assert budgeted(recipe, 100, 0.0, 10, "scratch", rule, retrain_batch=128).max_steps == 200
    assert budgeted(recipe, 100, 0.0, 10, "scratch", retrain_batch=64).max_steps == 100


def test_a_stretched_budget_spreads_the_extra_steps_over_the_schedule(tmp_path: Path) -> None:
    results = run_suite(tmp_path, budget={"match": "tpp", "rule": "stretch"})
    budget = TPP_STEPS + 2 * STEPS_PER_EPOCH  # 40 steps: l1 retrains 5 epochs of 8 instead of 2
    l1 = results["l1"]
    assert l1["metrics"]["cost"]["retrain"]["steps"] == budget and l1["metrics"]["cost"]["budget"]["rule"] == "stretch"
    # milestone 1 of 2 epochs becomes 1 x 40/16 = 2.5 -> 3 of 5: three epochs at the first LR, not one
    assert [row["lr"] for row in l1["history"]["retrain"]] == pytest.approx([0.05] * 3 + [0.005] * 2)
    # trainability accuracy keeps the unbudgeted first stage (1 epoch), as for the methods not stretched
    assert l1["metrics"]["acc_trainability"] == l1["history"]["retrain"][0]["test_acc"]
    summary = (tmp_path / "results" / "tiny" / "report" / "summary.md").read_text()
    assert "their LR schedule stretched in proportion" in summary


def test_step_flops_count_the_penalty_and_leave_the_model_alone() -> None:
    import torch
    from torch import nn
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    plain, extra = training_step_flops(model, (1, 3, 4), 5)
    # forward 2·5·(12·8 + 8·3); backward: weight gradients of both, the input gradient of the second only
    assert plain == 2 * 5 * (12 * 8 + 8 * 3) * 2 + 2 * 5 * 8 * 3 and extra == 0
    _, gram = training_step_flops(model, (1, 3, 4), 5, lambda net: [(net[1].weight @ net[1].weight.T).sum()])
    assert gram == 3 * 2 * 8 * 8 * 12  # W Wᵀ forward, and both of its gradients
    assert all(torch.equal(a, b) and p.grad is None for a, b, p in zip(before, model.parameters(),
                                                                        model.parameters()))


def test_cost_text_and_pareto_front() -> None:
    assert cost_text(0.0, 1.0) == "cheapest"
    assert cost_text(282.4, 2.31) == "+282 epochs, 2.3× training FLOPs"
    points = pd.DataFrame({"cost": [1.0, 2.0, 3.0, 4.0], "acc": [50.0, 40.0, 60.0, 60.0]})
    assert list(pareto_front(points).index) == [0, 2]


WRONG_PHASE_STEPS = '''
from methods.tpp import TPP
from bench import register_method


@register_method("tpp_miscounted")
class Miscounted(TPP):
    """TPP whose phase_steps is one step short of its phase: a plugin's mistake the budget must not hide."""

    def phase_steps(self, dense, retrain, steps_per_epoch):
        steps, batch = super().phase_steps(dense, retrain, steps_per_epoch)
        return steps - 1, batch
'''


def test_a_matched_method_that_miscounts_its_phase_fails_naming_phase_steps(tmp_path: Path) -> None:
    plugin = tmp_path / "miscounted.py"
    plugin.write_text(WRONG_PHASE_STEPS)
    options = TPP["tpp"]
    suite = tiny_suite(methods=[{"tpp_miscounted": options}], retrain=RETRAIN, budget={"match": "tpp_miscounted"},
                       pretrain={"epochs": 0})
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "r"), "--plugin", str(plugin),
                 "--quiet"]) == 1
    (path,) = (tmp_path / "r" / "tiny" / "runs").glob("*/result.json")
    result = json.loads(path.read_text())
    assert result["status"] == "failed" and "phase_steps is wrong" in result["error"]
    assert f"to spend {TPP_STEPS - 1 + 2 * STEPS_PER_EPOCH} steps" in result["error"]


LONGER_DENSE = '''
import dataclasses

from methods.l1 import L1
from bench import DenseVariant, register_method


@register_method("l1_longer_dense")
class LongerDense(L1):
    """L1 on its own dense model, trained one epoch longer than the shared one (as a method that changes dense
    training might): the extra epoch counts in its budget."""

    def dense_variant(self):
        return DenseVariant(key={"extra_epochs": 1},
                            recipe=lambda recipe: dataclasses.replace(recipe, epochs=recipe.epochs + 1))
'''


def test_a_matched_budget_counts_the_methods_own_dense_training_beyond_the_shared_one(tmp_path: Path) -> None:
    plugin = tmp_path / "longer.py"
    plugin.write_text(LONGER_DENSE)
    suite = tiny_suite(methods=["l1", "l1_longer_dense"], retrain=RETRAIN, budget={"match": "l1_longer_dense"})
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "r"), "--plugin", str(plugin),
                 "--quiet"]) == 0
    found = [json.loads(p.read_text()) for p in (tmp_path / "r" / "tiny" / "runs").glob("*/result.json")]
    results = {r["method"]: r["metrics"]["cost"] for r in found}
    budget = STEPS_PER_EPOCH + 2 * STEPS_PER_EPOCH  # its dense model's third epoch and its two retraining epochs
    longer, l1 = results["l1_longer_dense"], results["l1"]
    assert longer["dense"]["own"] and longer["dense"]["steps"] == 3 * STEPS_PER_EPOCH
    assert longer["dense"]["own_beyond_shared"] == STEPS_PER_EPOCH
    assert longer["retrain"]["steps"] == 2 * STEPS_PER_EPOCH  # matched to itself: nothing added or cut
    assert l1["retrain"]["steps"] == budget and not l1["dense"]["own"]  # the other retrains its extra epoch
    assert longer["budget"]["steps"] == l1["budget"]["steps"] == budget
