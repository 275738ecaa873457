"""The fusion section of benchmarks/perf.py (``--sections fusion``): fused retraining against separate runs.

Prints, side by side in one run: fair_mlp's retraining (its 60 runs: 4 methods x 3 LRs x 5 seeds of mlp7_linear at
ratio 0.9, 10 units per hidden layer, with its per-epoch validation and JSV) fused against separate, over its
first ``--fusion-steps`` SGD steps and one epoch end (evaluation, validation, JSV: not fused, so a cut this short
understates the gain of a whole epoch), separate: a sample of its runs timed, times 60 / sample; fair_mlp's dense
training (its 5 seeds, one epoch each) fused against separate; the fused MLP's
training epoch per member against its matmul bound (``--steps`` steps timed, scaled to an epoch); resnet20
(conv1 of every block at 0.5) fused, by each route of its convolutions, against separate on this device; with
``--device cuda``, a pruned resnet56 group of 6 members against 6 separate runs, the same way. The two routes
(``bench.training.fused_ops.CONV_ROUTES``): ``vmap``, PyTorch's batching rule for ``conv2d``, and ``grouped``, the
fused module's own grouped convolution (the member axis folded into the channels by hand, one ``F.conv2d`` with
``groups`` times the members). They are timed in the order vmap, grouped, grouped, vmap (a drift of the machine's
load over the measurement weighs on both alike), each route's figure the mean of its two timings.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from bench.core.registry import MODELS
from bench.core.sections import Schedule
from bench.data import build_dataset
from bench.method import PruneTarget, keep_from_scores
from bench.pipeline.metrics import validation_metrics
from bench.pruning import prunable_layers, slim, trace_dependencies
from bench.training.fused import FusedModel, Member, fit_fused
from bench.training.fused_ops import CONV_ROUTES, conv_route
from bench.training.hooks import EpochHooks
from bench.training.train import Recipe, derive_seed, fit
from bench.training.trainability import jsv_stats
from methods.l1 import mean_abs_weight

FAIR_LRS, FAIR_SEEDS, FAIR_METHODS = (0.1, 0.01, 0.001), (0, 1, 2, 3, 4), 4


def pruned(model_name: str, patterns: list[str], ratio: float, shape: tuple[int, int, int], seed: int = 0
           ) -> nn.Module:
    """``model_name`` with ``patterns``' layers cut to ``1 - ratio`` of their channels by L1 (layerwise)."""
    torch.manual_seed(seed)
    model = MODELS.get(model_name).build(num_classes=10, in_channels=shape[0])
    layers = prunable_layers(model, patterns)
    deps = trace_dependencies(model, torch.zeros(1, *shape), layers)
    keep = keep_from_scores(mean_abs_weight(model, layers), PruneTarget(layers, {n: ratio for n in layers},
                                                                       "layerwise"))
    return slim(model, keep, deps)


def fair_recipe(lr: float, steps: int) -> Recipe:
    """fair_mlp's retraining recipe, cut to its first ``steps`` SGD steps (then one epoch end: evaluation, JSV)."""
    return Recipe(epochs=30, lr=lr, batch_size=128, momentum=0.9, weight_decay=1e-4,
                  schedule=Schedule(name="step", milestones=[10, 20], gamma=0.1), max_steps=steps)


def fair_hooks(data: Any, device: torch.device, probe: torch.Tensor) -> list[EpochHooks]:
    """fair_mlp's per-epoch work: validation accuracy and the JSV (trainability every 1, 100 samples)."""
    ws = SimpleNamespace(data=data, device=device)

    def metrics(net: nn.Module, epoch: int) -> dict[str, Any]:
        return {**validation_metrics(net, ws), **{f"jsv_{k}": v for k, v in jsv_stats(net, probe).as_dict().items()}}

    return [EpochHooks(metrics)]


