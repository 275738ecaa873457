"""Tests for bench.trainability: vectorised JSV against a slow autograd reference, and known spectra."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bench.trainability import JSVStats, jacobian_singular_values, jsv_stats

NUM_CLASSES = 10


def _conv_bn_net(seed: int = 0) -> nn.Sequential:
    """Tiny float64 conv net with BatchNorm (randomised running stats and affine) and ReLU."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, NUM_CLASSES),
    ).double()
    for bn in (model[1], model[4]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    return model


def _probe(n: int = 7) -> Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, 8, 8, dtype=torch.float64)


def _reference_jsv(model: nn.Module, inputs: Tensor) -> Tensor:
    """One sample at a time, one autograd backward pass per class, in eval mode."""
    model.eval()
    rows = []
    for x in inputs:
        x = x.unsqueeze(0).clone().requires_grad_(True)
        out = model(x)[0]
        jac = torch.stack(
            [torch.autograd.grad(out[k], x, retain_graph=True)[0].flatten() for k in range(out.numel())]
        )
        rows.append(torch.linalg.svdvals(jac))
    return torch.stack(rows)


def test_vectorised_jsv_matches_autograd_reference() -> None:
    model, inputs = _conv_bn_net(), _probe()
    # chunk_size=3 exercises an uneven last chunk.
    fast = jacobian_singular_values(model.train(), inputs, chunk_size=3)
    slow = _reference_jsv(model, inputs)
    assert fast.shape == (inputs.shape[0], NUM_CLASSES)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0.0)


def test_eval_mode_jsv_is_per_sample() -> None:
    # With BatchNorm on running statistics a sample's JSV must not depend on its chunk-mates.
    model, inputs = _conv_bn_net(), _probe()
    together = jacobian_singular_values(model, inputs, chunk_size=50)
    alone = jacobian_singular_values(model, inputs[2:3])
    torch.testing.assert_close(together[2:3], alone, rtol=1e-10, atol=0.0)


def test_orthogonal_linear_mlp_is_isometric() -> None:
    # Square orthogonal then semi-orthogonal (orthonormal rows) layers: J J^T = I, so every
    # singular value is exactly 1.
    torch.manual_seed(0)
    widths = [48, 48, 32, NUM_CLASSES]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layer = nn.Linear(fan_in, fan_out, bias=False)
        q, _ = torch.linalg.qr(torch.randn(fan_in, fan_out))  # orthonormal columns
        layer.weight.data.copy_(q.T)
        layers.append(layer)
    model = nn.Sequential(*layers)
    sv = jacobian_singular_values(model, torch.randn(5, 3, 4, 4))
    torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0.0, atol=1e-5)
    stats = jsv_stats(model, torch.randn(5, 3, 4, 4))
    assert stats.mean == pytest.approx(1.0, abs=1e-5)
    assert stats.mean_sq_dev == pytest.approx(0.0, abs=1e-9)
    assert stats.condition == pytest.approx(1.0, abs=1e-4)


def test_scaling_last_layer_halves_mean() -> None:
    model, inputs = _conv_bn_net(), _probe()
    before = jsv_stats(model, inputs)
    model[-1].weight.data.mul_(0.5)
    after = jsv_stats(model, inputs)
    assert after.mean == pytest.approx(0.5 * before.mean, rel=1e-9)
    assert after.max == pytest.approx(0.5 * before.max, rel=1e-9)
    assert after.condition == pytest.approx(before.condition, rel=1e-9)


def test_stats_are_consistent_with_singular_values() -> None:
    model, inputs = _conv_bn_net(), _probe()
    sv = jacobian_singular_values(model, inputs)
    stats = jsv_stats(model, inputs)
    assert isinstance(stats, JSVStats)
    assert stats.as_dict() == {
        "mean": stats.mean,
        "std": stats.std,
        "min": stats.min,
        "max": stats.max,
        "condition": stats.condition,
        "mean_sq_dev": stats.mean_sq_dev,
    }
    assert stats.min == pytest.approx(sv.min().item()) and stats.max == pytest.approx(sv.max().item())
    assert stats.mean_sq_dev == pytest.approx(((sv - 1) ** 2).mean().item())


def test_model_mode_restored_and_running_stats_untouched() -> None:
    model, inputs = _conv_bn_net(), _probe()
    model.train()
    model[4].eval()
    running_mean = model[1].running_mean.clone()
    jsv_stats(model, inputs)
    assert model.training and model[1].training and not model[4].training
    torch.testing.assert_close(model[1].running_mean, running_mean)
    model.eval()
    jsv_stats(model, inputs)
    assert not any(m.training for m in model.modules())
