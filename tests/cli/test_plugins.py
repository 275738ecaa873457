"""Methods from installed packages: entry points of group pruning_bench.plugins, loaded only when named or enabled.

Each test puts a package and its ``dist-info`` folder (METADATA and entry_points.txt) on a temporary sys.path, which
is what pip leaves in site-packages, without installing anything into the venv.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from bench import plugins
from bench.cli import main
from bench.registry import DATASETS, METHODS, MODELS
from tests.conftest import tiny_suite

METHOD = '''
import torch
from bench import Method, NoHparams, register_method


@register_method("{name}")
class Largest(Method):
    description = "largest L2 norm, from an installed package"
    Hparams = NoHparams

    def scores(self, model, ctx):
        modules = dict(model.named_modules())
        return {{n: modules[n].weight.detach().flatten(1).norm(dim=1) for n in ctx.target.layers}}
'''


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch: pytest.MonkeyPatch):
    """Each test starts and ends with the built-ins only (registries and the loaded-plugin set are per process)."""
    plugins.load_builtin()
    states = [r.snapshot() for r in (METHODS, MODELS, DATASETS)]
    loaded = set(plugins._loaded)
    monkeypatch.delenv(plugins.ENV, raising=False)
    yield
    for registry, state in zip((METHODS, MODELS, DATASETS), states):
        registry.restore(state)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)


def install(site: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """What ``pip install`` would leave: the modules and ``<dist>-1.0.dist-info`` with the entry points."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def test_an_installed_method_stays_out_until_enabled_and_says_where_it_came_from(
        site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    install(site, "demo-prune", {"demo": "demo_prune_a"}, {"demo_prune_a": METHOD.format(name="l2_pkg_a")})
    assert main(["list", "methods"]) == 0
    assert "l2_pkg_a" not in capsys.readouterr().out and "demo_prune_a" not in sys.modules  # never imported
    monkeypatch.setenv(plugins.ENV, "all")
    assert main(["list", "methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")}
    assert lines["l2_pkg_a"].endswith("[entry point 'demo' (demo-prune 1.0)]")
    assert lines["l1"].endswith("[built-in]")


def test_a_suite_naming_an_entry_point_runs_its_method(site: Path, tmp_path: Path, write_suite) -> None:
    install(site, "demo-prune-b", {"demo_b": "demo_prune_b"}, {"demo_prune_b": METHOD.format(name="l2_pkg_b")})
    suite = write_suite(tiny_suite(methods=["l2_pkg_b"], plugins=["demo_b"], retrain={"epochs": 1, "lr": [0.05]}))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("tiny/runs/*/result.json")]
    assert result["status"] == "ok" and result["method"] == "l2_pkg_b"
    assert result["metrics"]["channels"]["layers.0"] == [50, 100]


def test_a_broken_entry_point_is_one_warning_and_the_others_load(
        site: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    failing = METHOD.format(name="l2_half_registered") + "\n\ndef register():\n    raise OSError('no')\n"
    install(site, "demo-broken", {"broken": "demo_broken:register"}, {"demo_broken": failing})
    install(site, "demo-good", {"good": "demo_good"}, {"demo_good": METHOD.format(name="l2_pkg_good")})
    monkeypatch.setenv(plugins.ENV, "all")
    with caplog.at_level(logging.WARNING):
        plugins.load_enabled()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'broken'" in warnings[0] and "OSError: no" in warnings[0]
    assert "l2_pkg_good" in METHODS
    assert "l2_half_registered" not in METHODS  # what the broken plugin registered before failing is forgotten


def test_an_entry_point_clashing_with_a_builtin_is_an_error(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    source = METHOD.format(name="l2_pkg_c") + METHOD.format(name="l1").split("\n", 3)[3]
    install(site, "demo-clash", {"clash": "demo_clash"}, {"demo_clash": source})
    monkeypatch.setenv(plugins.ENV, "clash")
    assert main(["list", "methods"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: plugin 'clash': method 'l1' from entry point 'clash' (demo-clash 1.0) clashes "
                          "with the method of that name from built-in") and "\n" not in err
    assert "l2_pkg_c" not in METHODS and METHODS.origin("l1") == "built-in"


def test_an_unknown_enabled_name_is_an_error(site: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(plugins.ENV, "nosuch")
    assert main(["list", "methods"]) == 2
    assert "$BENCH_PLUGINS names 'nosuch'" in capsys.readouterr().err
