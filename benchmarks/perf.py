"""Performance figures of the harness on this machine, each measured side by side in one run.

    python benchmarks/perf.py [--steps 30] [--device cpu] [--pack 2] [--compile]
                              [--sections mlp resnet packing latency overhead validation fusion]
                              [--fusion-steps 430] [--fusion-sample 6]

Prints: the machine's float32 matrix-multiply peak; training throughput and achieved FLOP/s for mlp7_linear on
Fashion-MNIST and resnet20/resnet56 on CIFAR-shaped data, beside the usual research-code pipeline (torchvision
dataset, per-sample transforms, DataLoader), with the fast options (and torch.compile with --compile); several
training processes packed on the machine (or one GPU) against one; inference latency of dense versus slimmed
resnet56 at each pruning ratio beside the FLOP ratio; the harness's own overhead per run against its compute,
and the quickstart suite on a local pool against one process; fused retraining against separate runs
(benchmarks/fusion_perf.py: fair_mlp's retraining, the fused MLP epoch against its matmul bound, resnet20, and
resnet56 on a GPU). Every training step is the harness's own
(``bench.train.train_epoch``).
Regulariser step costs and JSV costs have their own commands (benchmarks/step_cost.py, benchmarks/jsv_cost.py).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import json
import multiprocessing
import os
import pickle
import queue
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.core.config import Performance  # noqa: E402
from bench.core.registry import MODELS  # noqa: E402
from bench.data import FASHION_MNIST_SYSTEM_DIR, build_dataset  # noqa: E402
from bench.method import PruneTarget, keep_from_scores  # noqa: E402
from bench.plugins import load_builtin  # noqa: E402
from bench.pruning import prunable_layers, slim, trace_dependencies  # noqa: E402
from bench.training.measure import count_flops, measure_latency, training_step_flops  # noqa: E402
from bench.training.train import Recipe, make_optimizer, step_settings, train_epoch  # noqa: E402
from methods.l1 import mean_abs_weight  # noqa: E402


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): every clock here stops after this."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of a square matrix multiply: the ceiling the training figures are compared with."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best / 1e9


def train_steps(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
                device: torch.device, performance: Performance | None = None) -> tuple[float, int]:
    """Seconds and samples for ``steps`` of the harness's own training step, data included.

    The step is ``bench.train.train_epoch`` (forward, cross-entropy, backward, SGD with momentum and weight decay,
    running loss and accuracy), the function every phase of every run calls, with ``performance``'s options.
    """
    performance = performance or Performance()
    optimizer = make_optimizer(model, Recipe(epochs=1, lr=0.01, performance=performance))
    autocast, memory_format = step_settings(performance, device)
    model.to(memory_format=memory_format)
    on_device = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in batches)
    began = time.perf_counter()
    forward = torch.compile(model) if performance.compile else model  # compiled once per model, cached after
    stats = train_epoch(forward, model, on_device, optimizer, max_steps=steps, autocast=autocast,
                        memory_format=memory_format)  # ends by reading the loss: the device has finished
    return time.perf_counter() - began, stats.samples


def training_flops(model: nn.Module, shape: tuple[int, ...], batch_size: int, device: torch.device) -> int:
    """FLOPs of one training step's forward and backward (matmuls and convolutions), as the harness counts a run's
    training cost (bench.measure.training_step_flops): exact where "3x forward" is not (the input layer computes no
    input gradient)."""
    return training_step_flops(model.to(device), shape, batch_size)[0]


def linear_matmuls_seconds(model: nn.Module, batch_size: int, device: torch.device, repeats: int = 50) -> float:
    """Seconds of only the matrix multiplies of one training step of an MLP, at its shapes: per layer the
    forward addmm, the weight gradient and (past the input layer) the input gradient; best of ``repeats``."""
    products = []
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
        out_f, in_f = layer.weight.shape
        a, w = torch.randn(batch_size, in_f, device=device), torch.randn(out_f, in_f, device=device)
        g, bias = torch.randn(batch_size, out_f, device=device), torch.randn(out_f, device=device)
        products += [(torch.addmm, (bias, a, w.t())), (torch.mm, (g.t(), a))]
        if i > 0:
            products.append((torch.mm, (g, w)))
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for op, operands in products:
            op(*operands)
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return best


def iterate(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Seconds to produce one epoch of batches on the device, without any model: the data pipeline alone."""
    began = time.perf_counter()
    for x, y in batches:
        x.to(device), y.to(device)
    synchronize(device)  # the copies (and the harness's on-device augmentation) are asynchronous on CUDA
    return time.perf_counter() - began


