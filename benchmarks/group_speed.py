"""Time to build the channel groups of a model on the CPU (issue target: under 5 s for torchvision ResNet-50 and
ViT-B/16), with what the groups are and what pruning half of every group removes.

For each model (seeded, untrained, 10 classes) ``bench.groups.plan_groups`` on the model's default layers is timed
``--repeats`` times (the in-house FX trace, its shapes computed on the meta device, plus Torch-Pruning's dependency
graph, which runs the model once). The median is printed with the process CPU time, which a busy machine inflates
less, and the first call (it pays Torch-Pruning's import).
torchvision models without a fixed input size are measured at 224 px, the others at 32. Then half of each group's
units are removed and the slim model's parameter and FLOP counts are printed beside the dense ones.

    python benchmarks/group_speed.py [--models tv:resnet50 tv:vit_b_16 vit_cifar] [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.models  # noqa: E402,F401 - registers the models
from bench.core.registry import MODELS  # noqa: E402
from bench.pruning import select_layers  # noqa: E402
from bench.pruning.groups import plan_groups, slim_groups  # noqa: E402
from bench.training.measure import count_flops, count_parameters  # noqa: E402


def measure(name: str, repeats: int) -> str:
    """One line: group building time, group kinds, and the dense versus half-pruned cost."""
    entry = MODELS.get(name)
    size = entry.image_size or (224 if name.startswith("tv:") else 32)  # torchvision's models at ImageNet size
    torch.manual_seed(0)
    model = entry.build(num_classes=10, in_channels=3).eval()
    layers = select_layers(model, name, None, None, entry.default_layers, entry.default_skip)
    x = torch.zeros(1, 3, size, size)
    times, cpu = [], []
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        plan = plan_groups(model, x, layers)
        times.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    kinds: dict[str, int] = {}
    for group in plan.groups.values():
        kinds[group.kind] = kinds.get(group.kind, 0) + 1
    dense = count_parameters(model), count_flops(model, (3, size, size))
    slim_groups(model, plan, {n: torch.arange(0, g.size, 2) for n, g in plan.groups.items()})
    slim = count_parameters(model), count_flops(model, (3, size, size))
    build = (f"build median {statistics.median(times):.2f} s "
             f"(CPU {statistics.median(cpu):.2f} s; first {times[0]:.2f} s)")
    cost = (f"params {dense[0] / 1e6:.2f}M -> {slim[0] / 1e6:.2f}M, "
            f"GFLOPs {dense[1] / 1e9:.2f} -> {slim[1] / 1e9:.2f}")
    return f"{name:<16} {size:>3}px  {len(layers):>3} layers -> {kinds}  {build}  half pruned: {cost}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tv:resnet50", "tv:vit_b_16", "vit_cifar"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        print(f"error: --models: {MODELS.unknown_message(unknown[0])}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for name in args.models:
        print(measure(name, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
