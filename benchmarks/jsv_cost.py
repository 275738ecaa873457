"""Cost of the trainability metric (Jacobian singular values, JSV) relative to one retraining epoch.

The harness computes JSV once per retraining epoch by default (``trainability.every: 1``); this measures what that
adds, at the harness defaults (100 probe samples, chunks of 50 within a 1 GiB memory budget), on the dense model (the
most expensive case for both the epoch and the JSV; pruned models make both cheaper):

* ``mlp7_linear`` on Fashion-MNIST (the real 60k/10k set where installed, else seeded synthetic data of that shape):
  one whole epoch through ``bench.train.fit`` (training plus the test-set evaluation), timed directly.
* ``resnet56`` on CIFAR-shaped synthetic data (50k train, 10k test, 32x32x3; CIFAR itself is not needed for a
  timing): ``--steps`` training steps through ``fit`` are timed and scaled to the 391 steps of a CIFAR epoch at
  batch 128, plus one full 10k test-set evaluation timed on its own (``--steps 0`` times a whole epoch instead).
Both epochs are timed after an untimed two-step ``fit`` in the same process, so one-time costs (about a second
on CPU) are neither counted nor, for the scaled ResNet figure, multiplied; the training memory figure is then the
growth beyond that warm-up.

JSV time is the median of ``--repeats`` calls of ``bench.trainability.jsv_stats`` (the first call is shown too).
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before; on CPU the peak resident
set above the resident set at the start (tracemalloc does not see torch's allocator). On Linux the kernel's peak
(VmHWM) is reset first through ``/proc/self/clear_refs``, so loading the data does not hide the measured peak;
elsewhere ``resource.getrusage``'s peak is used, which can only show growth beyond every earlier peak. Each
measurement runs in a fresh process. Target: JSV <= 5 %.

``--imagenet-size S`` instead measures JSV alone on a (seeded, untrained) torchvision ``resnet50`` with 1000 classes
at ``3 x S x S`` inputs (``--imagenet-samples``, default 1), once per ``--max-mib`` budget; ``inf`` removes the
budget, i.e. all 1000 classes pulled back in one vmapped backward pass, as before the budget existed.

    python benchmarks/jsv_cost.py [--models mlp7_linear resnet56] [--device cpu] [--threads 2]
    python benchmarks/jsv_cost.py --imagenet-size 64 --max-mib inf 1024
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.core.registry import MODELS
from bench.data import DataError, build_dataset
from bench.plugins import load_builtin
from bench.training.train import Recipe, evaluate, fit
from bench.training.trainability import DEFAULT_MAX_BYTES, jsv_stats

TARGET = 0.05  # JSV at most 5 % of a retraining epoch
SETUPS = {  # model -> dataset, its options, the description printed
    "mlp7_linear": ("fashion_mnist", {}, "Fashion-MNIST 60k/10k"),
    "resnet56": ("synthetic", {"num_train": 50_000, "num_test": 10_000, "channels": 3, "size": 32},
                 "CIFAR-shaped synthetic 50k/10k"),
}


STATUS = Path("/proc/self/status")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB: from /proc on Linux, else (peak, peak) by getrusage."""
    if STATUS.exists():
        fields = dict(line.split(":", 1) for line in STATUS.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    return peak, peak


def reset_peak_rss() -> None:
    """Make the kernel's peak resident set equal the current one (Linux >= 4.0); a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def load(model_name: str, device: torch.device) -> tuple[torch.nn.Module, Any, str]:
    """The dense model (seeded) and its data; Fashion-MNIST falls back to synthetic data of the same shape."""
    load_builtin()
    dataset, options, label = SETUPS[model_name]
    entry = MODELS.get(model_name)
    try:
        data = build_dataset(dataset, options, None, entry.image_size)
    except DataError:
        data = build_dataset("synthetic", {"num_train": 60_000, "num_test": 10_000, "channels": 1, "size": 28},
                             None, entry.image_size)
        label = "synthetic (Fashion-MNIST not installed) 60k/10k"
    torch.manual_seed(0)
    model = entry.build(num_classes=data.info.num_classes, in_channels=data.info.in_channels).to(device)
    return model, data, label


class PeakMemory:
    """Peak memory growth of the block, in MiB: CUDA allocator peak, or process peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_rss()
            self._start = rss_mb()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        else:
            self.mb = rss_mb()[1] - self._start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def budget_bytes(mib: float) -> int:
    """``--max-mib`` in bytes; ``inf`` is a budget no model reaches (no chunking over classes)."""
    return 2**62 if mib == float("inf") else int(mib * 2**20)


def measure_jsv(model_name: str, device_name: str, threads: int, samples: int, chunk: int | None, repeats: int,
                max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """JSV seconds (first call and median of ``repeats``) and peak memory growth, in this process."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model, data, _ = load(model_name, device)
    probe = data.probe(samples, 0)
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeats + 1):
            sync(device)
            began = time.perf_counter()
            jsv_stats(model, probe, chunk_size=chunk, max_bytes=max_bytes)
            sync(device)
            times.append(time.perf_counter() - began)
    return {"jsv_first_s": times[0], "jsv_s": statistics.median(times[1:]), "jsv_peak_mb": memory.mb}


def measure_epoch(model_name: str, device_name: str, threads: int, steps: int) -> dict[str, Any]:
    """Seconds of one retraining epoch (measured whole, or ``steps`` steps scaled) and its peak memory growth."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model, data, label = load(model_name, device)
    batch = 128
    per_epoch = data.steps_per_epoch(batch)
    whole = steps == 0 or steps >= per_epoch
    recipe = Recipe(epochs=1, lr=0.01, batch_size=batch, max_steps=None if whole else steps)
    # Warm-up, untimed: a two-step fit pays the one-time costs (first touch of the data and kernels, lazy imports,
    # about a second on CPU) that would otherwise be scaled up with the timed steps.
    fit(model, data, Recipe(epochs=1, lr=0.01, batch_size=batch, max_steps=2), device=device, seed=1, phase="warm-up")
    with PeakMemory(device) as memory:
        sync(device)
        began = time.perf_counter()
        fit(model, data, recipe, device=device, seed=0, phase="jsv-cost")
        sync(device)
        fit_s = time.perf_counter() - began
    if whole:
        return {"epoch_s": fit_s, "how": f"1 whole epoch ({per_epoch} steps + test eval)", "data": label,
                "train_peak_mb": memory.mb}
    began = time.perf_counter()
    evaluate(model, data, 1000, device)
    sync(device)
    eval_s = time.perf_counter() - began
    epoch_s = (fit_s - eval_s) * per_epoch / steps + eval_s
    return {"epoch_s": epoch_s, "how": f"{steps} steps x {per_epoch}/{steps} + test eval {eval_s:.1f}s",
            "data": label, "train_peak_mb": memory.mb}


def measure_imagenet_jsv(device_name: str, threads: int, size: int, samples: int, max_bytes: int) -> dict[str, Any]:
    """Seconds and peak memory growth of one JSV call on torchvision resnet50 (1000 classes) at ``size`` pixels."""
    import torchvision

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000).to(device).eval()
    probe = torch.randn(samples, 3, size, size)
    with torch.no_grad():  # warm-up outside the measured block: first-touch of the weights and the kernels
        model(probe[:1].to(device))
    with PeakMemory(device) as memory:
        sync(device)
        began = time.perf_counter()
        stats = jsv_stats(model, probe, max_bytes=max_bytes)
        sync(device)
        seconds = time.perf_counter() - began
    return {"jsv_s": seconds, "jsv_peak_mb": memory.mb, "jsv_mean": stats.mean}


def in_fresh_process(function: Any, *args: Any) -> dict[str, Any]:
    """Run ``function(*args)`` in a new interpreter, so that its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--samples", type=int, default=100, help="probe samples (harness default 100)")
    parser.add_argument("--chunk", type=int, default=50,
                        help="cap on samples per vmap chunk (harness default 50; the memory budget may lower it)")
    parser.add_argument("--max-mib", type=float, nargs="+", default=[DEFAULT_MAX_BYTES / 2**20],
                        help="JSV memory budget(s) in MiB (harness default 1024; inf: no budget)")
    parser.add_argument("--imagenet-size", type=int, default=None,
                        help="measure JSV alone on torchvision resnet50 (1000 classes) at 3xSxS inputs")
    parser.add_argument("--imagenet-samples", type=int, default=1, help="probe samples for --imagenet-size")
    parser.add_argument("--repeats", type=int, default=3, help="timed JSV calls after the first")
    parser.add_argument("--steps", type=int, default=20, help="resnet56: training steps timed and scaled to an "
                                                              "epoch (0: a whole epoch); mlp7_linear always whole")
    args = parser.parse_args(argv)
    if args.imagenet_size is not None:
        size = args.imagenet_size
        print(f"device {args.device}, {args.threads} CPU threads, torch {torch.__version__}; JSV of torchvision "
              f"resnet50 (1000 classes), {args.imagenet_samples} sample(s) of 3x{size}x{size}")
        for mib in args.max_mib:
            jsv = in_fresh_process(measure_imagenet_jsv, args.device, args.threads, args.imagenet_size,
                                   args.imagenet_samples, budget_bytes(mib))
            print(f"  budget {mib:>6g} MiB: JSV {jsv['jsv_s']:7.2f} s, peak memory +{jsv['jsv_peak_mb']:.0f} MiB "
                  f"(mean singular value {jsv['jsv_mean']:.6g})")
        return 0
    max_bytes = budget_bytes(args.max_mib[0])
    print(f"device {args.device}, {args.threads} CPU threads, torch {torch.__version__}; JSV on {args.samples} "
          f"samples, chunks capped at {args.chunk} and a {args.max_mib[0]:g} MiB budget; dense models")
    failed = False
    for name in args.models:
        steps = 0 if name == "mlp7_linear" else args.steps
        epoch = in_fresh_process(measure_epoch, name, args.device, args.threads, steps)
        jsv = in_fresh_process(measure_jsv, name, args.device, args.threads, args.samples, args.chunk, args.repeats,
                               max_bytes)
        fraction = jsv["jsv_s"] / epoch["epoch_s"]
        failed |= fraction > TARGET
        print(f"\n{name} on {epoch['data']}")
        print(f"  retraining epoch {epoch['epoch_s']:8.2f} s   ({epoch['how']}); "
              f"peak memory +{epoch['train_peak_mb']:.0f} MiB")
        print(f"  JSV              {jsv['jsv_s']:8.3f} s   (first call {jsv['jsv_first_s']:.3f} s); "
              f"peak memory +{jsv['jsv_peak_mb']:.0f} MiB")
        print(f"  JSV / epoch      {100 * fraction:8.2f} %  (target <= {100 * TARGET:g} %: "
              f"{'ok' if fraction <= TARGET else 'OVER'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
