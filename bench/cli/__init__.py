"""The command line: ``run``, ``plan``, ``status``, ``report``, ``export``, ``export-model``, ``latency``, ``list``,
``verify`` and ``gc``.

Errors a user can fix exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.cli.deploy import command_export_model, command_latency
from bench.cli.parser import (  # build_parser: re-exported for callers of bench.cli
    LARGE_PLAN,
    SLURM_FLAGS,
    build_parser,
)
from bench.cli.rounds import grown_runs
from bench.core import distributed, environment
from bench.core.config import Suite, device_problem, load_suite
from bench.core.errors import ConfigError, UserError
from bench.core.registry import DATASETS, METHODS, MODELS, UnknownNameError
from bench.core.schema import describe, describe_keywords
from bench.pipeline.trackers import require as require_tracker
from bench.plugins import load_builtin, load_enabled, load_plugin
from bench.suite.grid import Run
from bench.suite.session import load_runs

if TYPE_CHECKING:
    from bench.launch import Invocation

log = logging.getLogger("bench")


def prepare(args: argparse.Namespace) -> tuple[Suite, list[Run], Path]:
    """Load plugins and the suite of a parsed command line, validate it and expand it into runs (nothing is written).
    ``--fuse MODE`` is ``--set execution.fuse=MODE``: one road, which workers and Slurm tasks re-load too."""
    if getattr(args, "fuse", None) and f"execution.fuse={args.fuse}" not in args.overrides:
        args.overrides.append(f"execution.fuse={args.fuse}")
    return load_runs(args.suite, args.overrides, args.plugins, getattr(args, "data_root", None))


def apply_slurm_flags(args: argparse.Namespace) -> None:
    """Turn the Slurm resource flags into ``--set slurm.KEY=VALUE`` overrides (validated with the suite)."""
    for flag, _, _ in SLURM_FLAGS:
        key = flag[2:].replace("-", "_")
        value = getattr(args, f"slurm_{key}", None)
        if value is not None:
            args.overrides.append(f"slurm.{key}={json.dumps(value)}")


def command_run(args: argparse.Namespace) -> int:
    if args.device is not None and (problem := device_problem(args.device)):
        raise ConfigError(f"--device {problem}")
    if args.workers is not None and (args.executor != "local" or args.workers < 1):
        raise ConfigError("--workers N (N >= 1) goes with --executor local.")
    if args.wait and args.executor != "slurm":
        raise ConfigError("--wait goes with --executor slurm (the other executors always wait).")
    if args.nproc < 1:
        raise ConfigError("--nproc N needs N >= 1.")
    if (args.nproc > 1 or distributed.requested()) and args.executor != "inline":
        raise ConfigError("data-parallel runs (--nproc, torchrun) go with the inline executor; on Slurm give "
                          "--tasks-per-run N instead.")
    apply_slurm_flags(args)
    suite, runs, suite_dir = prepare(args)
    if len(runs) > LARGE_PLAN and not args.yes:
        grid = f"{len(suite.methods)} methods x {len(suite.prune.ratios)} ratios x {len(suite.retrain.lr)} LRs"
        raise ConfigError(f"{len(runs):,} runs planned, more than {LARGE_PLAN:,} ({grid} x {len(suite.seed_list)} "
                          "seeds); pass --yes to run them all, or list fewer seeds, ratios or LRs.", str(args.suite))
    for kind in suite.log.targets(suite_dir):  # live logging (suite key log) needs its tracker's package
        try:
            require_tracker(kind)
        except UserError as err:
            raise ConfigError(f"log.{kind}: {err}", str(args.suite)) from None
    if args.nproc > 1 and not distributed.requested():  # the suite is valid: start the group, each runs this command
        distributed.check_gpus_for(args.nproc, args.device or suite.device)
        return distributed.spawn(args.nproc, main, args.argv)
    try:
        if args.until_decided or suite.seed_plan is not None:  # seeds grown in rounds
            from bench.cli.rounds import run_rounds
            return run_rounds(args, suite, runs, suite_dir, _run_suite)
        return _run_suite(args, suite, runs, suite_dir)
    finally:
        distributed.shutdown()


def _run_suite(args: argparse.Namespace, suite: Suite, runs: list[Run], suite_dir: Path) -> int:
    from bench.core.progress import Progress
    from bench.core.store import RunDir, check_writable
    from bench.launch import Invocation, run_local
    from bench.pipeline.fusion import execute_runs
    from bench.pipeline.setup import validate_runs

    invocation = Invocation.from_args(args)
    # Slurm: the jobs pick their device; here the data are only needed to validate the runs.
    ws = invocation.workspace(suite, suite_dir, "cpu" if args.executor == "slurm" else None)
    try:
        validate_runs(runs, ws.data.info, suite_dir)
    except ConfigError as err:
        raise ConfigError(err.problems, str(args.suite)) from None
    if suite.performance.sync_batchnorm and distributed.active() and ws.device.type != "cuda":
        raise ConfigError("performance.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                          "leave it off for CPU data-parallel runs.")
    results = Path(args.results)
    check_writable(results)
    record_suite(results, suite, suite_dir, runs)
    unfinished = distributed.agree([r.run_id for r in runs
                                    if RunDir(results, suite.name, r.run_id).status() not in ("ok", "diverged")])
    todo = [r for r in runs if r.run_id in unfinished]
    if args.executor == "slurm":
        return submit(args, invocation, suite, runs, todo)
    workers = args.workers or max(torch.cuda.device_count(), 1)
    where = f"{workers} worker processes" if args.executor == "local" else str(ws.device)
    log.info("suite '%s': %d runs, %d to do, on %s", suite.name, len(runs), len(todo), where)
    progress = Progress(quiet=args.quiet or not distributed.is_main())
    statuses: Counter[str] = Counter()
    with progress.suite(len(todo), suite.name) as bar:
        if args.executor == "local":
            statuses = run_local(invocation, suite, todo, workers, args.quiet, on_done=lambda run, status: bar.update())
        else:
            ws.progress = progress
            statuses = execute_runs(todo, ws, bar.set_postfix_str, lambda status: bar.update())
    done = len(runs) - len(todo)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "nothing to do"
    level = logging.WARNING if statuses["failed"] else logging.INFO  # success is news, not a warning
    log.log(level, "suite '%s': %s%s. Results in %s", suite.name, summary,
            f" ({done} already finished)" if done else "", results / suite.name)
    return 1 if statuses["failed"] else 0


def record_suite(results: Path, suite: Suite, suite_dir: Path, runs: list[Run]) -> None:
    """Keep the suite as run beside its results: ``suite.json`` (so ``report`` finds e.g. its reference) and
    ``manifest.json`` (its runs, so reports never pool runs of another configuration)."""
    from bench.core.schema import to_plain
    from bench.core.store import write_json
    from bench.suite.manifest import Manifest, write_manifest

    write_manifest(results / suite.name, Manifest.of(suite.name, runs, suite.seed_plan and to_plain(suite.seed_plan)))
    record = to_plain(suite)
    if suite.reference:
        from bench.report.references import resolve  # imports the reporter's plotting stack: only when needed

        record["reference"] = str(resolve(suite.reference, suite_dir))
    write_json(results / suite.name / "suite.json", record)


def submit(args: argparse.Namespace, invocation: Invocation, suite: Suite, runs: list[Run], todo: list[Run]) -> int:
    """``run --executor slurm``: submit the unfinished runs as one job array; print where to follow it."""
    from bench.launch import log_paths, submit_slurm, wait_for

    submission = submit_slurm(invocation, suite, todo)
    status_command = shlex.join(["python", "bench.py", "status", args.suite, "--results", args.results] + [
        part for o in args.overrides if not o.startswith("slurm.") for part in ("--set", o)])
    if submission is None:
        print(f"suite '{suite.name}': nothing to submit ({len(runs) - len(todo)} of {len(runs)} runs finished, the "
              f"others queued or running). Follow them with: {status_command}")
        return 0
    before = [f"the dense-model array {submission.dense_job}"] if submission.dense_job else []
    before += [f"the pruned-model array {submission.prune_job}"] if submission.prune_job else []
    after = f" after {' and '.join(before)}" if before else ""
    print(f"suite '{suite.name}': submitted {len(submission.tasks)} runs as Slurm job array {submission.job}{after}"
          + (f"; {submission.skipped_live} more are already queued or running" if submission.skipped_live else ""))
    out, err = log_paths(submission.log_dir, f"{submission.job}_<task>")
    print(f"logs: {out} and {err.name}\nstatus: {status_command}")
    if not args.wait:
        return 0
    statuses = wait_for(submission)
    print(f"suite '{suite.name}': " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    return 1 if statuses["failed"] else 0


def command_plan(args: argparse.Namespace) -> int:
    from bench.core.store import RunDir
    from bench.data import check_data_root
    from bench.suite.fusion import plan_lines
    from bench.suite.grid import suite_data_root

    suite, runs, suite_dir = prepare(args)
    # before any output, as run refuses it: a data root given that is not there
    root = suite_data_root(suite, suite_dir, getattr(args, "data_root", None))
    check_data_root(suite.dataset_name, suite.dataset_options, root)
    results = Path(args.results)
    runs, extra = grown_runs(suite, runs, results)  # seeds grown in rounds: the runs so far, the rounds, the next
    dense = dense_models(suite, runs)  # before any output: a method may refuse the dense recipe
    rows = [(r.run_id, r.describe(), RunDir(results, suite.name, r.run_id).status()) for r in runs]
    width = max(len(d["method"]) for _, d, _ in rows)
    print(f"suite '{suite.name}': {suite.model} on {suite.dataset_name}, {len(runs)} runs")
    if runs and "budget" in runs[0].key:
        whom = f" (matched to {suite.budget.match})" if suite.budget and suite.budget.match else ""
        how = ("schedule stretched in proportion" if suite.budget and suite.budget.rule == "stretch"
               else "extra epochs at the schedule's last stage")
        print(f"budget: {runs[0].key['budget']['steps']:,} SGD steps after the dense model{whom}; {how}")
    print(f"{'run id':12}  {'method':{width}}  {'ratio':>8}  {'lr':>8}  {'seed':>4}  status")
    for run_id, d, status in rows:
        print(f"{run_id:12}  {d['method']:{width}}  {d['ratio']:>8}  {d['lr']:>8g}  {d['seed']:>4}  {status}")
    counts = Counter(status for _, _, status in rows)
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())), *extra, *plan_lines(runs), sep="\n")
    print("dense models:", *dense, sep="\n")
    return 0


def dense_models(suite: Suite, runs: list[Run]) -> list[str]:
    """One line per dense model the runs start from: id, seed, how it is trained (a method's dense variant can change
    the recipe) and the methods that share it."""
    from bench.pipeline.setup import dense_recipe

    users: dict[str, tuple[Run, list[str]]] = {}
    for run in runs:
        labels = users.setdefault(run.dense_id, (run, []))[1]
        if run.method.label not in labels:
            labels.append(run.method.label)
    lines = []
    for dense_id, (run, labels) in users.items():
        if suite.pretrain.checkpoint:
            how = f"loaded from {suite.pretrain.checkpoint}"
        else:
            r = dense_recipe(run, run.method.build())
            steps = {"step": f" x{r.schedule.gamma:g} at {r.schedule.milestones}",
                     "piecewise": f" x{r.schedule.factors} from {[0, *r.schedule.milestones]}"}.get(r.schedule.name, "")
            how = (f"{r.epochs} epochs, lr {r.lr:g} {r.schedule.name}{steps}, weight decay {r.weight_decay:g}, "
                   f"batch {r.batch_size}")
        lines.append(f"{dense_id}  seed {run.seed}  {how}  ({', '.join(labels)})")
    return lines


def command_status(args: argparse.Namespace) -> int:
    from bench.launch import run_states

    suite, runs, _ = prepare(args)
    runs = grown_runs(suite, runs, Path(args.results))[0]  # seeds grown in rounds: the runs the rounds asked for
    rows = run_states(runs, Path(args.results))
    width = max(len(r.run.method.label) for r in rows)
    print(f"suite '{suite.name}': {len(runs)} runs")
    print(f"{'run id':12}  {'method':{width}}  {'ratio':>8}  {'lr':>8}  {'seed':>4}  {'state':11}  {'task':10}  detail")
    for r in rows:
        d = r.run.describe()
        print(f"{r.run.run_id:12}  {d['method']:{width}}  {d['ratio']:>8}  {d['lr']:>8g}  {d['seed']:>4}  "
              f"{r.state:11}  {r.task or '-':10}  {r.detail}")
    counts = Counter(r.state for r in rows)
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    failed = [r.run.run_id for r in rows if r.state == "failed"]
    if failed:  # an infrastructure fault or a bug, never the method's result: the report waits for these
        print(f"{len(failed)} failed run(s) to rerun (not results: the report leaves their cells incomplete); "
              f"`bench.py run {args.suite}` redoes them: {', '.join(failed)}")
    logs = [r for r in rows if r.log is not None and r.state in ("failed", "running")]
    for r in logs:
        print(f"log of {r.run.run_id} ({r.state}): {r.log}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from bench.report import write_reports
    from bench.report.references import resolve

    names, references = [], {}
    for entry in args.suites:
        if Path(entry).suffix in (".yaml", ".yml"):
            suite = load_suite(entry)
            names.append(suite.name)
            if suite.reference:
                references[suite.name] = resolve(suite.reference, Path(entry).resolve().parent)
        else:
            names.append(entry)
    if args.reference:
        references = {"*": resolve(args.reference)}
    written = write_reports(Path(args.results), names, query=args.query, references=references,
                            workers=args.workers, out=Path(args.out) if args.out else None)
    for page in (p for p in written if p.name == "index.html"):
        count = sum(p.is_relative_to(page.parent) for p in written)
        print(f"{page.parent.parent.name}: {count} files in {page.parent}; open {page}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from bench.launch.export import export_suite

    name = load_suite(args.suite).name if Path(args.suite).suffix in (".yaml", ".yml") else args.suite
    print(export_suite(Path(args.results), name, args.tracker, args.target))
    return 0


def command_list(args: argparse.Namespace) -> int:
    load_builtin()
    load_enabled()
    for plugin in args.plugins:
        load_plugin(plugin)
    if args.what == "methods":
        for name in METHODS:
            cls = METHODS.get(name)
            print(f"{name:14} {cls.description}  [{METHODS.origin(name)}]")
            for field_name, type_name, default, doc in describe(cls.Hparams):
                print(f"    {field_name} = {default!r}  ({type_name}){'  ' + doc if doc else ''}")
    elif args.what == "models":
        for name in MODELS:
            entry = MODELS.get(name)
            layers = ", ".join(entry.default_layers)
            print(f"{name:14} {entry.description}  [prunes: {layers}]  [{MODELS.origin(name)}]")
    else:
        from bench.data import OPTION_LOW  # the lower bounds check_dataset_options enforces

        for name in DATASETS:
            builder = DATASETS.get(name)
            doc = (builder.__doc__ or "").strip().splitlines()
            print(f"{name:14} {doc[0] if doc else ''}  [{DATASETS.origin(name)}]")
            for option, type_name, default, _ in describe_keywords(builder, skip=("root",), lows=OPTION_LOW):
                print(f"    {option} = {default!r}  ({type_name})")
    return 0


def command_selftest(args: argparse.Namespace) -> int:
    from bench.cli.selftest import selftest

    if device_problem(args.device) or args.nproc < 1:
        raise ConfigError(f"selftest: --device {args.device} --nproc {args.nproc}: use auto, cpu or cuda[:N], N >= 1.")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return selftest(main, device, args.nproc, args.quick)


def command_verify(args: argparse.Namespace) -> int:
    from bench.launch import maintenance

    name = load_suite(args.suite).name if args.suite and Path(args.suite).suffix in (".yaml", ".yml") else args.suite
    checked = maintenance.verify(Path(args.results), name)
    for f in checked.findings:
        print(f"{f.kind:9} {f.path}: {f.detail}")
    counts = Counter(f.kind for f in checked.findings)
    print(f"verify: {', '.join(f'{n} {what}' for what, n in checked.checked.items())} checked; "
          + (", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "all well") + ".")
    if checked.set_aside:
        print(f"{len(checked.set_aside)} files set aside earlier, kept for inspection (gc deletes them).")
    if not args.fix:
        return 1 if checked.findings else 0
    moved, busy = maintenance.fix(checked.findings)
    for _, targets in moved:
        print(f"moved aside: {', '.join(str(t) for t in targets) or 'nothing (already gone)'}")
    for finding in busy:
        print(f"not fixed, a live run holds {finding.lock}: {finding.path}")
    if moved:
        print(f"{len(moved)} fixed; run the suites again to make what was moved aside.")
    return 1 if busy else 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def command_gc(args: argparse.Namespace) -> int:
    from bench.launch import maintenance

    removals, unknown = maintenance.collect(Path(args.results), args.keep_dense)
    for suite in unknown:
        log.warning("suite '%s' has no manifest.json: gc knows only its started runs; run it again to record one",
                    suite)
    freed = files = 0
    for removal in removals:
        size, count = removal.size, len(removal.files)
        if not args.dry_run and not maintenance.remove(removal):
            print(f"skipped, in use (a live run holds {removal.lock}): {removal.folder or removal.files[0].parent}")
            continue
        what = f"{removal.folder}/ ({count} files)" if removal.folder else ", ".join(str(p) for p in removal.files)
        print(f"{'would delete' if args.dry_run else 'deleted'} {_megabytes(size):>9}  {what}  [{removal.why}]")
        freed, files = freed + size, files + count
    print(f"gc: {'would free' if args.dry_run else 'freed'} {_megabytes(freed)} in {files} files.")
    return 0


COMMANDS = {"run": command_run, "plan": command_plan, "status": command_status, "report": command_report,
            "export": command_export, "export-model": command_export_model, "latency": command_latency,
            "list": command_list, "verify": command_verify, "gc": command_gc, "selftest": command_selftest}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    program = Path(sys.argv[0]).name if argv is None else "bench.py"
    os.environ[environment.COMMAND_ENV] = shlex.join([program, *args.argv])  # workers and Slurm tasks inherit it
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
        with logging_redirect_tqdm() if not quiet else contextlib.nullcontext():
            return COMMANDS[args.command](args)
    except (UserError, UnknownNameError) as err:
        if int(os.environ.get("RANK", "0")) == 0:  # the ranks of a data-parallel run fail alike: say it once
            print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to resume.", file=sys.stderr)
        return 130
