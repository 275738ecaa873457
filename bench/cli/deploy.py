"""``bench.py export-model`` and ``bench.py latency``: a finished run's pruned model written as a file that loads
without the harness, and its latency per batch size and backend (``bench.pipeline.deploy`` does the work)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.core.errors import UserError


def command_export_model(args: argparse.Namespace) -> int:
    from bench.pipeline.deploy import export_model

    path, sidecar = export_model(args.run, args.fmt, args.out, args.results)
    print(f"wrote {path} and {sidecar.name}")
    return 0


def _integers(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} '{text}': give comma-separated whole numbers, e.g. 1,8,64.") from None


def command_latency(args: argparse.Namespace) -> int:
    from bench.pipeline.deploy import latency_sweep, sweep_table

    if args.repeats < 1 or not args.min_time_s > 0:
        raise UserError(f"--repeats {args.repeats} --min-time-s {args.min_time_s}: need repeats >= 1 and a "
                        "positive time.")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows, path = latency_sweep(args.target, Path(args.results), _integers(args.batch_sizes, "--batch-sizes"),
                               backends, args.repeats, args.min_time_s, Path(args.out) if args.out else None)
    print(sweep_table(rows))
    print(f"{torch.get_num_threads()} threads; written to {path}")
    return 0
