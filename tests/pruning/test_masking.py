"""prune.mode: mask: masked models compute what removed ones do, masks hold through training and resumes, the removal
figures follow OrthoReg's bookkeeping, and the OrthoReg ResNet-34 suite runs masked end to end."""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml
from torch import Tensor, nn

from bench.cli import main, prepare
from bench.groups import plan_groups, slim_groups
from bench.masking import MaskHooks, apply_masks_, parameter_masks, removal_cost
from bench.measure import count_flops, count_parameters
from bench.pruning import PruningError, prunable_layers
from bench.store import load_checkpoint
from bench.train import Recipe, make_optimizer, train_epoch
from tests.conftest import PROJECT, tiny_suite
from tests.core.test_faults import comparable, final_results, run_suite
from tests.pruning.test_groups import Concat, built, halves, randomised, small_vit

RESNET34_BRANCHES = ["layer*.*.conv1", "layer*.*.conv2", "layer*.*.shortcut.0"]


def masked_copy(model: nn.Module, layers: list[str], x: Tensor, mask: bool = True) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with a seeded half of each group's units masked, and the kept units."""
    masked = copy.deepcopy(model)
    plan = plan_groups(masked, x[:1], layers, mask=mask)
    keep, _ = halves(plan)
    apply_masks_(masked, parameter_masks(masked, plan, keep))
    return masked, keep


@pytest.mark.parametrize("case", ["chain", "residual stream", "concatenation", "attention heads", "mlp hidden units"])
def test_a_masked_model_computes_what_the_removed_one_does(case: str) -> None:
    """For every group type that removal has, masking the same units gives the slimmed model's outputs."""
    if case == "chain":
        model, layers, x = randomised(built("resnet20")), None, torch.randn(2, 3, 16, 16)
        layers = prunable_layers(model, ["layer*.*.conv1"])
    elif case == "residual stream":  # a stream is a group only when removing; the masks are the same machinery
        torch.manual_seed(0)
        model = randomised(torchvision.models.resnet18(num_classes=10))
        layers, x = prunable_layers(model, ["layer*.*.conv2"]), torch.randn(2, 3, 32, 32)
    elif case == "concatenation":
        torch.manual_seed(0)
        model, layers, x = randomised(Concat()), ["a", "b"], torch.randn(2, 3, 8, 8)
    else:
        model, x = small_vit(), torch.randn(2, 3, 8, 8)
        layers = prunable_layers(model, ["encoder.layers.*.self_attention.[qkv]" if case == "attention heads"
                                         else "encoder.layers.*.mlp.0"])
    mask = case != "residual stream"
    masked, keep = masked_copy(model, layers, x, mask=mask)
    plan = plan_groups(model, x[:1], layers, mask=mask)
    assert {g.kind for g in plan.groups.values()} == {
        "chain": {"chain"}, "attention heads": {"heads"}}.get(case, {"coupled"})
    slim_groups(model, plan, keep)
    assert count_parameters(model) < count_parameters(masked)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), model(x), rtol=1e-4, atol=1e-5)


def zeroed_at(model: nn.Module, outputs: dict[str, Tensor]) -> list:
    """Forward hooks zeroing the given channels of the named modules' outputs (OrthoReg's MapLayer)."""

    def hook(index: Tensor):  # noqa: ANN202
        return lambda module, args, out: out.index_fill(1, index, 0.0)

    return [model.get_submodule(name).register_forward_hook(hook(index)) for name, index in outputs.items()]


def test_a_residual_branch_is_masked_per_block_at_its_batchnorm_and_cannot_be_removed() -> None:
    model = randomised(built("resnet34_cifar"))
    layers = ["layer1.0.conv2", "layer1.1.conv2", "layer2.0.shortcut.0"]
    x = torch.randn(2, 3, 8, 8)
    plan = plan_groups(model, x[:1], layers, mask=True)
    assert [(g.kind, g.producers, g.normalisation) for g in plan.groups.values()] == [
        ("branch", ["layer1.0.conv2"], ["layer1.0.bn2"]), ("branch", ["layer1.1.conv2"], ["layer1.1.bn2"]),
        ("branch", ["layer2.0.shortcut.0"], ["layer2.0.shortcut.1"])]
    # removing them couples each stage's writers into one group instead
    assert [g.kind for g in plan_groups(built("resnet34_cifar"), x[:1], layers).groups.values()] == ["coupled"] * 2
    masked, keep = masked_copy(model, layers, x)
    pruned = {bn: torch.tensor(sorted(set(range(plan.groups[c].size)) - set(keep[c].tolist())))
              for c, bn in [("layer1.0.conv2", "layer1.0.bn2"), ("layer1.1.conv2", "layer1.1.bn2"),
                            ("layer2.0.shortcut.0", "layer2.0.shortcut.1")]}
    handles = zeroed_at(model, pruned)
    with torch.no_grad():
        reference, got = model(x), masked(x)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(PruningError, match="'layer1.0.conv2' feeds a residual sum on its own"):
        slim_groups(model, plan, keep)


