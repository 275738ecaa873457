"""The OrthoReg paper suites pinned to the released code's early-bird protocol (EkdeepSLubana/OrthoReg 869f049:
config.py, main.py, pruner.py's constrain_ratios; methods.md A.6): an edit to an epoch count, an LR, a milestone, the
batch size, the weight decay, a ratio or a method constant fails here, and so does a change of the VGG-13 and
MobileNet suites' run ids (the ResNet-34 suite's ids are left free: its prune section is still changing)."""
from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from bench import RunContext
from bench.cli import main, prepare
from bench.grid import Run
from bench.runner import dense_recipe, group_plan, new_model, prune_target, retrain_recipe
from tests.conftest import PROJECT

# The code's constants (config.py): the baselines' dense model 25 epochs at a constant 0.1, wd 1e-4; OrthoReg's
# 24 at 0.1 and 1 at 0.01, wd 0; the pruned net 60 / 40 / 40 epochs at 0.1 / 0.01 / 0.001, wd 1e-4; batch 128,
# momentum 0.9; importance over 10,000 samples in batches of 128; 25 / 50 / 75 % pruned globally.
BASELINE_DENSE = {"epochs": 25, "lr": 0.1, "schedule": ("constant", [], 0.1), "weight_decay": 1e-4,
                  "batch_size": 128, "momentum": 0.9, "nesterov": False}
ORTHO_DENSE = BASELINE_DENSE | {"schedule": ("step", [24], 0.1), "weight_decay": 0.0}
RETRAIN = {"epochs": 140, "lr": 0.1, "schedule": ("step", [60, 100], 0.1), "weight_decay": 1e-4, "batch_size": 128,
           "momentum": 0.9, "nesterov": False}
ORTHOREG = {"protocol": "early_bird", "importance_samples": 10000, "importance_batch_size": 128, "scope": "global",
            "between": [], "rounds": 2, "round_epochs": 25, "lr": 0.1, "start": "dense", "alpha": "smaller_side",
            "budget": "channels", "unspent": "reassign"}
PROTOCOLS = {
    "orthoreg_cifar100": {
        "model": "vgg13", "dataset": "cifar100", "seeds": [0], "init": "torch_default",
        "prune": {"ratios": [0.25, 0.5, 0.75], "scope": "global", "min_keep": 1, "floor_fraction": 0.05,
                  "floor_keeps": "important", "layers": ["features.*"]},
        "methods": {
            "orthoreg": ("orthoreg", ORTHOREG | {"lam": 1e-2, "floor_fraction": 0.05, "dense_low_lr_epochs": 1,
                                                 "alpha": "code"}),
            "fisher": ("orthoreg", ORTHOREG | {"lam": 0.0, "floor_fraction": 0.05, "dense_low_lr_epochs": 0}),
            "bn_scale": ("slimming", {"lam": 0.0, "scope": "global", "cut": "count", "divide_by": "fan_in"})},
    },
    "orthoreg_mobilenet_cifar100": {
        "model": "mobilenet_v1", "dataset": "cifar100", "seeds": [0], "init": "torch_default",
        "prune": {"ratios": [0.25, 0.5, 0.75], "scope": "global", "min_keep": 1, "floor_fraction": 0.05,
                  "floor_keeps": "important", "layers": ["conv1", "layers.*.conv2"]},
        "methods": {
            "orthoreg": ("orthoreg", ORTHOREG | {"lam": 1e-3, "floor_fraction": 0.05, "dense_low_lr_epochs": 1,
                                                 "alpha": "code", "budget": "bn_channels"}),
            "fisher": ("orthoreg", ORTHOREG | {"lam": 0.0, "floor_fraction": 0.05, "dense_low_lr_epochs": 0,
                                               "budget": "bn_channels"}),
            "bn_scale": ("slimming", {"lam": 0.0, "scope": "global", "cut": "count", "divide_by": "none"})},
    },
    "orthoreg_resnet34_cifar100": {  # the code's ResNet rule: no 5% floor, one filter per layer
        "model": "resnet34_cifar", "dataset": "cifar100", "seeds": [0], "init": "torch_default",
        "prune": {"ratios": [0.25, 0.5, 0.75], "scope": "global", "min_keep": 1, "floor_fraction": 0.0,
                  "floor_keeps": "important"},
        "methods": {
            "orthoreg": ("orthoreg", ORTHOREG | {"lam": 1e-2, "floor_fraction": 0.0, "dense_low_lr_epochs": 1,
                                                 "alpha": "code", "unspent": "drop"}),
            "fisher": ("orthoreg", ORTHOREG | {"lam": 0.0, "floor_fraction": 0.0, "dense_low_lr_epochs": 0,
                                               "unspent": "drop"}),
            "bn_scale": ("slimming", {"lam": 0.0, "scope": "global", "cut": "count", "divide_by": "none"})},
    },
}
# The first run id of each method and the dense ids, as of the code's protocol (2026-12-06, issue 30: PyTorch's
# default init in every suite; OrthoReg's α by the code's rule; MobileNet's budget in BN channels).
RUN_IDS = {
    "orthoreg_cifar100": {"orthoreg": "10f767d7f3af", "fisher": "b50d46f70c02", "bn_scale": "63c0fdc0414a",
                          "dense:orthoreg": "8f608738287c", "dense:fisher": "8bc8aba7e7c5",
                          "dense:bn_scale": "8bc8aba7e7c5"},
    "orthoreg_mobilenet_cifar100": {"orthoreg": "772086f72b10", "fisher": "cf07e495f980", "bn_scale": "f73632efef5a",
                                    "dense:orthoreg": "8bf97cbeb927", "dense:fisher": "33eb12a19592",
                                    "dense:bn_scale": "33eb12a19592"},
}


