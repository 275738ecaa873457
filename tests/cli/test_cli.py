"""The command line as a user meets it: help, listing, planning, and bad input (exit 2, no traceback, no files)."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import build_parser, main
from bench.runner import model_entry
from tests.conftest import PROJECT, tiny_suite


def bench(*args: str, cwd: Path = PROJECT) -> subprocess.CompletedProcess:
    """Run ``python bench.py ARGS`` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, str(PROJECT / "bench.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command", [[], ["run"], ["plan"], ["status"], ["report"], ["list"]])
def test_every_command_has_help(command: list[str]) -> None:
    out = bench(*command, "--help")
    assert out.returncode == 0 and "usage: bench.py" in out.stdout


def test_list_shows_registered_names(capsys) -> None:
    for what, expected in (("methods", "l1"), ("models", "resnet56"), ("datasets", "fashion_mnist")):
        assert main(["list", what]) == 0
        assert expected in capsys.readouterr().out


def test_list_datasets_shows_their_options_with_types_defaults_and_bounds(capsys) -> None:
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    synthetic = out[out.index("synthetic "):]
    assert "    num_classes = 10  (an integer >= 2)\n" in synthetic and "    seed = 0  (an integer)\n" in synthetic
    assert "    num_workers = 4  (an integer >= 0)\n" in out[out.index("imagenet "):]
    assert "root" not in out.replace("<root>", "")   # where data live is --data-root, not an option


def test_list_methods_shows_bounds(capsys) -> None:
    assert main(["list", "methods"]) == 0
    assert re.search(r"\n    \w+ = [\d.]+  \(a number >= 0 and < 1\)", capsys.readouterr().out)  # e.g. a momentum


@pytest.mark.parametrize("command", [["run", "s.yaml"], ["plan", "s.yaml"], ["status", "s.yaml"], ["report"],
                                     ["list", "models"]])
def test_every_command_takes_quiet(command: list[str]) -> None:
    assert build_parser().parse_args([*command, "--quiet"]).quiet is True