def fair_mlp_retraining(fashion_root: Path | None, device: torch.device, steps: int, sample: int
                        ) -> tuple[float, float, int]:
    """Seconds of fair_mlp's retraining, fused and separate (``sample`` runs timed, scaled to all), and the runs."""
    data = build_dataset("fashion_mnist", {"validation": 5000}, fashion_root, 32)
    probe = data.probe(100, 0)
    bases = {s: pruned("mlp7_linear", ["layers.*"], 0.9, (1, 32, 32), seed=s) for s in FAIR_SEEDS}
    grid = [(lr, s) for _ in range(FAIR_METHODS) for lr in FAIR_LRS for s in FAIR_SEEDS]
    began = time.perf_counter()
    for lr, seed in grid[:sample]:
        fit(copy.deepcopy(bases[seed]), data, fair_recipe(lr, steps), device=device, seed=seed, phase="retrain",
            hooks=fair_hooks(data, device, probe))
    separate = (time.perf_counter() - began) * len(grid) / sample
    members = [Member(copy.deepcopy(bases[s]), fair_recipe(lr, steps), s, fair_hooks(data, device, probe))
               for lr, s in grid]
    began = time.perf_counter()
    fit_fused(members, data, device=device)
    return time.perf_counter() - began, separate, len(grid)


def dense_seeds(fashion_root: Path | None, device: torch.device, seeds: int) -> tuple[float, float]:
    """Seconds of one epoch of fair_mlp's dense training (mlp7_linear, 100 units, its recipe) for ``seeds`` seeds,
    fused and separate (``fit`` per seed), evaluation included."""
    data = build_dataset("fashion_mnist", {"validation": 5000}, fashion_root, 32)
    recipe = Recipe(epochs=1, lr=0.01, batch_size=128, momentum=0.9, weight_decay=1e-4,
                    schedule=Schedule(name="step", milestones=[5, 10], gamma=0.1))

    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return MODELS.get("mlp7_linear").build(num_classes=10, in_channels=1)

    began = time.perf_counter()
    for seed in range(seeds):
        fit(model(seed), data, recipe, device=device, seed=seed, phase="dense")
    separate = time.perf_counter() - began
    began = time.perf_counter()
    fit_fused([Member(model(s), recipe, s) for s in range(seeds)], data, device=device, phase="dense")
    return time.perf_counter() - began, separate


def fused_train_seconds(models: list[nn.Module], seeds: list[int], data: Any, recipe: Recipe, steps: int,
                        device: torch.device, conv: str | None = None) -> float:
    """Seconds of ``steps`` fused SGD steps of ``models`` (data included, no evaluation), the convolutions by the
    route ``conv`` (None: the device's default, ``conv_route``)."""
    fused = FusedModel([m.to(device).train() for m in models], seeds, conv=conv)
    lrs = torch.full((len(models),), recipe.lr, dtype=torch.float64, device=device)
    iterators = [data.train_batches(recipe.batch_size, derive_seed(s, "bench", 0), device) for s in fused.seeds]
    began = time.perf_counter()
    for _, batch in zip(range(steps), zip(*iterators)):
        xs, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        losses, _ = fused.losses(xs, y)
        losses.sum().backward()
        fused.sgd_step(lrs, recipe)
    float(losses.detach().sum())  # the device has finished
    return time.perf_counter() - began


def group_against_separate(model: Callable[[], nn.Module], data: Any, members: int, seeds: int, steps: int,
                           device: torch.device, train_steps: Callable[..., tuple[float, int]]
                           ) -> tuple[dict[str, float], float]:
    """Seconds of ``steps`` steps of ``members`` models (over ``seeds`` seeds) fused, by each convolution route
    (timed vmap, grouped, grouped, vmap; each the mean of its two), and of the same separately."""
    recipe = Recipe(epochs=1, lr=0.01, batch_size=128)
    seed_of = [i % seeds for i in range(members)]
    for route in CONV_ROUTES:  # warm-up
        fused_train_seconds([model() for _ in range(2)], [0, 0], data, recipe, 2, device, route)
    fused = dict.fromkeys(CONV_ROUTES, 0.0)
    for route in CONV_ROUTES + CONV_ROUTES[::-1]:
        fused[route] += fused_train_seconds([model() for _ in range(members)], seed_of, data, recipe, steps, device,
                                            route) / 2
    separate = sum(train_steps(model().to(device), data.train_batches(128, derive_seed(s, "bench", 0), device), steps,
                               device)[0] for s in seed_of)
    return fused, separate


