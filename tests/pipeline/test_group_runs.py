"""Whole runs on coupled groups: torchvision models prune their residual streams and finish with fewer FLOPs."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from tests.conftest import tiny_suite
from tests.pipeline.test_runner import results_of

SMALL_DATA = {"name": "synthetic", "num_train": 64, "num_test": 32, "channels": 3, "size": 32}


def group_suite(model: str, ratio: float, method: str = "l1", **prune: object) -> dict:
    """One seed, one epoch of dense training and of retraining, on tiny synthetic data."""
    return tiny_suite(model=model, dataset=SMALL_DATA, methods=[method], prune={"ratios": [ratio], **prune},
                      pretrain={"epochs": 1, "batch_size": 32, "lr": 0.01},
                      retrain={"epochs": 1, "batch_size": 32, "lr": [0.01]}, trainability={"enabled": False})


@pytest.mark.parametrize(("model", "ratio", "prune"), [
    ("tv:resnet18", 0.5, {"layers": ["layer*.*.conv2"]}),
    pytest.param("tv:mobilenet_v2", 0.3, {}, marks=pytest.mark.slow),  # ~25 s on two cores
    pytest.param("vit_cifar", 0.5, {}, marks=pytest.mark.slow),
    pytest.param("mobilenet_v2_cifar", 0.3, {}, marks=pytest.mark.slow),
])
def test_torchvision_models_prune_in_groups(tmp_path: Path, write_suite, model: str, ratio: float,
                                            prune: dict) -> None:
    suite = write_suite(group_suite(model, ratio, **prune))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 0
    (result,) = results_of(tmp_path / "r").values()
    metrics = result["metrics"]
    assert result["status"] == "ok"
    assert metrics["params_pruned"] < 0.8 * metrics["params_dense"]
    assert metrics["flops_pruned"] < 0.8 * metrics["flops_dense"]
    if model == "tv:resnet18":  # four stage streams, half of each kept
        assert metrics["channels"] == {"layer1.0.conv2": [32, 64], "layer2.0.conv2": [64, 128],
                                       "layer3.0.conv2": [128, 256], "layer4.0.conv2": [256, 512]}


def test_a_method_that_cannot_score_groups_is_refused_before_any_work(tmp_path: Path, write_suite, capsys) -> None:
    suite = write_suite(group_suite("tv:resnet18", 0.5, method="slimming", layers=["layer*.*.conv2"]))
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "slimming: layer 'layer1.0.conv2' is pruned in a coupled group of 3" in err
    assert "BatchNorm right after it" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("result.json"))
