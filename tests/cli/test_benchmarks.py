"""The benchmark commands (benchmarks/*.py) run, count what they claim to count and refuse bad names."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.plugins import load_builtin
from bench.registry import MODELS
from tests.conftest import benchmark


def test_a_training_step_is_counted_exactly() -> None:
    """mlp7_linear at batch B: forward, weight gradients and input gradients past the first layer (the input needs
    none), 2 FLOPs per multiply-add; the old "3x forward" estimate overcounted the first layer's input gradient."""
    perf = benchmark("perf")
    load_builtin()
    model = MODELS.get("mlp7_linear").build(num_classes=10, in_channels=1)
    b = 16
    forward = 2 * b * (1024 * 100 + 5 * 100 * 100 + 100 * 10)
    input_grads = 2 * b * (5 * 100 * 100 + 100 * 10)
    assert perf.training_flops(model, (1, 32, 32), b, torch.device("cpu")) == 2 * forward + input_grads
    assert all(p.grad is None for p in model.parameters())  # counted on a copy


def test_perf_times_the_harness_step_and_the_mlp_matmuls() -> None:
    perf = benchmark("perf")
    load_builtin()
    torch.manual_seed(0)
    model = MODELS.get("mlp7_linear").build(num_classes=10, in_channels=1)
    batches = [(torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))) for _ in range(4)]
    before = model.layers[0].weight.detach().clone()
    seconds, samples = perf.train_steps(model, batches, 3, torch.device("cpu"), perf.fast_options(torch.device("cpu")))
    assert seconds > 0 and samples == 96 and not torch.equal(before, model.layers[0].weight)
    assert perf.linear_matmuls_seconds(model, 32, torch.device("cpu"), repeats=2) > 0
    assert perf.describe(perf.fast_options(torch.device("cpu"))) == "performance: fused_optimizer"


def test_packing_runs_several_trainings_at_once(tmp_path: Path) -> None:
    """Two spawned training processes on synthetic data run to the end and report a throughput."""
    perf = benchmark("perf")
    samples_per_s, utilisation = perf.packed_throughput("mlp7_linear", ("synthetic", None, 32), (3, 32, 32), 3, 2,
                                                        torch.device("cpu"))
    assert samples_per_s > 0 and utilisation is None


def test_perf_needs_no_installed_fashion_mnist(tmp_path: Path) -> None:
    """On a node without Debian's Fashion-MNIST (a GPU node), perf.py writes random images in its format, which both
    the harness's loader and torchvision's read; with the files installed it uses them (None: the default place)."""
    from bench.data import build_dataset

    perf = benchmark("perf")
    root = perf.fashion_mnist_root(tmp_path, system=tmp_path / "not-installed", n_train=256)
    assert root == tmp_path
    data = build_dataset("fashion_mnist", {}, root, 32)
    assert (data.info.num_train, data.info.num_test, data.info.in_channels) == (256, 10000, 1)
    x, _ = next(iter(perf.torchvision_fashion_mnist(root, 8, 0)))
    assert x.shape == (8, 1, 32, 32)
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "train-images-idx3-ubyte.gz").touch()
    assert perf.fashion_mnist_root(tmp_path / "other", system=installed) is None


def test_step_cost_times_each_regulariser(capsys: pytest.CaptureFixture[str]) -> None:
    step_cost = benchmark("step_cost")
    assert step_cost.main(["--model", "resnet20", "--methods", "tpp,slimming", "--batch-size", "8", "--repeats", "1",
                           "--per-block", "1", "--warmup", "1"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"sgd", "tpp", "slimming"}
    assert rows["slimming"][1] == "dense"  # slimming regularises dense training
    assert rows["tpp"][1].isdigit() and int(rows["tpp"][1]) > 0  # TPP: timed at a step of its phase


def test_step_cost_refuses_an_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark("step_cost").main(["--model", "resnet20", "--methods", "nope", "--batch-size", "8"]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_packed_process_that_fails_is_reported_not_waited_for() -> None:
    perf = benchmark("perf")
    with pytest.raises(RuntimeError, match="packed training process failed"):
        perf.packed_throughput("no_such_model", ("synthetic", None, 32), (3, 32, 32), 3, 1, torch.device("cpu"))


def test_timing_wraps_the_named_functions_only_inside_the_block() -> None:
    perf = benchmark("perf")
    import types

    calls: list[int] = []
    module = types.SimpleNamespace(work=lambda n: calls.append(n) or n * 2)
    original = module.work
    with perf.timing({"work": (module, "work")}) as spent:
        assert module.work is not original and module.work(3) == 6
    assert module.work is original and calls == [3] and spent["work"] > 0


def test_group_speed_prints_the_build_time_and_the_halved_cost(capsys: pytest.CaptureFixture[str]) -> None:
    group_speed = benchmark("group_speed")
    assert group_speed.main(["--models", "resnet20", "--repeats", "1", "--threads", "1"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("resnet20") and "9 layers -> {'chain': 9}" in line and "half pruned" in line
    assert group_speed.main(["--models", "resnet2O"]) == 2
    assert capsys.readouterr().err.startswith("error: --models: unknown model 'resnet2O'")


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_tracker_cost_streams_every_epoch_through_the_real_tracker(kind: str) -> None:
    """benchmarks/tracker_cost.py's measurement streams through the real tracker (a tracker that dropped out with a
    warning would end it with an error) and returns positive times, the first epoch apart from the others."""
    tracker_cost = benchmark("tracker_cost")
    pytest.importorskip({"tensorboard": "tensorboard", "mlflow": "mlflow"}[kind],
                        reason=f"the {kind} extra is not installed (pip install -e '.[{kind}]')")
    row = {"epoch": 1, "lr": 0.01, "train_loss": 0.5, "train_acc": 0.8, "test_loss": 0.6, "test_acc": 0.78,
           "seconds": 1.0}
    opening, first, steady, total = tracker_cost.logging_ms(kind, row, 3)
    assert opening > 0 and first > 0 and steady > 0 and total >= first + steady
