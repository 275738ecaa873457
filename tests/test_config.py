"""Suite schema, overrides, grid expansion and run ids."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.config import apply_overrides, load_suite, parse_override
from bench.errors import ConfigError
from bench.grid import expand
from bench.plugins import load_builtin
from tests.conftest import tiny_suite

load_builtin()


def problems_of(write_suite, suite) -> str:
    with pytest.raises(ConfigError) as info:
        expand(load_suite(write_suite(suite)))
    return str(info.value)


def test_valid_suite_expands_to_the_full_grid(write_suite) -> None:
    suite = tiny_suite(seeds=[0, 1], prune={"ratios": [0.3, 0.5, 0.9]})
    runs = expand(load_suite(write_suite(suite)))
    assert len(runs) == 2 * 3 * 2 * 2  # methods × ratios × lrs × seeds
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.describe()["method"] for r in runs[:12]] == ["l1"] * 12


def test_shorthands_are_accepted(write_suite) -> None:
    suite = tiny_suite(seeds=3, methods="l1")
    suite["retrain"] = {"lr": 0.1, "schedule": "cosine"}
    suite["prune"] = {"ratios": 0.5}
    loaded = load_suite(write_suite(suite))
    assert loaded.seeds == [3] and loaded.retrain.lr == [0.1] and loaded.prune.ratios == [0.5]
    assert loaded.retrain.schedule.name == "cosine"


@pytest.mark.parametrize("change, expected", [
    ({"retrian": {"epochs": 1}}, "unknown key 'retrian'. Did you mean 'retrain'?"),
    ({"prune": {"ratios": [1.0]}}, "ratios[0] = 1.0: a pruning ratio must lie in [0, 1)"),
    ({"prune": {"ratios": [-0.1]}}, "must lie in [0, 1)"),
    ({"prune": {"ratios": []}}, "'prune.ratios' is an empty sweep"),
    ({"prune": {"ratios": ["half"]}}, "'prune.ratios[0]' is 'half'"),
    ({"retrain": {"lr": [0.1, 0]}}, "'retrain.lr[1]' is 0; it must be > 0"),
    ({"retrain": {"lr": []}}, "'retrain.lr' is an empty sweep"),
    ({"retrain": {"epochs": "ten"}}, "'retrain.epochs' is 'ten'; it must be an integer"),
    ({"retrain": {"schedule": {"name": "stepp"}}}, "Did you mean 'step'?"),
    ({"seeds": []}, "'seeds' is an empty sweep"),
    ({"methods": ["l2"]}, "unknown method 'l2'"),
    ({"methods": ["l1 + nothing"]}, "unknown method 'nothing'"),
    ({"model": "resnet57"}, "unknown model 'resnet57'. Did you mean 'resnet56'"),
    ({"dataset": "cifar11"}, "unknown dataset 'cifar11'"),
    ({"device": "tpu"}, "'device' is 'tpu'"),
    ({"methods": [{"l1": {"alpha": 1}}]}, "unknown key 'methods[0].l1.alpha'"),
    ({"prune": {"ratios": [{"layers.*": 0.5}], "scope": "global"}}, "needs scope: layerwise"),
])
def test_invalid_suites_name_the_key(write_suite, change, expected, tmp_path: Path, capsys) -> None:
    assert expected in problems_of(write_suite, tiny_suite(**change))
    # and through the command line: one error line naming the file, exit status 2, nothing written
    path, results = write_suite(tiny_suite(**change), "cli.yaml"), tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and expected in err and "Traceback" not in err
    assert not results.exists()


def test_error_names_the_file_and_lists_every_problem(write_suite) -> None:
    path = write_suite(tiny_suite(seeds=[], retrain={"lr": [-1]}))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message and "2 problems" in message


def test_yaml_syntax_error_gives_the_line(write_suite) -> None:
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_suite(write_suite("name: x\nmodel: [unclosed\n"))


def test_overrides_take_yaml_values() -> None:
    assert parse_override("retrain.lr=[0.1,0.01]") == (["retrain", "lr"], [0.1, 0.01])
    raw = apply_overrides({"retrain": {"epochs": 5}}, ["retrain.epochs=2", "prune.ratios=[0.5]"])
    assert raw == {"retrain": {"epochs": 2}, "prune": {"ratios": [0.5]}}
    for bad in ("retrain.epochs", "=3", "retrain..lr=1", "x=[1,"):
        with pytest.raises(ConfigError, match="--set"):
            apply_overrides({}, [bad])
    with pytest.raises(ConfigError, match="'name' is not a mapping"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_run_ids_are_pinned(write_suite) -> None:
    """Ids are content hashes: these values must only change with RESULT_FORMAT or the run's content."""
    runs = expand(load_suite(write_suite(tiny_suite())))
    assert [r.run_id for r in runs] == PINNED_IDS
    assert runs[0].dense_id == PINNED_DENSE_ID


PINNED_IDS = ["96f0dda37df0", "74ccca3b7e19", "ca1171050f91", "1c27cdf1b74a"]
PINNED_DENSE_ID = "bcdd8e8b7e42"


def test_run_ids_follow_content_not_presentation(write_suite) -> None:
    base = expand(load_suite(write_suite(tiny_suite())))
    renamed = expand(load_suite(write_suite(tiny_suite(name="other", description="x", device="auto"), "b.yaml")))
    assert [r.run_id for r in base] == [r.run_id for r in renamed]
    longer = expand(load_suite(write_suite(tiny_suite(retrain={"epochs": 4, "lr": [0.05, 0.01]}), "c.yaml")))
    assert not {r.run_id for r in base} & {r.run_id for r in longer}
    assert base[0].dense_id == longer[0].dense_id  # retraining does not change the dense model
    labelled = expand(load_suite(write_suite(tiny_suite(methods=[{"l1": {"label": "magnitude"}}]), "d.yaml")))
    assert labelled[0].run_id == base[0].run_id and labelled[0].describe()["method"] == "magnitude"


def test_each_speed_option_alone_enters_the_ids(write_suite) -> None:
    """Options that change numerics in the last bits (fused SGD, bf16, channels_last, compile) each give new ids."""
    base = expand(load_suite(write_suite(tiny_suite())))
    for i, option in enumerate([{"fused_optimizer": True}, {"amp": "bf16"}, {"channels_last": True},
                                {"compile": True}]):
        fast = expand(load_suite(write_suite(tiny_suite(performance=option), f"fast{i}.yaml")))
        assert fast[0].dense_id != base[0].dense_id and fast[0].run_id != base[0].run_id, option