def suite_runs(name: str, overrides: list[str] | None = None) -> list[Run]:
    _, runs, _ = prepare(argparse.Namespace(suite=str(PROJECT / "suites" / f"{name}.yaml"), overrides=overrides or [],
                                            plugins=[]))
    return runs


def recipe_of(recipe: Any) -> dict[str, Any]:
    """A resolved recipe as the protocol tables above write it."""
    s = recipe.schedule
    return {"epochs": recipe.epochs, "lr": recipe.lr, "schedule": (s.name, s.milestones, s.gamma),
            "weight_decay": recipe.weight_decay, "batch_size": recipe.batch_size, "momentum": recipe.momentum,
            "nesterov": recipe.nesterov}


def protocol(runs: list[Run]) -> dict[str, Any]:
    """What the suite really trains and prunes with: resolved recipes, prune options and method constants."""
    suite = runs[0].suite
    prune = {"ratios": suite.prune.ratios, "scope": suite.prune.scope, "min_keep": suite.prune.min_keep,
             "floor_fraction": suite.prune.floor_fraction, "floor_keeps": suite.prune.floor_keeps}
    if "layers" in PROTOCOLS.get(suite.name, {}).get("prune", {}):
        prune["layers"] = suite.prune.layers
    methods, dense, retrain = {}, {}, {}
    for run in runs:
        (method,) = run.method.build()
        methods[run.method.label] = (method.name, dataclasses.asdict(method.hparams))
        dense[run.method.label] = recipe_of(dense_recipe(run, [method]))
        retrain[run.method.label] = recipe_of(retrain_recipe(run))
    return {"model": suite.model, "dataset": suite.dataset_name, "seeds": suite.seeds, "init": suite.pretrain.init,
            "prune": prune,
            "methods": methods, "dense": dense, "retrain": retrain}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_orthoreg_suites_follow_the_code_protocol(name: str) -> None:
    found = protocol(suite_runs(name))
    expected = dict(PROTOCOLS[name])
    expected["dense"] = {"orthoreg": ORTHO_DENSE, "fisher": BASELINE_DENSE, "bn_scale": BASELINE_DENSE}
    expected["retrain"] = dict.fromkeys(expected["methods"], RETRAIN)
    assert found == expected


