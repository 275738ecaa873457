"""``bench.py selftest``: the first command on a new machine, proving that the harness really runs on its device.

Tiny suites on synthetic data (resnet20 and the MLP, one epoch per phase) exercise every registered method, then the
speed options (bf16, channels_last, fused SGD, torch.compile), checking each run finished ``ok`` with the options
applied in every phase (dense training, the method's phase, retraining: read off what each phase trained with);
memory flat from run to run; latency timed after the device finished; the JSV (TF32 off) equal to the CPU's; with
``--nproc N`` a data-parallel run (SyncBatchNorm on CUDA) against one process; the local pool with two workers.
One PASS/FAIL line per check; the exit status is 0 only when every check passed.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from bench.core.errors import UserError

log = logging.getLogger(__name__)

Command = Callable[[list[str]], int]   # the command line's entry point, bench.cli.main

SPEED_OPTIONS = {"amp": "bf16", "channels_last": True, "fused_optimizer": True}
RELATIVE = 1e-4   # tolerance of the JSV against the CPU and of data-parallel losses against one process


@dataclass
class Check:
    """One line of the self-test's output."""

    name: str
    passed: bool | None      # None: skipped
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"{verdict}  {self.name:24} {self.detail}"


@dataclass(frozen=True)
class Roster:
    """The methods the checks run, chosen by what each method class declares (``selftest_options``,
    ``needs_convolutions``, ``selftest_baseline``): the self-test names no method."""

    names: list[str]     # every method the method checks run (--quick: the quick ones)
    baseline: str        # the plain one-shot selector every check pairs with the others
    phased: list[str]    # methods that shrink their own phase with selftest_options, in registration order

    @classmethod
    def registered(cls, quick: bool) -> Roster:
        """From the methods registered now that its worker processes register too (built-ins and the installed
        plugins ``$BENCH_PLUGINS`` enables; not a ``--plugin`` file, nor a method other code registered in-process)."""
        from bench.core.registry import METHODS
        from bench.plugins import reloadable

        names = [n for n in METHODS if reloadable(METHODS, n)]  # the pool's worker processes must load each
        baseline = next((n for n in names if METHODS.get(n).selftest_baseline), None)
        if baseline is None:
            raise UserError("selftest: no registered method declares selftest_baseline = True (a plain one-shot "
                            "selector the checks pair with the others); the built-in methods declare one.")
        phased = [n for n in names if METHODS.get(n).selftest_options is not None]
        return cls([baseline, *phased] if quick else names, baseline, phased)

    def entries(self, names: list[str]) -> list[Any]:
        """Suite entries for ``names``: each method's tiny options where it declares them; a component that does
        not select (a re-initialiser) chained after the baseline."""
        from bench.core.registry import METHODS

        entries: list[Any] = []
        for name in names:
            method = METHODS.get(name)
            entry: Any = {name: dict(method.selftest_options)} if method.selftest_options is not None else name
            entries.append(entry if method.selects else f"{self.baseline} + {name}")
        return entries

    def without_convolutions(self, names: list[str]) -> list[str]:
        """``names`` less the methods that need convolutions or BatchNorm."""
        from bench.core.registry import METHODS

        return [n for n in names if not METHODS.get(n).needs_convolutions]


