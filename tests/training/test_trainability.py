"""Tests for bench.trainability: vectorised JSV against a slow autograd reference, and known spectra."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import bench.trainability as trainability
from bench.trainability import (
    DEFAULT_MAX_BYTES,
    ChunkPlan,
    JSVStats,
    batch_jacobian_singular_values,
    jacobian_singular_values,
    jsv_stats,
    plan_chunks,
)

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


def test_train_batch_jsv_matches_the_summed_full_batch_jacobian() -> None:
    """trainability.mode: train_batch, TPP's code's JSV: row i of sample a is d(Σ_b logits[b, i]) / d x_a in train
    mode; built here from the full (batch × classes × batch × input) Jacobian of autograd.functional, summed over b."""
    model, inputs = _conv_bn_net(), _probe(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    fast = batch_jacobian_singular_values(model, inputs)
    reference = copy.deepcopy(model).train()
    full = torch.autograd.functional.jacobian(reference, inputs)  # (B, K, B, C, H, W)
    summed = full.sum(dim=0).transpose(0, 1).flatten(2)  # (B, K, C*H*W): Σ_b over the logits' batch index
    torch.testing.assert_close(fast, torch.linalg.svdvals(summed), rtol=1e-8, atol=0.0)
    # BatchNorm's batch statistics couple the samples: not the per-sample eval-mode values, and not the same alone.
    assert not torch.allclose(fast, jacobian_singular_values(model, inputs), rtol=1e-2)
    assert not torch.allclose(fast[2], batch_jacobian_singular_values(model, inputs[2:4])[0], rtol=1e-3)
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_train_batch_jsv_equals_eval_mode_without_batchnorm() -> None:
    """Without BatchNorm (or dropout) nothing couples the samples: both modes give the same values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 20), nn.ReLU(), nn.Linear(20, NUM_CLASSES)).double()
    inputs = _probe()
    torch.testing.assert_close(batch_jacobian_singular_values(model, inputs), jacobian_singular_values(model, inputs),
                               rtol=1e-10, atol=1e-12)
    stats = {mode: jsv_stats(model, inputs, mode=mode) for mode in ("eval", "train_batch")}
    assert stats["eval"].mean == pytest.approx(stats["train_batch"].mean, rel=1e-10)


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


def _spy_plans(monkeypatch: pytest.MonkeyPatch) -> list[ChunkPlan]:
    """Record every plan jacobian_singular_values makes."""
    plans: list[ChunkPlan] = []
    real = trainability.plan_chunks

    def spy(*args: object, **kwargs: object) -> ChunkPlan:
        plans.append(real(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(trainability, "plan_chunks", spy)
    return plans


def test_small_budget_chunks_samples_and_classes_without_changing_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = _conv_bn_net(), _probe()
    plans = _spy_plans(monkeypatch)
    whole = jacobian_singular_values(model, inputs)
    chunked = jacobian_singular_values(model, inputs, max_bytes=90_000)  # 3 classes per backward pass
    assert plans[0] == ChunkPlan(samples=7, classes=NUM_CLASSES, columns=3 * 8 * 8)
    assert plans[1].samples == 1 and 1 < plans[1].classes < NUM_CLASSES and NUM_CLASSES % plans[1].classes
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(chunked, _reference_jsv(model, inputs), rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("columns", [4, 7, 50, 191])  # below, at and above K rows per QR block; uneven last block
def test_blocked_qr_reduction_matches_svdvals(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    model, inputs = _conv_bn_net(), _probe()
    monkeypatch.setattr(trainability, "plan_chunks", lambda *a, **k: ChunkPlan(samples=3, classes=4, columns=columns))
    blocked = jacobian_singular_values(model, inputs)
    monkeypatch.undo()
    torch.testing.assert_close(blocked, jacobian_singular_values(model, inputs), rtol=1e-10, atol=0.0)


def test_blocked_qr_keeps_tiny_singular_values_of_an_ill_conditioned_jacobian() -> None:
    # Singular values 1 .. 1e-7 (condition 1e7): the Gram matrix J J^T would lose the small ones in float64.
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(NUM_CLASSES, NUM_CLASSES, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(300, NUM_CLASSES, dtype=torch.float64))
    sv = torch.logspace(0, -7, NUM_CLASSES, dtype=torch.float64)
    jac = (u * sv) @ v.T
    blocked = trainability._singular_values(jac.unsqueeze(0), columns=32)
    torch.testing.assert_close(blocked[0], sv, rtol=1e-8, atol=0.0)


def test_cifar_sized_model_plan_takes_every_sample_and_class_at_once() -> None:
    # resnet56 on 3x32x32 CIFAR: 10 classes; activation sizes as the probe forward pass measures them.
    plan = plan_chunks(100, 10, 3 * 32 * 32, saved_numel=1_323_082, largest_activation=16 * 32 * 32)
    assert plan == ChunkPlan(samples=100, classes=10, columns=3 * 32 * 32)
    assert plan_chunks(100, 10, 3 * 32 * 32, max_samples=50).samples == 50


@pytest.mark.parametrize("activations", [(0, 0), (32_040_424, 64 * 112 * 112)])  # unknown; torchvision resnet50
def test_imagenet_plan_is_one_sample_at_a_time_with_class_chunks_within_budget(activations: tuple[int, int]) -> None:
    K, D = 1000, 3 * 224 * 224
    saved, largest = activations
    plan = plan_chunks(20, K, D, saved_numel=saved, largest_activation=largest)
    assert plan.samples == 1 and 1 <= plan.classes < K and plan.columns < D
    per_class = D + trainability.BACKWARD_FACTOR * max(largest, D)
    assert 4 * (K * D + saved + plan.classes * per_class) <= DEFAULT_MAX_BYTES  # backward pass
    assert 4 * (K * D + saved + (plan.classes + 1) * per_class) > DEFAULT_MAX_BYTES  # the largest that fits
    assert 4 * K * D + 8 * K * (2 * K + 3 * plan.columns) <= DEFAULT_MAX_BYTES  # float64 reduction
    assert plan.columns >= K


def test_plan_over_budget_still_makes_progress() -> None:
    # One sample's Jacobian alone exceeds the budget: one sample, one class, QR blocks of K columns.
    assert plan_chunks(5, 1000, 150_528, max_bytes=2**20) == ChunkPlan(samples=1, classes=1, columns=1000)


def test_invalid_budget_and_chunk_size_rejected() -> None:
    model, inputs = _conv_bn_net(), _probe()
    with pytest.raises(ValueError, match="max_bytes"):
        jacobian_singular_values(model, inputs, max_bytes=0)
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian_singular_values(model, inputs, chunk_size=0)


def test_the_jacobian_is_built_without_tf32() -> None:
    """With TF32 on for matmuls and convolutions (cuDNN's default on Ampere and later), the JSV's forward and backward
    passes still run at full float32 precision, and the user's settings are restored afterwards."""
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [switch.fp32_precision for switch in switches]
    seen = []
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    model[0].register_forward_hook(lambda *_: seen.append([s.fp32_precision for s in switches]))
    try:
        for switch in switches:
            switch.fp32_precision = "tf32"
        jsv_stats(model, torch.randn(2, 1, 4, 4))
        after = [s.fp32_precision for s in switches]
    finally:
        for switch, value in zip(switches, saved):
            switch.fp32_precision = value
    assert seen and all(values == ["ieee", "ieee"] for values in seen)
    assert after == ["tf32", "tf32"]
