"""A plugin written against the façade as it was before bench/ was laid out in wings keeps working: every name it
imported from ``bench``, the old flat module paths, and a count rule of its own in a real run."""
from __future__ import annotations

import json
from pathlib import Path

from bench.cli import main
from tests.conftest import tiny_suite

# ``bench.__all__`` before the wings (issue 28): a plugin may have imported any of these.
FACADE = ["BaseHooks", "ConfigError", "DenseVariant", "Method", "NoHparams", "Phase", "PruneTarget", "Recipe",
          "RunContext", "Schedule", "TrainHooks", "UserError", "count_flops", "count_parameters", "counting_flops",
          "derive_seed", "evaluate", "field", "filter_weights", "global_ratio", "keep_above_quantile",
          "keep_from_scores", "scoped", "register_method"]

PLUGIN = '''
from bench import (BaseHooks, ConfigError, DenseVariant, Method, NoHparams, Phase, PruneTarget, Recipe, RunContext,
                   Schedule, TrainHooks, UserError, count_flops, count_parameters, counting_flops, derive_seed,
                   evaluate, field, filter_weights, global_ratio, keep_above_quantile, keep_from_scores, scoped,
                   register_method)
# module paths of the flat layout, as scripts and plugins used them
from bench.config import load_suite
from bench.grid import expand
from bench.pruning import num_pruned
from bench.registry import METHODS
from bench.runner import execute, new_model
from bench.store import content_hash
from bench.train import fit
from bench import register_count_rule


@register_count_rule("quarter_outside")
def quarter(n, ratio):
    """Removes a quarter of every layer, whatever the ratio (so the test sees this rule was used)."""
    return n // 4


@register_method("l2_outside")
class L2Outside(Method):
    description = "largest L2 norm, from a file outside the repository"

    def scores(self, model, ctx):
        modules = dict(model.named_modules())
        return {name: filter_weights(modules[name]).norm(dim=1) for name in ctx.target.layers}
'''


def results_of(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "tiny" / "runs").glob("*/result.json"))]


def test_an_outside_plugin_of_the_flat_layout_runs_with_its_own_count_rule(tmp_path: Path, write_suite) -> None:
    import bench

    assert [name for name in FACADE if not hasattr(bench, name)] == []
    plugin = tmp_path / "elsewhere" / "outside.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    suite = write_suite(tiny_suite(methods=["l2_outside"], retrain={"epochs": 1, "lr": [0.05]},
                                   prune={"ratios": [0.5], "count_rule": "quarter_outside"}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--plugin", str(plugin), "--quiet"]) == 0
    (result,) = results_of(tmp_path / "r")
    assert result["status"] == "ok" and result["method"] == "l2_outside"
    assert result["metrics"]["channels"]["layers.0"] == [75, 100]   # 100 // 4 removed, not ceil(0.5 * 100)


def test_an_unknown_count_rule_is_one_error_line_naming_the_key(tmp_path: Path, write_suite, capsys) -> None:
    suite = write_suite(tiny_suite(prune={"ratios": [0.5], "count_rule": "tpp_cod"}))
    assert main(["plan", str(suite), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "prune.count_rule: unknown count rule 'tpp_cod'. Did you mean 'tpp_code'?" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