def test_removal_figures_count_a_branchs_masked_rows_as_removed() -> None:
    """A chain removed for real; a branch's masked rows (conv and BatchNorm) subtracted, the sum keeping its width."""
    model = built("resnet34_cifar")
    x = torch.zeros(1, 3, 8, 8)
    plan = plan_groups(model, x, ["layer1.0.conv1", "layer1.0.conv2"], mask=True)
    keep = {"layer1.0.conv1": torch.arange(48), "layer1.0.conv2": torch.arange(40)}  # 16 and 24 of 64 go
    dense_params, dense_flops = count_parameters(model), count_flops(model, (3, 8, 8))
    got = removal_cost(model, plan, keep, (3, 8, 8))
    # conv1 loses 16 rows (64·9 each) and bn1 16·2, conv2 16 input columns of 9 on each of its 64 rows; then conv2
    # loses 24 rows of 48·9 and bn2 24·2
    assert got["params_pruned"] == dense_params - 16 * 64 * 9 - 16 * 2 - 64 * 16 * 9 - 24 * 48 * 9 - 24 * 2
    # 2 FLOPs per multiply-add at 8x8 outputs: conv1 16 rows of 64·9, conv2 64 rows of 16·9, then 24 rows of 48·9
    assert got["flops_pruned"] == dense_flops - 2 * 64 * (16 * 64 * 9 + 64 * 16 * 9 + 24 * 48 * 9)


def test_masks_hold_through_sgd_with_momentum_and_weight_decay() -> None:
    """After every step the masked weights, biases and BatchNorm entries are exactly zero, and so are their momentum
    buffers; the others train."""
    torch.manual_seed(0)
    model = built("resnet20").train()
    layers = prunable_layers(model, ["layer*.*.conv1", "layer*.*.conv2"])
    plan = plan_groups(model, torch.zeros(1, 3, 16, 16), layers, mask=True)
    assert {g.kind for g in plan.groups.values()} == {"chain", "branch"}
    keep, _ = halves(plan)
    masks = parameter_masks(model, plan, keep)
    apply_masks_(model, masks)
    before = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, Recipe(1, 0.1, momentum=0.9, nesterov=True, weight_decay=5e-3))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(4)]
    train_epoch(model, model, batches, optimizer, [MaskHooks(masks)])
    params = dict(model.named_parameters())
    for name, rows in masks.items():
        zero = (rows == 0).nonzero().flatten()
        assert zero.numel() and not params[name][zero].any(), name
        assert not optimizer.state[params[name]]["momentum_buffer"][zero].any(), name
        alive = rows.nonzero().flatten()
        assert not torch.equal(params[name][alive], before[name][alive]), name


def test_the_mode_enters_run_ids_only_when_it_masks(write_suite) -> None:
    def ids(**prune) -> list[str]:
        path = write_suite(tiny_suite(model="resnet20", prune={"ratios": [0.5], **prune}))
        return [r.run_id for r in prepare(argparse.Namespace(suite=str(path), overrides=[], plugins=[]))[1]]

    assert ids() == ids(mode="remove")
    assert not set(ids()) & set(ids(mode="mask"))


def test_a_method_that_changes_the_removed_model_is_refused_when_masking(write_suite, tmp_path: Path, capsys) -> None:
    suite = write_suite(tiny_suite(model="resnet20", methods=["l1 + orthp"], prune={"ratios": [0.5], "mode": "mask"}))
    assert main(["run", str(suite), "--results", str(tmp_path / "results"), "--quiet"]) == 2
    assert "orthp.after_slim" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


