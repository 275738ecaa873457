"""Cost of a regularising method's training step relative to a plain SGD step, measured side by side.

Every method named with ``--methods`` that has a ``phase()`` is timed through its phase hooks by the harness's
own training step, ``bench.train.train_epoch`` (penalty, backward, after_backward, optimizer step, after_step), at
one step of its phase (by default the last, where a schedule such as TPP's is at full strength with every term
active); a method without a phase is timed through its dense-training variant (model change, optimizer groups and
hooks: OrthoReg, RNI, Network Slimming). The plain step is the same function without hooks. Steps are timed in
interleaved rounds (the order rotates each round), so a busy machine slows all rows alike; the table gives the
median seconds per step and the median over rounds of each round's ratio to plain SGD (pairing steps timed moments
apart cancels most of the drift of a shared machine).

    python benchmarks/step_cost.py --methods tpp --threads 1    (the harness must be importable: pip install -e .)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bench.core.errors import ConfigError, UserError
from bench.core.registry import DATASETS, METHODS, MODELS, UnknownNameError
from bench.core.schema import parse
from bench.method import Method, PruneTarget, RunContext
from bench.plugins import load_builtin
from bench.pruning import prunable_layers, trace_dependencies
from bench.training.train import Recipe, TrainHooks, make_optimizer, train_epoch

Step = Callable[[], object]  # one timed training step; what it returns is ignored


def context(model: nn.Module, model_name: str, data: object, ratio: float, batch_size: int, shape: tuple[int, ...],
            device: torch.device) -> RunContext:
    """The run context the harness would give a method for ``model`` pruned at ``ratio`` on its usual layers."""
    entry = MODELS.get(model_name)
    layers = prunable_layers(model, entry.default_layers, entry.default_skip)
    deps = trace_dependencies(model, torch.zeros(shape, device=device), layers)
    return RunContext(target=PruneTarget(layers, {n: ratio for n in layers}, "layerwise"), data=data, device=device,
                      seed=0, nonlinearity=entry.nonlinearity, batchnorm_of={n: d.batchnorm for n, d in deps.items()},
                      dense_recipe=Recipe(200, 0.1, batch_size=batch_size),
                      retrain=Recipe(120, 0.01, batch_size=batch_size, weight_decay=5e-4), input_shape=shape)


def training_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer,
                  hooks: Sequence[TrainHooks], step: int) -> Step:
    """One step of the harness's own training loop (``bench.train.train_epoch``, which every phase runs) on one
    batch, at a fixed step counter (no data loading, no logging)."""
    return lambda: train_epoch(model, model, [batch], optimizer, hooks, first_step=step)


def method_step(name: str, dense: nn.Module, ctx: RunContext, batch: tuple[torch.Tensor, torch.Tensor],
                at_step: int | None) -> tuple[Step, int | str]:
    """A step of method ``name``'s phase (default hyperparameters) on a copy of ``dense``, and the step it times; for
    a method without a phase, a step of its dense-training variant (OrthoReg, RNI, Slimming regularise there)."""
    cls = METHODS.get(name)
    method: Method = cls(parse(cls.Hparams, {}, f"methods.{name}"))
    model = copy.deepcopy(dense)
    phase = method.phase(model, ctx)
    if phase is None:
        variant = method.dense_variant()
        if variant is None:
            raise ConfigError(f"--methods: '{name}' has no training phase or dense-training variant to time; name "
                              "methods that define phase() or dense_variant().")
        model = variant.prepare(model) if variant.prepare is not None else model
        groups = variant.param_groups(model, ctx.dense_recipe) if variant.param_groups is not None else None
        model.train()
        step = at_step if at_step is not None else 0
        optimizer = make_optimizer(model, ctx.dense_recipe, groups)
        return training_step(model, batch, optimizer, variant.hooks, step), "dense"
    step = at_step if at_step is not None else (phase.recipe.max_steps or 1) - 1
    groups = phase.param_groups(model) if phase.param_groups is not None else None
    model.train()
    return training_step(model, batch, make_optimizer(model, phase.recipe, groups), phase.hooks, step), step


def measure(steps: dict[str, Step], repeats: int, per_block: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each entry, one block of ``per_block`` steps per entry per round, order rotating."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            began = time.perf_counter()
            for _ in range(per_block):
                steps[name]()
            times[name].append((time.perf_counter() - began) / per_block)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, time the steps and print the table; a bad method or model name exits with status 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="tpp,greg,orthoreg,rni,slimming",
                        help="comma-separated registered methods with a phase or a dense-training variant")
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, help="input channels (1 for mlp7_linear as on MNIST)")
    parser.add_argument("--ratio", type=float, default=0.5, help="layerwise pruning ratio on the model's usual layers")
    parser.add_argument("--step", type=int, default=None, help="phase step to time (default: each phase's last)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (the median is reported)")
    parser.add_argument("--per-block", type=int, default=2, help="consecutive steps timed per entry per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per entry first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        report(args)
    except (UserError, UnknownNameError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def report(args: argparse.Namespace) -> None:
    """Build the dense model and each method's step, time them side by side and print the table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    load_builtin()
    device = torch.device(args.device)
    torch.manual_seed(0)
    dense = MODELS.get(args.model).build(num_classes=10, in_channels=args.channels).to(device)
    data = DATASETS.get("synthetic")(root=None, num_train=args.batch_size, num_test=1, size=args.image_size,
                                     channels=args.channels)
    batch = next(iter(data.train_batches(args.batch_size, 0, device)))
    ctx = context(dense, args.model, data, args.ratio, args.batch_size,
                  (1, args.channels, args.image_size, args.image_size), device)

    plain = copy.deepcopy(dense).train()
    steps: dict[str, Step] = {"sgd": training_step(plain, batch, make_optimizer(plain, ctx.retrain), [], 0)}
    at: dict[str, int | str] = {"sgd": "-"}
    for name in filter(None, (m.strip() for m in args.methods.split(","))):
        steps[name], at[name] = method_step(name, dense, ctx, batch, args.step)
    times = measure(steps, args.repeats, args.per_block, args.warmup)
    print(f"{args.model}, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved rounds of {args.per_block} steps (medians)")
    print(f"{'method':10} {'phase step':>10} {'s/step':>9} {'min':>9} {'max':>9} {'ratio':>7}")
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, times["sgd"]))
        print(f"{name:10} {at[name]!s:>10} {statistics.median(values):9.4f} {min(values):9.4f} {max(values):9.4f} "
              f"{ratio:7.3f}")


if __name__ == "__main__":
    sys.exit(main())
