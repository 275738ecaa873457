"""Tests for bench.measure: exact FLOP/parameter counts on hand-checkable models, latency sanity."""
from __future__ import annotations

import torch
from torch import nn

from bench.measure import count_flops, count_parameters, measure_latency


def _small_conv_net() -> nn.Sequential:
    """conv3x3(3->8) + BN + ReLU, conv3x3 stride 2 (8->16, no bias) + BN + ReLU, pool, Linear(16->10)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_linear_flops_count_multiply_adds_twice_and_ignore_bias() -> None:
    # FlopCounterMode counts aten.addmm as its matmul only (2*M*K*N): the bias add is free, so a
    # biased and an unbiased Linear both cost exactly 2 * 1024 * 100.
    assert count_flops(nn.Linear(1024, 100), (1024,)) == 2 * 1024 * 100 == 204_800
    assert count_flops(nn.Linear(1024, 100, bias=False), (1024,)) == 204_800


def test_conv_net_flops_match_hand_count() -> None:
    # 2 * Cin * Cout * k^2 * Hout * Wout per conv, 2 * in * out for the Linear; conv bias, BN, ReLU
    # and pooling are counted as 0 FLOPs by FlopCounterMode.
    expected = 2 * 3 * 8 * 9 * 16 * 16 + 2 * 8 * 16 * 9 * 8 * 8 + 2 * 16 * 10
    assert count_flops(_small_conv_net(), (3, 16, 16)) == expected


def test_count_flops_restores_training_mode() -> None:
    model = _small_conv_net().train()
    count_flops(model, (3, 16, 16))
    assert all(m.training for m in model.modules())


def test_parameters_include_batchnorm_affine() -> None:
    conv1 = 3 * 8 * 9 + 8
    bn1 = 2 * 8
    conv2 = 8 * 16 * 9
    bn2 = 2 * 16
    fc = 16 * 10 + 10
    assert count_parameters(_small_conv_net()) == conv1 + bn1 + conv2 + bn2 + fc


def test_latency_positive_and_restores_mode() -> None:
    model = _small_conv_net().train()
    model[1].eval()  # a mixed-mode model must come back exactly as it was
    result = measure_latency(model, (3, 16, 16), batch_size=4, repeats=3, warmup=1, min_time_s=0.001)
    assert result["median_ms"] > 0 and result["mean_ms"] > 0 and result["iqr_ms"] >= 0
    assert result["device"] == "cpu"
    assert model.training and not model[1].training and model[4].training


def test_latency_does_not_update_batchnorm_stats() -> None:
    model = _small_conv_net().train()
    before = model[1].running_mean.clone()
    measure_latency(model, (3, 16, 16), batch_size=4, repeats=2, warmup=1, min_time_s=0.001)
    torch.testing.assert_close(model[1].running_mean, before)


class _ThreadSpy(torch.nn.Module):
    """Records the torch thread count each forward pass runs with."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 2)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.linear(x)


def test_latency_times_at_least_repeats_blocks_with_the_runs_thread_count() -> None:
    spy = _ThreadSpy()
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the run's thread count; torch.utils.benchmark.Timer's own default is 1
    try:
        result = measure_latency(spy, (8,), batch_size=4, repeats=7, warmup=0, min_time_s=0.001)
    finally:
        torch.set_num_threads(before)
    assert result["threads"] == 2 and set(spy.seen) == {2}
    assert result["blocks"] >= 7 and result["per_block"] >= 1
    assert len(spy.seen) >= result["blocks"] * result["per_block"]  # every timed pass ran (plus the estimate's)


def test_latency_min_time_enters_prune_ids_only_when_set(write_suite) -> None:
    from bench.config import load_suite
    from bench.grid import expand
    from bench.plugins import load_builtin
    from tests.conftest import tiny_suite

    load_builtin()
    default = expand(load_suite(write_suite(tiny_suite(latency={"repeats": 3}), "a.yaml")))[0]
    written = expand(load_suite(write_suite(tiny_suite(latency={"repeats": 3, "min_time_s": 0.2}), "b.yaml")))[0]
    short = expand(load_suite(write_suite(tiny_suite(latency={"repeats": 3, "min_time_s": 0.01}), "c.yaml")))[0]
    assert default.prune_id == written.prune_id != short.prune_id  # at its default it stays out of the key
    assert default.run_id == short.run_id  # latency settings never change a run id