def test_plan_lists_runs_without_writing(write_suite, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    assert main(["plan", str(write_suite(tiny_suite())), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and out.count("pending") == 5  # 4 rows + the summary line
    assert not results.exists()


BAD_SUITES = {
    "unknown key": (tiny_suite(retrian={"epochs": 1}), "Did you mean 'retrain'"),
    "ratio of 1": (tiny_suite(prune={"ratios": [1.0]}), "must lie in [0, 1)"),
    "unknown method": (tiny_suite(methods=["l1", "tpp-typo"]), "unknown method 'tpp-typo'"),
    "layer that matches nothing": (tiny_suite(prune={"ratios": [0.5], "layers": ["features.*"]}),
                                   "'features.*' match no Conv2d or Linear layer"),
    "layer feeding a residual": (tiny_suite(model="resnet20", prune={"ratios": [0.5], "layers": ["layer1.0.conv2"]}),
                                 "layer1.0.conv2"),
    "profile pattern unused": (tiny_suite(prune={"ratios": [{"classifier": 0.5}]}), "match none of the pruned"),
    "missing data root": (tiny_suite(dataset="cifar10", data_root="/nonexistent/data"), "cifar10"),
    "global ranking with a per-layer profile": (
        tiny_suite(model="resnet20", methods=["slimming"], prune={"layers": ["layer*.conv1"],
                                                                    "ratios": [{"layer1.*": 0.5, "layer2.*": 0.3}]}),
        "methods: slimming: scope 'global' ranks all layers with one pruning ratio"),
    "probe larger than the training set": (tiny_suite(trainability={"samples": 600}),
                                           "trainability.samples: 600 probe samples"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_bad_suites_exit_2_with_a_message_and_write_nothing(case: str, write_suite, tmp_path: Path) -> None:
    suite, expected = BAD_SUITES[case]
    results = tmp_path / "results"
    out = bench("run", str(write_suite(suite)), "--results", str(results), "--quiet")
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ")
    assert not results.exists()


def test_validation_errors_name_the_suite_file(write_suite, tmp_path: Path) -> None:
    suite = write_suite(tiny_suite(model="resnet20", prune={"ratios": [0.5], "layers": ["layer1.0.conv2"]}))
    out = bench("run", str(suite), "--results", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 2 and out.stderr.startswith(f"error: {suite}: prune.layers: layer 'layer1.0.conv2'")


def test_bad_device_flag(write_suite, tmp_path: Path) -> None:
    for device, expected in (("foo", "--device is 'foo'; allowed: auto, cpu, cuda, cuda:N."),
                             ("cuda:x", "--device is 'cuda:x'")):
        out = bench("run", str(write_suite(tiny_suite())), "--device", device, "--results", str(tmp_path / "r"))
        assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_cannot_stand_in_for_a_method_s_own_dense_training(write_suite, tmp_path: Path) -> None:
    checkpoint = tmp_path / "dense.pt"
    torch.save(model_entry("mlp7_relu").build(num_classes=10, in_channels=1).state_dict(), checkpoint)
    suite = tiny_suite(pretrain={"checkpoint": str(checkpoint)}, methods=["l1", "slimming"])
    out = bench("run", str(write_suite(suite)), "--results", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 2 and "'slimming' trains its own dense model" in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()


def test_missing_suite_file_and_bad_set(tmp_path: Path, write_suite) -> None:
    out = bench("run", str(tmp_path / "nope.yaml"), "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    out = bench("plan", str(write_suite(tiny_suite())), "--set", "retrain.epochs")
    assert out.returncode == 2 and "key.path=value" in out.stderr


def test_corrupt_dense_checkpoint_is_named(tmp_path: Path, write_suite) -> None:
    bad = tmp_path / "dense.pt"
    bad.write_bytes(b"not a checkpoint")
    suite = tiny_suite(pretrain={"checkpoint": str(bad)})
    out = bench("run", str(write_suite(suite)), "--results", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 2 and str(bad) in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()
    torch.save({"state_dict": {"layers.0.weight": torch.zeros(3, 3)}}, bad)  # loads, but does not fit
    out = bench("run", str(write_suite(suite)), "--results", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 2 and "does not fit this model" in out.stderr


def test_unwritable_results_directory(tmp_path: Path, write_suite) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    out = bench("run", str(write_suite(tiny_suite())), "--results", str(blocker / "results"), "--quiet")
    assert out.returncode == 2 and f"'{blocker / 'results'}' is not a directory ('{blocker}' is a file)" in out.stderr


def test_yaml_error_names_file_and_line(tmp_path: Path, write_suite) -> None:
    path = write_suite("name: x\nmodel: [\n")
    out = bench("plan", str(path))
    assert out.returncode == 2 and str(path) in out.stderr and "line" in out.stderr


def test_success_is_info_and_a_rerun_with_nothing_to_do_shows_no_bar(write_suite, tmp_path: Path, capsys,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    suite = str(write_suite(tiny_suite(methods=["l1"], retrain={"epochs": 1, "batch_size": 64, "lr": 0.05},
                                       pretrain={"epochs": 1, "batch_size": 64, "lr": 0.05})))
    command = ["run", suite, "--results", str(tmp_path)]
    with caplog.at_level(logging.INFO, logger="bench"):
        assert main(command) == 0
        assert re.search(r"(^|\r)tiny: 100%", capsys.readouterr().err, re.M)   # the suite's bar, while there is work
        assert main(command) == 0
    assert not re.search(r"(^|\r)tiny: ", capsys.readouterr().err, re.M)       # no empty bar
    summaries = [(r.levelname, r.getMessage().split(".")[0]) for r in caplog.records if "Results in" in r.getMessage()]
    assert summaries == [("INFO", "suite 'tiny': 1 ok"), ("INFO", "suite 'tiny': nothing to do (1 already finished)")]