@pytest.mark.parametrize("edit", ["pretrain.lr=0.05", "pretrain.epochs=30",
                                  "retrain.schedule.milestones=[60, 120]", "retrain.lr=[0.01]",
                                  "retrain.weight_decay=5.0e-4", "pretrain.batch_size=64", "prune.floor_fraction=0",
                                  "prune.ratios=[0.5]", "pretrain.init=model"])
def test_an_edit_to_the_protocol_is_caught(edit: str) -> None:
    assert protocol(suite_runs("orthoreg_cifar100", [edit])) != protocol(suite_runs("orthoreg_cifar100"))


def test_a_scheduled_pretrain_is_refused_where_orthoreg_adds_its_last_epoch(tmp_path, capsys) -> None:
    """OrthoReg's 24 + 1 is the baselines' constant LR with a last epoch at lr/10: any other pretrain schedule is a
    CLI error naming the option, before anything is listed or written."""
    suite = str(PROJECT / "suites" / "orthoreg_cifar100.yaml")
    assert main(["plan", suite, "--results", str(tmp_path), "--set", "pretrain.schedule={name: cosine}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "error: methods: orthoreg: dense_low_lr_epochs 1" in err and "Traceback" not in err
    assert main(["plan", suite, "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.split("dense models:\n")[1]
    assert out == ("8f608738287c  seed 0  25 epochs, lr 0.1 step x0.1 at [24], weight decay 0, batch 128  (orthoreg)\n"
                   "8bc8aba7e7c5  seed 0  25 epochs, lr 0.1 constant, weight decay 0.0001, batch 128  "
                   "(fisher, bn_scale)\n")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", sorted(RUN_IDS))
def test_orthoreg_suite_run_ids_are_pinned(name: str) -> None:
    found: dict[str, str] = {}
    for run in suite_runs(name):
        found.setdefault(run.method.label, run.run_id)
        found.setdefault(f"dense:{run.method.label}", run.dense_id)
    assert found == RUN_IDS[name]


def test_bn_scale_baseline_on_vgg13_keeps_the_codes_floor_in_every_layer() -> None:
    """The VGG-13 suite's BN-scale baseline at 75 %: |γ| / (C_in·9) ranks the wide late layers lowest, so the floor
    binds; every layer keeps at least int(0.05 n) + 1 (26 of 512), and without prune.floor_fraction it would not."""
    run = next(r for r in suite_runs("orthoreg_cifar100") if r.method.label == "bn_scale" and r.ratio == 0.75)
    (method,) = run.method.build()
    info = SimpleNamespace(num_classes=100, in_channels=3, image_size=32)
    model = new_model(run, info, [method])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0, generator=generator)
    plan = group_plan(model, run, info)
    layers = plan.leaders
    sizes = {name: model.get_submodule(name).weight.shape[0] for name in layers}
    assert len(layers) == 10 and sum(sizes.values()) == 2944

    def kept(floor_fraction: float) -> dict[str, int]:
        target = dataclasses.replace(prune_target(run, plan), floor_fraction=floor_fraction)
        ctx = RunContext(target=target, data=None, device=torch.device("cpu"), seed=0, nonlinearity="relu",
                         batchnorm_of={m: bn for g in plan.groups.values() for m, bn in g.batchnorm_of.items()},
                         dense_recipe=dense_recipe(run, [method]), retrain=retrain_recipe(run))
        keep = method.select(model, ctx)
        return {name: len(keep[name]) for name in layers}

    assert prune_target(run, plan).floor_fraction == 0.05
    with_floor = kept(0.05)
    assert sum(with_floor.values()) == 2944 - 2208  # ceil(0.75 · 2944) removed
    assert all(with_floor[n] >= int(0.05 * sizes[n]) + 1 for n in layers)
    # the widest fan-ins (the 256 fed by 256, and every 512) rank lowest and stop at the floor: 13 and 26
    assert [with_floor[n] for n in layers[5:]] == [13, 26, 26, 26, 26]
    without = kept(0.0)
    assert any(without[n] < int(0.05 * sizes[n]) + 1 for n in layers)