def torchvision_fashion_mnist(root: Path, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """The usual research pipeline: torchvision's dataset, per-sample PIL transforms, a DataLoader."""
    from torchvision import datasets, transforms
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION_MNIST_SYSTEM_DIR.glob("*.gz"):
        target = raw / gz.name.removesuffix(".gz")
        if not target.exists():
            with gzip.open(gz) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    transform = transforms.Compose([transforms.Resize(32), transforms.ToTensor(),
                                    transforms.Normalize((0.2860,), (0.3530,))])
    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def fashion_mnist_root(root: Path, system: Path = FASHION_MNIST_SYSTEM_DIR, n_train: int = 60000) -> Path | None:
    """Where the Fashion-MNIST sections read from: None for Debian's files in ``system``, or, where they are missing
    (a GPU node without the Debian package), ``root``, after writing random images of its shape there in its format
    (IDX, torchvision's raw layout): both pipelines then read the same files, as with the real ones."""
    if any(system.glob("*.gz")):
        return None
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", 10000)):
        pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g).numpy().tobytes()
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g).numpy().tobytes()
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, n, 28, 28) + pixels)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, n) + labels)
    print(f"Fashion-MNIST is not installed ({system}): its sections use random images of its shape")
    return root


def write_fake_cifar(root: Path, n_train: int = 50000) -> None:
    """CIFAR-10's python format with random pixels: both pipelines read the same 50k-image files."""
    folder = root / "cifar-10-batches-py"
    if (folder / "test_batch").exists():  # written whole (seeded) by an earlier section
        return
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    per = n_train // 5
    for name, n in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", 10000)]:
        data = torch.randint(0, 256, (n, 3072), dtype=torch.uint8, generator=g).numpy()
        labels = torch.randint(0, 10, (n,), generator=g).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels}, handle)  # str keys, as torchvision decodes the originals