def fusion_section(fashion_root: Path | None, device: torch.device, steps: int, fair_steps: int, sample: int,
                   linear_matmuls_seconds: Callable[..., float], train_steps: Callable[..., tuple[float, int]],
                   row: Callable[..., None]) -> None:
    """Print the fusion figures (see the module's docstring)."""
    load = os.getloadavg()[0]
    print(f"\nfused retraining against separate runs (1-minute load average at start {load:.1f})")
    row("what", "fused", "separate", "ratio")
    if device.type == "cpu":
        fused, separate, runs = fair_mlp_retraining(fashion_root, device, fair_steps, sample)
        row(f"fair_mlp retraining: {runs} runs x {fair_steps} steps + 1 epoch end (separate: {sample} timed)",
            f"{fused:.1f} s", f"{separate:.1f} s", f"{separate / fused:.2f}x faster fused")
        fused, separate = dense_seeds(fashion_root, device, len(FAIR_SEEDS))
        row(f"fair_mlp dense training: {len(FAIR_SEEDS)} seeds x 1 epoch (dense, 100 units)", f"{fused:.1f} s",
            f"{separate:.1f} s", f"{separate / fused:.2f}x faster fused")
    data = build_dataset("fashion_mnist", {}, fashion_root, 32)
    mlp = pruned("mlp7_linear", ["layers.*"], 0.9, (1, 32, 32))
    per_epoch = data.steps_per_epoch(128)  # the figures: ``steps`` steps timed, scaled to an epoch
    bound = linear_matmuls_seconds(mlp, 128, device) * per_epoch
    members = len(FAIR_LRS) * len(FAIR_SEEDS) * FAIR_METHODS
    seed_of = [i % len(FAIR_SEEDS) for i in range(members)]
    fused = fused_train_seconds([copy.deepcopy(mlp) for _ in range(members)], seed_of, data,
                                Recipe(epochs=1, lr=0.01, batch_size=128), steps, device) / members * per_epoch / steps
    alone = train_steps(copy.deepcopy(mlp).to(device), data.train_batches(128, 0, device), steps, device)[0]
    alone *= per_epoch / steps
    row(f"MLP (ratio 0.9) training epoch per member, {members} fused", f"{fused:.3f} s", f"{alone:.3f} s",
        f"{fused / bound:.2f}x its matmul bound fused ({alone / bound:.2f}x separate; bound {bound:.3f} s)")
    cifar = build_dataset("synthetic", {"num_train": 128 * (steps + 2), "num_test": 128, "channels": 3}, None, None)
    cases = [("resnet20", 4, 2)] + ([("resnet56", 6, 6)] if device.type == "cuda" else [])
    for name, members, seeds in cases:
        def model(name: str = name) -> nn.Module:
            return pruned(name, ["layer*.*.conv1"], 0.5, (3, 32, 32))

        fused, separate = group_against_separate(model, cifar, members, seeds, steps, device, train_steps)
        print(f"  {name} on {device.type.upper()} fused (grouped conv and vmap) against separate:")
        for route, seconds in fused.items():
            row(f"{name} (conv1 at 0.5), {members} members over {seeds} seeds, {steps} steps, fused by {route}"
                + (" (default)" if route == conv_route(device) else ""),
                f"{seconds:.2f} s", f"{separate:.2f} s", f"{separate / seconds:.2f}x throughput fused")
        row(f"{name}: grouped conv's time over vmap's", f"{fused['grouped'] / fused['vmap']:.3f}x")
    if device.type != "cuda":
        print("(resnet56 6 members against 6 separate runs: with --device cuda only)")