CPU_SIZED = [  # the suite's model, layers, mode and methods; two optimizer steps per epoch on 8x8 synthetic images
    "dataset={name: synthetic, num_train: 64, num_test: 32, size: 8}", "device=cpu",
    "pretrain.epochs=1", "pretrain.batch_size=32", "pretrain.schedule=constant", "retrain.epochs=1",
    "retrain.batch_size=32", "retrain.schedule=constant", "prune.ratios=[0.5]", "trainability.enabled=false",
    "latency.enabled=false",
    "methods=[{orthoreg: {lam: 0.01, floor_fraction: 0, alpha: code, unspent: drop, importance_samples: 32, "
    "importance_batch_size: 32}}, {orthoreg: {lam: 0, floor_fraction: 0, unspent: drop, importance_samples: 32, "
    "importance_batch_size: 32, label: fisher}}, "
    "{slimming: {lam: 0, label: bn_scale}}]",
]


@pytest.mark.slow  # 66 s on this machine under a load of about 8: three runs of a 21M-parameter ResNet on a CPU
def test_the_orthoreg_resnet34_suite_runs_masked_end_to_end(tmp_path: Path) -> None:
    suite = PROJECT / "suites" / "orthoreg_resnet34_cifar100.yaml"
    overrides = [part for o in CPU_SIZED for part in ("--set", o)]
    assert main(["run", str(suite), "--results", str(tmp_path), "--quiet", *overrides]) == 0
    assert main(["report", "--results", str(tmp_path), "--suite", "orthoreg_resnet34_cifar100"]) == 0
    runs = pd.read_csv(tmp_path / "orthoreg_resnet34_cifar100" / "report" / "runs.csv")
    assert sorted(runs.method) == ["bn_scale", "fisher", "orthoreg"] and (runs.status == "ok").all()
    assert (runs.params_masked == runs.params_dense).all() and (runs.flops_masked == runs.flops_dense).all()
    assert (runs.params_pruned < runs.params_dense).all() and (runs.flops_pruned < runs.flops_dense).all()
    for path in (tmp_path / "orthoreg_resnet34_cifar100" / "runs").glob("*/result.json"):
        result = json.loads(path.read_text())
        channels = result["metrics"]["channels"]
        assert {"layer1.0.conv1", "layer1.0.conv2", "layer2.0.shortcut.0"} <= set(channels)
        saved = load_checkpoint(path.parent / "model.pt")
        assert saved["mode"] == "mask"
        state = saved["model"]
        for conv, bn in [("layer1.0.conv2", "layer1.0.bn2"), ("layer2.0.shortcut.0", "layer2.0.shortcut.1")]:
            gone = sorted(set(range(channels[conv][1])) - set(saved["keep"][conv].tolist()))
            assert len(gone) == channels[conv][1] - channels[conv][0] > 0
            # retrained with momentum, and still zero: the block's output channels stay masked
            for tensor in (state[f"{conv}.weight"], state[f"{bn}.weight"], state[f"{bn}.bias"]):
                assert not tensor[gone].any()


MASKED_SUITE = tiny_suite(model="resnet20", methods=["l1"],
                          prune={"ratios": [0.5], "layers": ["layer*.*.conv1", "layer*.*.conv2"], "mode": "mask"},
                          retrain={"epochs": 3, "batch_size": 64, "lr": [0.05], "schedule": "constant"})


@pytest.mark.slow  # three subprocess runs of the tiny suite
@pytest.mark.parametrize("fault", ["pruned:saved", "retrain:epoch:2"])
def test_a_killed_masked_run_resumes_with_its_masks(fault: str, tmp_path: Path) -> None:
    """Killed after the masked model is saved or mid-retraining, the rerun ends with the uninterrupted numbers."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(MASKED_SUITE))
    assert run_suite(suite, tmp_path / "reference").returncode == 0
    assert run_suite(suite, tmp_path / "killed", fault).returncode == -9
    assert run_suite(suite, tmp_path / "killed").returncode == 0
    (expected,), (got,) = final_results(tmp_path / "reference").values(), final_results(tmp_path / "killed").values()
    assert got["status"] == "ok" and comparable(got) == comparable(expected)
    assert got["metrics"]["params_masked"] > got["metrics"]["params_pruned"]