def suite(name: str, model: str, methods: list[Any], device: str, performance: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """A one-epoch suite on seeded synthetic data shaped for ``model`` (the MLP: 1×32×32; the ResNet: 3×16×16)."""
    mlp = model.startswith("mlp")
    return {"name": name, "model": model, "device": device, "seeds": [0], "methods": methods,
            "dataset": {"name": "synthetic", "num_train": 64, "num_test": 32, "channels": 1 if mlp else 3,
                        "size": 32 if mlp else 16},
            "pretrain": {"epochs": 1, "batch_size": 32, "lr": 0.05}, "prune": {"ratios": [0.5]},
            "retrain": {"epochs": 1, "batch_size": 16, "lr": [0.05]}, "trainability": {"enabled": False},
            "latency": {"enabled": False}, "performance": performance or {}}


class Workdir:
    """Where the self-test writes its suites and results (a temporary folder; one per comparison, since results
    folders share their cached dense and pruned models)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, spec: dict[str, Any]) -> Path:
        path = self.root / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def results(self, name: str) -> dict[str, dict[str, Any]]:
        """run id -> result.json of suite ``name``."""
        return {p.parent.name: json.loads(p.read_text())
                for p in (self.root / "results" / name / "runs").glob("*/result.json")}

    def dense_history(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        """The history of the dense model a run started from."""
        from bench.suite.grid import content_hash

        path = self.root / "results" / "_dense" / content_hash(result["config"]["dense"]) / "dense.json"
        return json.loads(path.read_text())["history"] if path.exists() else []


def memory_in_use(device: torch.device) -> int:
    """Bytes held by live tensors: CUDA's allocator on a GPU, the Python-visible tensors on the CPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    with warnings.catch_warnings():  # gc also finds deprecated objects whose inspection warns
        warnings.simplefilter("ignore")
        storages = {o.untyped_storage().data_ptr(): o.untyped_storage().nbytes() for o in gc.get_objects()
                    if type(o) in (torch.Tensor, nn.Parameter) and o.device.type == "cpu"}  # not compile's fakes
    return sum(storages.values())


def run_inline(work: Workdir, spec: dict[str, Any], memory: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """Execute a suite's runs one after another in this process (as ``bench.py run`` does), noting the memory in
    use after each run in ``memory``; returns the results."""
    from bench.launch import Invocation
    from bench.pipeline.runner import execute
    from bench.pipeline.setup import validate_runs

    invocation = Invocation(suite=str(work.write(spec)), results=str(work.root / "results"))
    loaded, runs, suite_dir = invocation.load()
    ws = invocation.workspace(loaded, suite_dir)
    validate_runs(runs, ws.data.info, suite_dir)
    for run in runs:
        execute(run, ws)
        if memory is not None:
            memory.append(memory_in_use(ws.device))
    return work.results(spec["name"])


def failures(results: dict[str, dict[str, Any]]) -> list[str]:
    """'method: error' for each run that did not finish ok."""
    return [f"{r['method']}: {r['status']} ({str(r.get('error', '')).splitlines()[0] if r.get('error') else ''})"
            for r in results.values() if r["status"] != "ok"]


def options_missed(work: Workdir, results: dict[str, dict[str, Any]], wanted: dict[str, Any]) -> list[str]:
    """'method/phase: applied' for every phase whose rows do not show ``wanted`` applied."""
    missed = []
    for result in results.values():
        phases = {"dense": work.dense_history(result), **result.get("history", {})}
        for phase, rows in phases.items():
            applied = [row.get("performance") for row in rows]
            if any(a != wanted for a in applied) or (phase != "phase" and not rows):
                missed.append(f"{result['method']}/{phase}: {applied[0] if applied else 'no epoch'}")
    return missed


def check_methods(work: Workdir, device: str, roster: Roster, memory: list[int]) -> list[Check]:
    """Every method on resnet20 and the MLP (methods needing convolutions or BatchNorm on resnet20 only)."""
    checks = []
    for model in ("resnet20", "mlp7_relu"):
        chosen = roster.names if model == "resnet20" else roster.without_convolutions(roster.names)
        began = time.perf_counter()
        results = run_inline(work, suite(f"methods_{model}", model, roster.entries(chosen), device), memory)
        bad = failures(results)
        detail = (f"{len(results)} runs ok ({', '.join(chosen)}) in {time.perf_counter() - began:.0f} s" if not bad
                  else "; ".join(bad))
        checks.append(Check(f"methods on {model}", not bad and len(results) == len(chosen), detail))
    return checks


def check_speed_options(work: Workdir, device: str, quick: bool, roster: Roster, memory: list[int]) -> list[Check]:
    """bf16, channels_last and fused SGD in every phase of the phase methods on both models; torch.compile on the
    MLP's, and (not with --quick) on resnet20 for the baseline: each fit compiles afresh, so one method suffices."""
    phased = [roster.baseline, *roster.phased]
    cases = [("resnet20", phased, False), ("mlp7_relu", roster.without_convolutions(phased), True)]
    if not quick:
        cases.append(("resnet20", [roster.baseline], True))
    checks = []
    for model, names, compiled in cases:
        options = dict(SPEED_OPTIONS, compile=compiled)
        began = time.perf_counter()
        name = f"speed_{model}{'_compiled' if compiled else ''}"
        results = run_inline(work, suite(name, model, roster.entries(names), device, options), memory)
        wanted = dict(options, channels_last=True if model == "resnet20" else None)  # None: the MLP has no conv
        bad = failures(results) + options_missed(work, results, wanted)
        label = ", ".join(k if v is True else f"{k} {v}" for k, v in options.items() if v)
        detail = (f"{label}: applied in every phase of {len(results)} runs ({', '.join(names)}), all ok, in "
                  f"{time.perf_counter() - began:.0f} s" if not bad else "; ".join(bad))
        title = f"speed {model}{' compiled' if compiled and model == 'resnet20' else ''}"
        checks.append(Check(title, not bad and len(results) == len(names), detail))
    return checks


def check_memory(memory: list[int], device: torch.device) -> Check:
    """Memory in use after each run no higher than after the first (plus 1 MiB): nothing accumulates."""
    if len(memory) < 2:
        return Check("memory flat", None, "fewer than two runs")
    slack = 2**20
    grew = max(memory[1:]) - memory[0]
    counted = "CUDA allocator" if device.type == "cuda" else "live tensors"
    return Check("memory flat", grew <= slack, f"{len(memory)} runs: {memory[0] / 2**20:.1f} MiB after the first, at "
                 f"most {max(memory) / 2**20:.1f} MiB after any ({counted})")


def check_latency(device: torch.device) -> Check:
    """measure_latency against the same forward passes timed around an explicit device synchronisation: a timer
    stopped before the device finished would read a fraction of it."""
    from bench.training.measure import measure_latency

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)]).to(device).eval()
    x = torch.randn(512, 1024, device=device)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        reference = []
        for _ in range(5):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            reference.append((time.perf_counter() - began) * 1e3)
    measured = float(measure_latency(model, (1024,), 512, repeats=5)["median_ms"])
    expected = sorted(reference)[len(reference) // 2]
    ratio = measured / expected
    return Check("latency synchronised", 0.5 <= ratio <= 2.0,
                 f"{measured:.2f} ms measured vs {expected:.2f} ms timed to completion ({ratio:.2f}x)")


def check_jsv(device: torch.device) -> Check:
    """The JSV of a resnet20 on the device, with TF32 switched on globally as Ampere's cuDNN default has it, equals
    the CPU's within 1e-4 relative (mean and min singular value): the JSV switches TF32 off for itself."""
    from bench.core.registry import MODELS
    from bench.plugins import load_builtin
    from bench.training.trainability import TF32_SWITCHES, jsv_stats

    load_builtin()
    torch.manual_seed(0)
    model = MODELS.get("resnet20").build(num_classes=10, in_channels=3)
    probe = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = jsv_stats(copy.deepcopy(model), probe)
    saved = [switch.fp32_precision for switch in TF32_SWITCHES]
    try:
        for switch in TF32_SWITCHES:
            switch.fp32_precision = "tf32"
        here = jsv_stats(model.to(device), probe)
    finally:
        for switch, value in zip(TF32_SWITCHES, saved):
            switch.fp32_precision = value
    errors = {key: abs(getattr(here, key) - getattr(reference, key)) / abs(getattr(reference, key))
              for key in ("mean", "min", "condition")}
    worst = max(errors, key=errors.__getitem__)
    return Check("jsv tf32 off vs cpu", errors[worst] <= RELATIVE,
                 f"{device.type} vs cpu: largest relative difference {errors[worst]:.1e} ({worst})"
                 + ("" if device.type == "cuda" else "; both on the CPU here, so equal by construction"))


def loss_rows(results: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """method -> the training losses of every phase's epochs, in order."""
    return {r["method"]: [row["train_loss"] for phase in ("phase", "retrain") for row in r["history"][phase]]
            for r in results.values()}


def close(a: dict[str, list[float]], b: dict[str, list[float]], tolerance: float) -> float | None:
    """The largest relative difference between two runs' losses, None when they do not pair up."""
    if a.keys() != b.keys() or any(len(a[k]) != len(b[k]) for k in a):
        return None
    return max((abs(x - y) / max(abs(y), 1e-12) for k in a for x, y in zip(a[k], b[k])), default=0.0)


def check_data_parallel(work: Workdir, device: torch.device, nproc: int, roster: Roster, main: Command) -> Check:
    """``run --nproc N`` against one process: every run ok, training losses within 1e-4 relative (resnet20 with
    SyncBatchNorm on CUDA, whose global-batch statistics are one process's; the BatchNorm-free MLP on CPU)."""
    if nproc < 2:
        return Check("data parallel", None, "--nproc 2 or more runs a DDP run against one process")
    cuda = device.type == "cuda"
    methods = roster.entries([roster.baseline, *roster.without_convolutions(roster.phased)[-1:]])
    spec = suite("ddp", "resnet20" if cuda else "mlp7_relu", methods, str(device),
                 {"sync_batchnorm": True} if cuda else None)
    one = run_inline(Workdir(work.root / "one"), spec)  # its own caches: the DDP run trains everything itself
    began = time.perf_counter()
    code = main(["run", str(work.write(spec)), "--results", str(work.root / "results"), "--nproc", str(nproc),
                 "--quiet"])
    many = work.results("ddp")
    bad = failures(many)
    worst = close(loss_rows(many), loss_rows(one), RELATIVE) if not bad else None
    passed = code == 0 and not bad and worst is not None and worst <= RELATIVE
    backend = {r["environment"].get("data_parallel", {}).get("backend") for r in many.values()}
    detail = (f"{nproc} ranks ({', '.join(map(str, backend))}{', SyncBatchNorm' if cuda else ''}) vs one process: "
              f"losses within {worst:.1e} relative, {time.perf_counter() - began:.0f} s" if worst is not None
              else f"exit {code}; {'; '.join(bad) or 'runs do not pair up with the one-process runs'}")
    return Check("data parallel", passed, detail)


def check_pool(work: Workdir, device: torch.device, roster: Roster, main: Command) -> Check:
    """``run --executor local --workers 2``: every run ok, with the losses of the same suite run in this process
    (within 1e-4 relative: CPU workers use fewer threads, which reorders sums)."""
    spec = suite("pool", "mlp7_relu", roster.entries([roster.baseline, *roster.without_convolutions(roster.phased)]),
                 str(device))
    inline = run_inline(Workdir(work.root / "inline"), spec)
    began = time.perf_counter()
    code = main(["run", str(work.write(spec)), "--results", str(work.root / "results"), "--executor", "local",
                 "--workers", "2", "--quiet"])
    results = work.results("pool")
    bad = failures(results)
    worst = close(loss_rows(results), loss_rows(inline), RELATIVE) if not bad else None
    pids = {r["attempts"][-1]["pid"] for r in results.values()}
    devices = sorted({r["environment"]["device"] for r in results.values()})
    passed = code == 0 and not bad and worst is not None and worst <= RELATIVE
    detail = (f"{len(results)} runs ok in {len(pids)} of 2 workers on {', '.join(devices)}, losses within "
              f"{worst:.1e} of one process, {time.perf_counter() - began:.0f} s" if worst is not None
              else f"exit {code}; {'; '.join(bad) or 'runs do not pair up with the inline runs'}")
    return Check("local pool", passed, detail)


def resolve(device: str) -> torch.device:
    """The device to test: cuda needs a visible GPU (a UserError saying there is none)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"selftest --device {device}: no GPU is visible here (torch.cuda.is_available() is False); "
                        "run it on a GPU node, or with --device cpu.")
    return torch.device(device)


def selftest(main: Command, device: str = "cpu", nproc: int = 1, quick: bool = False, workdir: Path | None = None,
             say: Callable[[str], None] = print) -> int:
    """Run every check on ``device``, printing a line per check through ``say``; 0 when all passed, else 1.
    ``main`` is the command line's entry point, which the pool and data-parallel checks run (so no import of it)."""
    from bench.plugins import load_builtin

    here = resolve(device)
    load_builtin()
    roster = Roster.registered(quick)
    loggers = {logger: logger.level for logger in (logging.getLogger(), logging.getLogger("bench"))}
    logging.getLogger().setLevel(logging.WARNING)  # the checks' lines, not the runs' progress or suite summaries
    logging.getLogger("bench").setLevel(logging.ERROR)
    try:
        return _selftest(here, roster, nproc, quick, workdir, say, main)
    finally:
        for logger, level in loggers.items():
            logger.setLevel(level)


def _selftest(here: torch.device, roster: Roster, nproc: int, quick: bool, workdir: Path | None,
              say: Callable[[str], None], main: Command) -> int:
    """The checks of :func:`selftest`, in order."""
    device = str(here)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-selftest-") as tmp:
        work = Workdir(Path(workdir) if workdir else Path(tmp))
        memory: list[int] = []
        steps: list[Callable[[], list[Check]]] = [
            lambda: [] if quick else check_methods(work, device, roster, memory),  # quick: the speed runs only
            lambda: check_speed_options(work, device, quick, roster, memory),
            lambda: [check_memory(memory, here)],
            lambda: [check_latency(here)],
            lambda: [check_jsv(here)],
            lambda: [check_data_parallel(work, here, nproc, roster, main)],
            lambda: [check_pool(work, here, roster, main)],
        ]
        checks: list[Check] = []
        for step in steps:
            for check in step():
                say(check.line())
                checks.append(check)
    failed = sum(c.passed is False for c in checks)
    say(f"selftest on {here}{' (quick)' if quick else ''}: {sum(c.passed is True for c in checks)} passed, "
        f"{failed} failed, {sum(c.passed is None for c in checks)} skipped in {time.perf_counter() - began:.0f} s")
    return 1 if failed else 0