def torchvision_cifar(root: Path, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    from torchvision import datasets, transforms
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(),
                                    transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])

    class UncheckedCIFAR10(datasets.CIFAR10):
        """torchvision's CIFAR-10 minus its md5 checks, which random benchmark files cannot pass."""

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = [f"class {i}" for i in range(10)]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    dataset = UncheckedCIFAR10(str(root), train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def row(label: str, *cells: str) -> None:
    print(f"  {label:44}" + "".join(f" {c:>17}" for c in cells))


def pipeline_section(name: str, model_name: str, ours: Callable, theirs: Callable, steps_per_epoch: int,
                     steps: int, peak: float, device: torch.device, shape: tuple[int, int, int],
                     try_compile: bool = False) -> None:
    """One model/dataset: data-only epoch and training throughput, harness pipeline vs DataLoader pipeline."""
    print(f"\n{name}: {model_name}, batch 128, {steps_per_epoch} steps per epoch")
    data_ours, data_theirs = iterate(ours(), device), iterate(theirs(), device)
    row("data pipeline alone, one epoch (s)", f"ours {data_ours:.2f}", f"DataLoader {data_theirs:.2f}",
        f"{data_theirs / data_ours:.1f}x faster")
    torch.manual_seed(0)
    model = MODELS.get(model_name).build(num_classes=10, in_channels=shape[0]).to(device)
    pristine = copy.deepcopy(model)  # the start for every variant
    twin, fast_twin = copy.deepcopy(pristine), copy.deepcopy(pristine)
    fast = fast_options(device)
    train_steps(model, ours(), 3, device)  # warm-up (allocator, kernels)
    train_steps(fast_twin, ours(), 3, device, fast)
    t_ours, n_ours = train_steps(model, ours(), steps, device)
    t_theirs, n_theirs = train_steps(twin, theirs(), steps, device)
    t_fast, n_fast = train_steps(fast_twin, ours(), steps, device, fast)
    per_epoch = steps_per_epoch / steps
    epoch_ours, epoch_theirs, epoch_fast = t_ours * per_epoch, t_theirs * per_epoch, t_fast * per_epoch
    row(f"training epoch, from {steps} steps (s)", f"ours {epoch_ours:.2f}", f"DataLoader {epoch_theirs:.2f}",
        f"{epoch_theirs / epoch_ours:.2f}x faster")
    row(f"  with {describe(fast)} (s)", f"{epoch_fast:.2f}", "", f"speed-up {epoch_ours / epoch_fast:.2f}x")
    if try_compile:  # torch.compile: compiling (for every batch shape the timed steps meet) in an untimed warm-up
        compiled, compiled_twin = Performance(compile=True), copy.deepcopy(pristine)
        train_steps(compiled_twin, ours(), steps, device, compiled)
        t_compiled, _ = train_steps(compiled_twin, ours(), steps, device, compiled)
        row(f"  with {describe(compiled)} (s)", f"{t_compiled * per_epoch:.2f}", "",
            f"speed-up {t_ours / t_compiled:.2f}x")
    mlp = not any(isinstance(m, nn.Conv2d) for m in model.modules())
    if mlp:  # what the harness's step costs beyond the textbook loop (its running loss and accuracy)
        bare_twin = copy.deepcopy(pristine)
        bare_steps(bare_twin, ours(), 3, device)
        t_bare = bare_steps(bare_twin, ours(), steps, device)
        row("  a bare PyTorch loop on the same batches (s)", f"{t_bare * per_epoch:.2f}", "",
            f"harness step +{100 * (t_ours / t_bare - 1):.0f}%")
    flops = training_flops(model, shape, 128, device)
    achieved = flops * (n_ours / 128) / t_ours / 1e9
    row("throughput (samples/s)", f"ours {n_ours / t_ours:,.0f}", f"fast {n_fast / t_fast:,.0f}",
        f"DataLoader {n_theirs / t_theirs:,.0f}")
    row("achieved GFLOP/s (counted step FLOPs)", f"ours {achieved:.1f}", f"{100 * achieved / peak:.0f}% of peak")
    bound = flops * steps_per_epoch / (peak * 1e9)
    row("epoch vs its float32 matmul-bound time", f"ours {epoch_ours / bound:.1f}x", f"fast {epoch_fast / bound:.1f}x",
        f"bound {bound:.3f} s")
    if mlp:
        alone = linear_matmuls_seconds(model, 128, device) * steps_per_epoch
        row("its float32 matmuls alone, these shapes (s)", f"{alone:.3f}", f"{alone / bound:.1f}x the bound",
            f"fast epoch {epoch_fast / alone:.1f}x")


def bare_steps(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int,
               device: torch.device) -> float:
    """Seconds for ``steps`` steps of the textbook loop (forward, cross-entropy, backward, SGD), no bookkeeping:
    the baseline for what the harness's own step adds."""
    optimizer = make_optimizer(model, Recipe(epochs=1, lr=0.01))
    model.train()
    began = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == steps:
            break
        loss = nn.functional.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    float(loss.detach())  # waits for the device
    return time.perf_counter() - began


def fast_options(device: torch.device) -> Performance:
    """The speed options worth having on ``device``: fused SGD; on CUDA also channels_last and bf16 autocast."""
    if device.type == "cuda":
        return Performance(fused_optimizer=True, channels_last=True, amp="bf16")
    return Performance(fused_optimizer=True)


def describe(performance: Performance) -> str:
    """The options set away from their defaults, for row labels ("performance: fused_optimizer")."""
    names = [name for name, value in vars(performance).items() if value != getattr(Performance(), name)]
    return "performance: " + ", ".join(names)


def latency_section(device: torch.device, batch_sizes: tuple[int, ...]) -> None:
    """Does removing channels speed the model up? resnet56, conv1 of every block, L1 selection."""
    print("\nresnet56 inference latency, dense vs slimmed (conv1 of every block, L1 selection)")
    torch.manual_seed(0)
    dense = MODELS.get("resnet56").build(num_classes=10, in_channels=3).to(device).eval()
    layers = prunable_layers(dense, ["layer*.*.conv1"])
    deps = trace_dependencies(dense, torch.zeros(1, 3, 32, 32, device=device), layers)
    scores = mean_abs_weight(dense, layers)
    dense_flops = count_flops(dense, (3, 32, 32))
    base = {b: measure_latency(dense, (3, 32, 32), b)["median_ms"] for b in batch_sizes}
    row("ratio", "FLOP ratio", *(f"speed-up b={b}" for b in batch_sizes))
    for ratio in (0.3, 0.5, 0.7, 0.9, 0.95):
        keep = keep_from_scores(scores, PruneTarget(layers, {n: ratio for n in layers}, "layerwise"))
        small = slim(copy.deepcopy(dense), keep, deps)
        speedups = [base[b] / measure_latency(small, (3, 32, 32), b)["median_ms"] for b in batch_sizes]
        flop_ratio = dense_flops / count_flops(small, (3, 32, 32))
        row(f"{ratio}", f"{flop_ratio:.2f}x", *(f"{s:.2f}x" for s in speedups))


def _packed_worker(model_name: str, dataset: tuple[str, str | None, int | None], shape: tuple[int, int, int],
                   steps: int, threads: int, device: str, ready: Any, start: Any, results: Any) -> None:
    """One of several training processes sharing the machine (or one GPU): build, warm up, say so, wait for the
    start signal, then time ``steps`` harness training steps with the fast options."""
    torch.set_num_threads(threads)
    load_builtin()
    name, root, size = dataset
    data = build_dataset(name, {}, Path(root) if root else None, size)
    torch.manual_seed(0)
    model = MODELS.get(model_name).build(num_classes=10, in_channels=shape[0]).to(device)
    fast = fast_options(torch.device(device))
    train_steps(model, data.train_batches(128, 0, device), 3, torch.device(device), fast)
    ready.put(True)
    start.wait()
    results.put(train_steps(model, data.train_batches(128, 1, device), steps, torch.device(device), fast))


def _gather(messages: Any, count: int, workers: list[Any], each_poll: Callable[[], None] = lambda: None) -> list[Any]:
    """``count`` messages from the workers' queue, polling; a worker that died makes this raise, not hang."""
    received: list[Any] = []
    while len(received) < count:
        each_poll()
        try:
            received.append(messages.get(timeout=0.1))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"a packed training process failed (exit code {failed[0]}); see its error above") \
                    from None
    return received


