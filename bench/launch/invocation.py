"""What a worker gets: the command's arguments (``Invocation``), from which it rebuilds the suite and runs
itself, and the dense and pruned stages that run before the runs."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.core import distributed, environment
from bench.core.config import Suite
from bench.core.errors import UserError
from bench.core.store import DenseDir, PrunedDir
from bench.method import Method
from bench.pipeline.dense import obtain_dense
from bench.pipeline.dense_fusion import train_dense_group
from bench.pipeline.fusion import execute_group
from bench.pipeline.runner import execute, make_pruned
from bench.pipeline.setup import Workspace
from bench.suite.fusion import dense_tasks
from bench.suite.grid import Run, suite_data_root
from bench.suite.session import load_runs, resolve_device

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Invocation:
    """The ``run`` command's arguments, from which any process rebuilds the suite, its runs and its dataset.

    Paths are absolute, because a Slurm job may start in another directory.
    """

    suite: str
    overrides: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    results: str = "results"
    data_root: str | None = None
    device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Invocation:
        """From the parsed ``run`` (or ``status``) command line."""
        plugins = tuple(str(Path(p).resolve()) if Path(p).exists() else p for p in args.plugins)
        data_root = getattr(args, "data_root", None)
        return cls(suite=str(Path(args.suite).resolve()), overrides=tuple(args.overrides), plugins=plugins,
                   results=str(Path(args.results).resolve()), device=getattr(args, "device", None),
                   data_root=str(Path(data_root).resolve()) if data_root else None)

    def load(self) -> tuple[Suite, list[Run], Path]:
        """Load plugins and the suite, and expand its runs (what the command line does)."""
        return load_runs(self.suite, self.overrides, self.plugins, self.data_root)

    def device_name(self, suite: Suite) -> str:
        """The device the command line or else the suite asks for (auto, cpu, cuda, cuda:N)."""
        return self.device or suite.device

    def workspace(self, suite: Suite, suite_dir: Path, device: str | None = None) -> Workspace:
        """Build the suite's dataset and the workspace runs execute in (``device`` overrides the usual choice)."""
        from bench.core.registry import MODELS
        from bench.data import build_dataset

        root = suite_data_root(suite, suite_dir, self.data_root)
        with environment.recording_reads() as reads:  # the dataset's files, for each result's provenance
            data = build_dataset(suite.dataset_name, suite.dataset_options, root, MODELS.get(suite.model).image_size)
        device_here = distributed.initialize(resolve_device(device or self.device_name(suite)))
        if not distributed.is_main():  # the other ranks of a data-parallel run stay silent
            logging.getLogger().setLevel(logging.ERROR)
        return Workspace(results=Path(self.results), data=data, suite_dir=suite_dir, device=device_here,
                         reads=reads, data_root=root.resolve() if root is not None else None)


_context: dict[tuple[Invocation, str | None], tuple[dict[str, Run], Workspace]] = {}


def run_in_process(invocation: Invocation, run_id: str, stage: str = "run", device: str | None = None) -> str:
    """Execute one run (``stage="run"``; returns its status), a fused group (``"group"``: ``run_id`` is the
    members' ids joined by commas, and so is what it returns), or only make a run's dense model (``"dense"``; with
    several run ids joined by commas, their dense models as one fused group) or its pruned model (``"prune"``).

    The suite and dataset are loaded once per process and reused by the runs that follow in it.
    """
    key = (invocation, device)
    if key not in _context:
        suite, runs, suite_dir = invocation.load()
        _context.clear()
        _context[key] = ({r.run_id: r for r in runs}, invocation.workspace(suite, suite_dir, device))
    runs, ws = _context[key]
    if stage == "dense" and "," in run_id:  # a fused dense group: one run per dense model, ids joined by commas
        group = [_known(runs, one, invocation) for one in run_id.split(",")]
        # its failures stay with this task: the runs (here too, later) make a failed model again, as after any stage
        made = train_dense_group(group, dataclasses.replace(ws, dense_failed={}))
        return ",".join(made.values())
    if stage == "group":  # a fused group: its run ids joined by commas; their statuses likewise, in that order
        group = [_known(runs, one, invocation) for one in run_id.split(",")]
        statuses = execute_group(group, ws)
        return ",".join(statuses[r.run_id] for r in group)
    run = _known(runs, run_id, invocation)
    if stage == "dense":
        obtain_dense(run, ws, run.method.build())
        return "ok"
    if stage == "prune":
        make_pruned(run, ws, run.method.build())
        return "ok"
    return execute(run, ws)


def _known(runs: dict[str, Run], run_id: str, invocation: Invocation) -> Run:
    """The run ``run_id`` of the suite as this process expanded it; a UserError when the suite no longer has it."""
    run = runs.get(run_id)
    if run is None:
        raise UserError(f"run {run_id} is no longer part of suite '{invocation.suite}' (with its --set overrides): "
                        "the suite file changed after the submission. Submit the suite again.")
    return run


def dense_stage(runs: Iterable[Run], results: Path) -> list[list[Run]]:
    """The dense models that some unpruned run still needs and that are trained (not loaded) and missing, as tasks
    of one run per dense model: a fused group (bench.suite.fusion's dense plan) is one task."""
    chosen: dict[str, Run] = {}
    for run in runs:
        pretrain = run.suite.pretrain
        if pretrain.checkpoint or pretrain.epochs == 0 or run.dense_id in chosen:
            continue
        if PrunedDir(results, run.prune_id).done:
            continue
        if not DenseDir(results, run.dense_id).done:
            chosen[run.dense_id] = run
    return dense_tasks(list(chosen.values()))


def pruned_stage(runs: Iterable[Run], results: Path) -> list[Run]:
    """One run per missing pruned model that two or more of ``runs`` share (the same run but for the retraining
    LR) and whose method has a training phase: made first, it spares their tasks from waiting on its lock while
    the phase runs. Without a phase, making it is quick, and the first run does it."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.prune_id, []).append(run)
    return [group[0] for prune_id, group in groups.items()
            if len(group) > 1 and has_phase(group[0]) and not PrunedDir(results, prune_id).done]


def has_phase(run: Run) -> bool:
    """Whether a component of the run's method defines its own training phase (``Method.phase`` overridden)."""
    return any(type(m).phase is not Method.phase for m in run.method.build())


def configure_worker_logging(level: int = logging.INFO, tag: str = "") -> None:
    """Log to stderr with times in a worker process (a Slurm task's log file, or the pool's terminal)."""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")
