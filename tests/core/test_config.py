"""Suite schema, overrides, grid expansion and run ids."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import apply_overrides, load_suite, parse_override
from bench.errors import ConfigError
from bench.grid import expand
from tests.conftest import tiny_suite


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
    ({"prune": {"ratios": [0.5], "floor_keeps": "highest"}}, "'prune.floor_keeps' is 'highest'"),
    ({"retrain": {"schedule": {"name": "piecewise", "milestones": [2], "factors": [1.0]}}},
     "needs one factor more than milestones: 1 factors for 1 milestones"),
    ({"retrain": {"schedule": {"name": "step", "milestones": [2], "factors": [1.0, 0.1]}}},
     "factors are only used by the piecewise schedule"),
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


# Re-keyed once on 2026-12-03 (the run-id policy of issue 14): the prune key holds the resolved layer names, and a
# dataset option written at its default (num_train: 512 here) stays out of the dense key.
PINNED_IDS = ["d514e8a1f7b4", "e87f95944933", "e0f84e8eeca3", "a4500477daea"]
PINNED_DENSE_ID = "72bdf655cc9b"


def test_an_option_written_at_its_default_keeps_the_id(write_suite) -> None:
    """One rule everywhere: dataset options, suite sections and method hyperparameters at their default stay out."""
    base = expand(load_suite(write_suite(tiny_suite())))
    dataset = dict(tiny_suite()["dataset"], num_classes=10, seed=0)  # both the synthetic builder's defaults
    explicit = expand(load_suite(write_suite(tiny_suite(dataset=dataset), "b.yaml")))
    assert [r.run_id for r in explicit] == [r.run_id for r in base] and explicit[0].dense_id == base[0].dense_id
    other = expand(load_suite(write_suite(tiny_suite(dataset=dict(dataset, seed=1)), "c.yaml")))
    assert other[0].dense_id != base[0].dense_id  # a value off its default does enter


def test_the_floor_options_enter_the_ids_only_off_their_default(write_suite) -> None:
    base = expand(load_suite(write_suite(tiny_suite())))
    prune = tiny_suite()["prune"]
    explicit = expand(load_suite(write_suite(tiny_suite(prune=dict(prune, floor_fraction=0.0,
                                                                  floor_keeps="important")), "b.yaml")))
    assert [r.run_id for r in explicit] == [r.run_id for r in base]
    for change in ({"floor_fraction": 0.05}, {"floor_keeps": "index"}):
        other = expand(load_suite(write_suite(tiny_suite(prune=dict(prune, **change)), "c.yaml")))
        assert not {r.run_id for r in other} & {r.run_id for r in base}
        assert other[0].dense_id == base[0].dense_id  # the dense model does not depend on the floor


def test_the_resolved_layers_enter_the_prune_key_not_the_patterns(write_suite, monkeypatch) -> None:
    base = expand(load_suite(write_suite(tiny_suite())))  # mlp7_relu's default layers
    layers = base[0].key["prune"]["layers"]
    assert layers == [f"layers.{i}" for i in range(6)] and "skip" not in base[0].key["prune"]
    spelled = expand(load_suite(write_suite(tiny_suite(prune={"ratios": [0.5], "layers": list(layers)}), "b.yaml")))
    assert [r.run_id for r in spelled] == [r.run_id for r in base]  # the same layers, however written
    # A model whose default layers change must not reuse old results.
    from bench.registry import MODELS

    entry = MODELS.get("mlp7_relu")
    monkeypatch.setitem(MODELS._entries, "mlp7_relu", dataclasses.replace(entry, default_layers=("layers.[0-4]",)))
    moved = expand(load_suite(write_suite(tiny_suite(), "c.yaml")))
    assert moved[0].key["prune"]["layers"] == layers[:5] and moved[0].run_id != base[0].run_id
    assert moved[0].dense_id == base[0].dense_id  # the dense model does not depend on what is pruned


def test_a_method_version_enters_the_ids_only_past_1(write_suite, monkeypatch) -> None:
    from bench.registry import METHODS

    base = expand(load_suite(write_suite(tiny_suite())))
    assert "version" not in base[0].key["method"][0]
    monkeypatch.setattr(METHODS.get("l1"), "version", 2)
    fixed = expand(load_suite(write_suite(tiny_suite(), "b.yaml")))
    assert fixed[0].key["method"][0]["version"] == 2 and fixed[0].run_id != base[0].run_id
    assert fixed[2].run_id == base[2].run_id and base[2].method.label == "random"  # random is unchanged


def test_keyed_plain_drops_later_options_at_their_default_at_any_depth() -> None:
    from dataclasses import dataclass

    from bench.schema import field, to_plain

    @dataclass
    class Inner:
        old: int = 1
        new: int = field(0, keyed_at_default=False)

    @dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        added: str = field("x", keyed_at_default=False)

    assert to_plain(Outer(), keyed=True) == {"inner": {"old": 1}}
    assert to_plain(Outer(Inner(new=3), "y"), keyed=True) == {"inner": {"old": 1, "new": 3}, "added": "y"}
    assert to_plain(Outer()) == {"inner": {"old": 1, "new": 0}, "added": "x"}  # results keep every value


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