def packed_throughput(model_name: str, dataset: tuple[str, str | None, int | None], shape: tuple[int, int, int],
                      steps: int, processes: int, device: torch.device) -> tuple[float, float | None]:
    """Samples/s of ``processes`` concurrent trainings in all (each with cores/processes threads on CPU), timed
    from their common start to the last one's end, and on CUDA the mean GPU utilisation meanwhile (None when
    unavailable): how the local executor's --workers packs small runs onto one machine or GPU."""
    context = multiprocessing.get_context("spawn")
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    threads = max(1, (os.cpu_count() or 1) // processes)
    workers = [context.Process(target=_packed_worker, daemon=True,
                               args=(model_name, dataset, shape, steps, threads, str(device), ready, start, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    utilisation: list[float] = []

    def sample_utilisation() -> None:
        if device.type == "cuda":
            try:
                utilisation.append(torch.cuda.utilization(device))  # NVML, through the pynvml package
            except Exception:  # noqa: BLE001 - NVML unusable (e.g. no pynvml package): reported as "n/a"
                pass

    try:
        _gather(ready, processes, workers)
        start.set()
        timings = _gather(results, processes, workers, sample_utilisation)
    finally:  # on a failure the others would wait for the start signal forever
        for worker in workers:
            if worker.exitcode is None and not start.is_set():
                worker.terminate()
            worker.join()
    throughput = sum(samples for _, samples in timings) / max(seconds for seconds, _ in timings)
    return throughput, (sum(utilisation) / len(utilisation) if utilisation else None)


def packing_section(root: Path, device: torch.device, processes: int, steps: int, peak: float,
                    fashion_root: Path | None = None) -> None:
    """Several small runs at once vs one at a time, the same step: does packing fill the machine (or the GPU)?"""
    print(f"\npacking: {processes} training processes at once vs one (harness step, batch 128, "
          f"{describe(fast_options(device))})")
    row("model", "1 run, samples/s", f"{processes} runs, samples/s", "packed vs one")
    fashion = str(fashion_root) if fashion_root else None
    cases = [("mlp7_linear", ("fashion_mnist", fashion, 32), (1, 32, 32), max(steps, 200), 60000),
             ("resnet56", ("cifar10", str(root), None), (3, 32, 32), steps, 50000)]
    write_fake_cifar(root)
    for model_name, dataset, shape, n, epoch_samples in cases:
        (alone, busy_alone), (packed, busy_packed) = (packed_throughput(model_name, dataset, shape, n, k, device)
                                                      for k in (1, processes))
        row(model_name, f"{alone:,.0f}", f"{packed:,.0f}", f"{packed / alone:.2f}x")
        if device.type == "cuda":
            row("  GPU utilisation", *(f"{b:.0f}%" if b is not None else "n/a (NVML)" for b in (busy_alone,
                                                                                                    busy_packed)))
        model = MODELS.get(model_name).build(num_classes=10, in_channels=shape[0]).to(device)
        bound = training_flops(model, shape, 128, device) / 128 * epoch_samples / (peak * 1e9)
        row("  epoch of work (s), vs matmul-bound", f"{epoch_samples / alone:.2f}", f"{epoch_samples / packed:.2f}",
            f"{epoch_samples / packed / bound:.1f}x bound {bound:.3f} s")


@contextlib.contextmanager
def timing(wrapped: dict[str, tuple[Any, str]]) -> Iterator[dict[str, float]]:
    """Seconds spent in each of the functions ``{key: (module, name)}`` while the block runs: for its duration they
    are replaced by timing wrappers (callers that look the name up at call time go through them)."""
    spent = dict.fromkeys(wrapped, 0.0)
    originals = {key: getattr(module, name) for key, (module, name) in wrapped.items()}

    def timer(key: str) -> Callable[..., object]:
        def timed(*args: object, **kwargs: object) -> object:
            began = time.perf_counter()
            try:
                return originals[key](*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - began
        return timed

    for key, (module, name) in wrapped.items():
        setattr(module, name, timer(key))
    try:
        yield spent
    finally:
        for key, (module, name) in wrapped.items():
            setattr(module, name, originals[key])


def run_quickstart(*options: str, fashion_root: Path | None = None) -> float:
    """Wall seconds of ``bench.py run suites/quickstart.yaml OPTIONS`` (Fashion-MNIST from FASHION_ROOT when given);
    a failed run stops the benchmark."""
    from bench.cli import main

    began = time.perf_counter()
    data = ["--data-root", str(fashion_root)] if fashion_root else []
    status = main(["run", str(PROJECT / "suites" / "quickstart.yaml"), "--quiet", *data, *options])
    if status != 0:
        raise RuntimeError(f"the quickstart suite failed (exit status {status}) with options {options}")
    return time.perf_counter() - began


def warm_up_quickstart(workdir: Path, fashion_root: Path | None = None) -> float:
    """Pay a process's one-time costs (lazy imports of torch.fx, torch.func and the FLOP counter's sympy; the first
    JSV call) with a one-run, no-training quickstart; its wall seconds."""
    return run_quickstart("--results", str(workdir / "warm-up"), "--set", "methods=[l1]", "--set",
                          "prune.ratios=[0.5]", "--set", "retrain.lr=[0.01]", "--set", "pretrain.epochs=0",
                          "--set", "retrain.epochs=0", fashion_root=fashion_root)


def overhead_section(workdir: Path, workers: int, fashion_root: Path | None = None) -> None:
    """The harness's own time per run (config, data, tracing, FLOPs, storage) against its training compute.

    The measurements (JSV, with its own target, see benchmarks/jsv_cost.py, and inference latency) and reading the
    dataset, which any training pays, are timed apart: those functions are wrapped with timers for this run.
    """
    import bench.data
    import bench.pipeline.metrics
    from bench.cli import main
    print("\nharness overhead: the quickstart suite (12 runs: mlp7_linear on Fashion-MNIST, l1, random, tpp), "
          "every cost outside training; then the suite on a local pool")
    results = workdir / "results"
    # One-time costs of a process are paid by a warm-up and shown on their own line.
    warm_up = warm_up_quickstart(workdir, fashion_root)
    with timing({"jsv": (bench.pipeline.metrics, "jsv_stats"), "latency": (bench.pipeline.metrics, "measure_latency"),
                 "data": (bench.data, "build_dataset")}) as spent:
        wall = run_quickstart("--results", str(results), fashion_root=fashion_root)
    compute, phases = 0.0, {}
    for path in results.glob("*/runs/*/result.json"):
        record = json.loads(path.read_text())
        compute += sum(r["seconds"] for r in record["history"]["retrain"])
        # A method's phase ran once for all the runs sharing its pruned model, and each of them records it.
        phases[record["prune_id"]] = sum(r["seconds"] for r in record["history"]["phase"])
    compute += sum(phases.values())
    for path in results.glob("_dense/*/dense.json"):
        compute += sum(r["seconds"] for r in json.loads(path.read_text())["history"])
    began = time.perf_counter()
    main(["report", "--results", str(results)])
    report_s = time.perf_counter() - began
    row("once per process: imports, first JSV (s)", f"{warm_up:.1f}", f"{100 * warm_up / wall:.1f}%")
    row("suite wall time, after that (s)", f"{wall:.1f}")
    row("training epochs (dense, phase, retrain) (s)", f"{compute:.1f}")
    row("JSV: dense, pruned, each epoch (s)", f"{spent['jsv']:.1f}", f"{100 * spent['jsv'] / wall:.1f}%")
    row("latency: dense and pruned models (s)", f"{spent['latency']:.1f}",
        f"{100 * spent['latency'] / wall:.1f}%")
    row("reading the dataset into memory (s)", f"{spent['data']:.1f}", f"{100 * spent['data'] / wall:.1f}%")
    harness = wall - compute - sum(spent.values())
    row("everything else: the harness (s)", f"{harness:.1f}", f"{100 * harness / wall:.1f}%")
    row("report (s)", f"{report_s:.1f}", f"{100 * report_s / wall:.1f}%")
    # the same suite again, from nothing, its runs packed on a local pool
    packed = run_quickstart("--results", str(workdir / "packed"), "--executor", "local", "--workers", str(workers),
                            fashion_root=fashion_root)
    row(f"the suite with --executor local --workers {workers} (s)", f"{packed:.1f}", f"{wall / packed:.2f}x faster")


def validation_section(workdir: Path, fashion_root: Path | None = None) -> None:
    """What a validation split adds to a run's wall time: one quickstart run (l1, ratio 0.9, LR 0.01: pruning, six
    retraining epochs, the measurements) on Fashion-MNIST with a 5,000-image split, beside the same run without one.

    Each run's dense model is made first, untimed, as a suite's runs share it. In the run with the split the
    evaluations of the split (``bench.pipeline.runner.validation_metrics``, wrapped for this run: the dense and
    pruned models, then every retraining epoch) are timed; their share of that run's wall time is the figure
    (target <= 5%). The two wall times differ also because the split leaves 55,000 of the 60,000 images to train on.
    """
    import bench.pipeline.runner
    print("\nvalidation split: one quickstart run (l1, ratio 0.9, LR 0.01, 6 retraining epochs; dense model made "
          "beforehand) without a split and with validation: 5000")
    one_run = ("--set", "methods=[l1]", "--set", "prune.ratios=[0.9]", "--set", "retrain.lr=[0.01]")
    walls = {}
    for name, dataset in (("without", '{"name": "fashion_mnist"}'),
                          ("with", '{"name": "fashion_mnist", "validation": 5000}')):
        options = ("--results", str(workdir / f"{name}-validation"), *one_run, "--set", f"dataset={dataset}")
        run_quickstart(*options, "--set", "retrain.epochs=0", fashion_root=fashion_root)  # dense model, untimed
        with timing({"validation": (bench.pipeline.runner, "validation_metrics")}) as spent:
            walls[name] = run_quickstart(*options, fashion_root=fashion_root)
    share = spent["validation"] / walls["with"]
    row("run wall time, no split: 60,000 images (s)", f"{walls['without']:.1f}")
    row("run wall time, validation=5000: 55,000 (s)", f"{walls['with']:.1f}",
        f"{walls['with'] / walls['without']:.3f}x")
    row("evaluating the split: 2 + 6 times 5,000 (s)", f"{spent['validation']:.1f}",
        f"{100 * share:.2f}% of its wall", "ok (<= 5%)" if share <= 0.05 else "OVER 5%")


SECTIONS = ("mlp", "resnet", "packing", "latency", "overhead", "validation", "fusion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline pipeline")
    parser.add_argument("--compile", action="store_true",
                        help="also time the training epochs with performance.compile (torch.compile; needs a C++ "
                             "compiler on CPU; adds its compilation time to the run, not to the figures)")
    parser.add_argument("--pack", type=int, default=2, help="training processes run at once in the packing section")
    parser.add_argument("--fusion-steps", type=int, default=430,
                        help="fusion: fair_mlp's retraining cut to its first N SGD steps and one epoch end (430: one "
                             "whole epoch of its 30)")
    parser.add_argument("--fusion-sample", type=int, default=6,
                        help="fusion: fair_mlp's separate runs timed (the figure scales them to all 60)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to measure (default: everything)")
    args = parser.parse_args()
    device = torch.device(args.device)
    load_builtin()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak(device)
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s (2048x2048, best of 10)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reads_fashion = {"mlp", "packing", "overhead", "validation", "fusion"} & set(args.sections)
        fashion_root = fashion_mnist_root(root) if reads_fashion else None
        if "mlp" in args.sections:
            fmnist = build_dataset("fashion_mnist", {}, fashion_root, 32)
            loader = torchvision_fashion_mnist(root, 128, args.workers)
            pipeline_section("Fashion-MNIST (60k, resized to 32x32)", "mlp7_linear",
                             lambda: fmnist.train_batches(128, 0, device), lambda: loader,
                             fmnist.steps_per_epoch(128), len(loader), peak, device, (1, 32, 32), args.compile)
        if "resnet" in args.sections:
            write_fake_cifar(root)
            cifar = build_dataset("cifar10", {}, root, None)
            cifar_loader = torchvision_cifar(root, 128, args.workers)
            for model_name in ("resnet20", "resnet56"):
                pipeline_section("CIFAR-10-shaped (50k random images, crop+flip)", model_name,
                                 lambda: cifar.train_batches(128, 0, device), lambda: cifar_loader,
                                 cifar.steps_per_epoch(128), args.steps, peak, device, (3, 32, 32), args.compile)
        if "packing" in args.sections:
            packing_section(root, device, args.pack, min(args.steps, 10), peak, fashion_root)
        if "latency" in args.sections:
            latency_section(device, (1, 128))
        if "overhead" in args.sections:
            overhead_section(root, args.pack, fashion_root)
        if "validation" in args.sections:
            validation_section(root, fashion_root)
        if "fusion" in args.sections:
            from fusion_perf import fusion_section  # beside this script

            fusion_section(fashion_root, device, args.steps, args.fusion_steps, args.fusion_sample,
                           linear_matmuls_seconds, train_steps, row)


if __name__ == "__main__":
    main()
