"""Cost of live logging (suite key ``log``) per retraining epoch, against the time of one epoch of the quickstart.

Trains one quickstart retraining epoch (mlp7_linear on Fashion-MNIST, batch 128, the harness's ``fit``) to time an
epoch, then streams ``--epochs`` history rows like the runner's (with JSV statistics) to each tracker through
``bench.trackers.LiveLog`` into a temporary folder, and prints the median milliseconds per epoch, the first epoch
(which opens the tracker run) apart, and the share of an epoch. The quickstart's epoch is among the shortest any
suite has, so the share is an upper bound for the shipped suites.

    python benchmarks/tracker_cost.py [--data-root DIR] [--epochs 6]   (needs pip install -e '.[tensorboard,mlflow]')
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.core.errors import UserError
from bench.core.registry import MODELS
from bench.data import build_dataset
from bench.pipeline.trackers import KINDS, LiveLog, require
from bench.plugins import load_builtin
from bench.training.train import Recipe, fit


def epoch_seconds(data_root: str | None) -> tuple[float, dict[str, float]]:
    """Seconds of one quickstart retraining epoch (train and test pass) and its history row."""
    load_builtin()
    entry = MODELS.get("mlp7_linear")
    data = build_dataset("fashion_mnist", {}, Path(data_root) if data_root else None, entry.image_size)
    model = entry.build(num_classes=data.info.num_classes, in_channels=data.info.in_channels)
    (row,) = fit(model, data, Recipe(epochs=1, lr=0.01, batch_size=128, weight_decay=1e-4),
                 device=torch.device("cpu"), seed=0, phase="retrain")
    return row["seconds"], row


def logging_ms(kind: str, row: dict[str, float], epochs: int) -> tuple[float, float, float, float]:
    """Milliseconds that live logging to ``kind`` costs: at the run's start (import, and MLflow's run), the first
    epoch, the median of the others, and all epochs."""
    row = {**row, **{f"jsv_{k}": 1.0 for k in ("mean", "std", "min", "max", "condition", "mean_sq_dev")}}
    start = {"run_id": "0123456789ab", "method": "l1", "lr": 0.01, "seed": 0, "status": "running",
             "config": {"retrain": {"epochs": epochs, "batch_size": 128}}}
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        live = LiveLog.start({kind: str(Path(folder) / kind)}, start, "bench")
        opening = 1e3 * (time.perf_counter() - began)
        times = []
        for epoch in range(1, epochs + 1):
            began = time.perf_counter()
            live.epoch(epoch, {**row, "epoch": epoch})
            times.append(1e3 * (time.perf_counter() - began))
        live.finish({**start, "status": "ok", "history": {"retrain": [{**row, "epoch": e}
                                                                        for e in range(1, epochs + 1)]}})
        if kind not in live.targets:
            raise SystemExit(f"error: live logging to {kind} failed (see the warning above)")
    return opening, times[0], statistics.median(times[1:]), sum(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="where Fashion-MNIST is (default: the usual places)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs streamed per tracker (the quickstart's 6)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        for kind in KINDS:
            require(kind)
        seconds, row = epoch_seconds(args.data_root)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"one quickstart retraining epoch (mlp7_linear, Fashion-MNIST, batch 128, {args.threads} thread(s)): "
          f"{seconds:.2f} s")
    for kind in KINDS:
        opening, first, steady, total = logging_ms(kind, row, args.epochs)
        print(f"{kind:12} live logging per epoch: {steady:.2f} ms median ({100 * steady / 1e3 / seconds:.3f}% of the "
              f"epoch), the first {first:.1f} ms ({100 * first / 1e3 / seconds:.2f}%), all {args.epochs} "
              f"{100 * total / 1e3 / (seconds * args.epochs):.3f}% of their time; at the run's start (import, "
              f"open): {opening:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
