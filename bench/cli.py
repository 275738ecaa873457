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

from bench import distributed, environment
from bench.config import Suite, device_problem, load_suite
from bench.errors import ConfigError, UserError
from bench.grid import Run
from bench.plugins import load_builtin, load_enabled, load_plugin
from bench.registry import DATASETS, METHODS, MODELS, UnknownNameError
from bench.schema import describe, describe_keywords
from bench.session import load_runs
from bench.trackers import require as require_tracker

if TYPE_CHECKING:
    from bench.launch import Invocation

log = logging.getLogger("bench")


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command takes."""
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bars")


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="a YAML suite file, e.g. suites/quickstart.yaml")
    parser.add_argument("--results", default="results", help="results directory (default: results/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a suite key with a YAML value, e.g. --set retrain.lr=[0.1,0.01]")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_MODULE_OR_ENTRY_POINT",
                        help="import outside code that registers methods, models or datasets: a .py file, a module, "
                        "or an installed package's entry point (group pruning_bench.plugins; $BENCH_PLUGINS=all "
                        "enables every installed one)")
    parser.add_argument("--data-root", help="where datasets live (else the suite's data_root, else "
                        "$BENCH_DATA_ROOT); which files are there can decide the data, and so the run ids")


SLURM_FLAGS = (  # (flag, type, help); each sets slurm.<flag without dashes> in the suite
    ("--partition", str, "sbatch --partition"), ("--account", str, "sbatch --account"), ("--qos", str, "sbatch --qos"),
    ("--gpus-per-task", int, "GPUs per task"), ("--cpus-per-task", int, "CPUs per task"),
    ("--tasks-per-run", int, "processes per run, data-parallel (DDP)"),
    ("--mem-gb", float, "memory per run in GB"), ("--timeout-min", int, "time limit per task in minutes"),
    ("--array-parallelism", int, "tasks running at once"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description="Structured-pruning benchmark harness: "
                                     "prune-then-retrain sweeps over methods, ratios, retraining LRs and seeds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every unfinished run of a suite", description="Run a suite: every "
                         "method × ratio × retraining LR × seed. Finished runs are skipped, interrupted ones resume.")
    _add_suite_arguments(run)
    run.add_argument("--device", help="override the suite's device (auto, cpu, cuda, cuda:N)")
    run.add_argument("--executor", choices=["inline", "local", "slurm"], default="inline",
                     help="inline: one run after another in this process (default); local: a pool of --workers "
                     "processes; slurm: submit one job array (a task per run) and return")
    run.add_argument("--workers", type=int, metavar="N",
                     help="local: worker processes (default: the number of visible GPUs, else 1)")
    run.add_argument("--nproc", type=int, metavar="N", default=1,
                     help="inline: train each run data-parallel (DDP) in N processes on this machine, one GPU each "
                     "on CUDA, gloo on CPU (like torchrun --nproc-per-node N)")
    run.add_argument("--wait", action="store_true", help="slurm: wait until the jobs end and summarise their runs")
    slurm = run.add_argument_group("Slurm resources", "override the suite's slurm: section (same as "
                                   "--set slurm.KEY=VALUE); see docs/cluster.md")
    for flag, kind, help_text in SLURM_FLAGS:
        key = flag[2:].replace("-", "_")
        slurm.add_argument(flag, type=kind, dest=f"slurm_{key}", metavar=key.upper(), help=help_text)

    plan = sub.add_parser("plan", help="list the runs a suite expands to and which are done",
                          description="List the runs of a suite and their status, without running anything.")
    _add_suite_arguments(plan)

    status = sub.add_parser("status", help="show each run as pending, running, interrupted, ok, failed, diverged "
                            "or corrupt", description="Each run's state from its result file and lock (a started "
                            "run whose process is gone is interrupted; an unreadable result.json is corrupt, with "
                            "the parse error) and, for runs submitted to Slurm, from the scheduler "
                            "(sacct), with counts and the logs of failed runs.")
    _add_suite_arguments(status)

    report = sub.add_parser("report", help="write tables, figures and an HTML page of the results",
                            description="Collect every result.json under the results directory and write, per "
                            "suite, <results>/<suite>/report/: runs.csv, tables (md, tex, csv), figures (png, pdf), "
                            "summary.md and a self-contained index.html.")
    report.add_argument("--results", default="results", help="results directory (default: results/)")
    report.add_argument("--suite", dest="suites", action="append", default=[], metavar="NAME_OR_FILE",
                        help="only this suite (repeatable); a suite file (.yaml) also supplies its 'reference'")
    report.add_argument("--filter", dest="query", metavar="EXPR", help="keep the runs where this pandas query on "
                        "runs.csv's columns holds, e.g. \"method in ['l1','tpp'] and ratio == 0.9\"; the report goes "
                        "beside the full one, to <suite>/report/filtered/<name>/")
    report.add_argument("--reference", metavar="NAME_OR_CSV", help="published numbers to print beside ours: a "
                        "shipped name (tpp_table1) or a CSV file; overrides the suites' 'reference' keys")
    report.add_argument("--workers", type=int, metavar="N", help="processes drawing figures (default: one per core)")

    selftest = sub.add_parser("selftest", help="check that this machine runs the harness: every method, the speed "
                              "options, memory, latency, JSV, data parallelism, the pool",
                              description="Tiny suites on synthetic data that prove this machine ready; one PASS/FAIL "
                              "line per check, exit status 0 only when all pass. Run it first on a new (GPU) node.")
    selftest.add_argument("--device", default="auto", help="auto (default: cuda when a GPU is visible), cpu or cuda")
    selftest.add_argument("--nproc", type=int, default=1, metavar="N",
                          help="also run a data-parallel run in N processes against one (N >= 2)")
    selftest.add_argument("--quick", action="store_true",
                          help="fewer methods, torch.compile on the MLP only (what CI runs on CPU)")
    export = sub.add_parser("export", help="write a suite's runs to TensorBoard or MLflow",
                            description="Write the runs of a suite as last run (its manifest.json) to a tracker: one "
                            "tracker run per run, named by its run id, with the configuration as parameters, the "
                            "per-epoch history as step metrics and the final metrics; unfinished runs with their "
                            "status. Exporting again rewrites them. Needs the tracker's extra: pip install -e "
                            "'.[tensorboard]' or '.[mlflow]'.")
    export.add_argument("suite", help="a suite name (its folder under --results) or its YAML file")
    export.add_argument("--to", dest="tracker", choices=["tensorboard", "mlflow"], required=True)
    export.add_argument("target", metavar="DIR_OR_URI", help="tensorboard: a log directory (runs go to "
                        "DIR/<suite>/<run id>); mlflow: a tracking URI, or a directory for a local file store")
    export.add_argument("--results", default="results", help="results directory (default: results/)")

    take = sub.add_parser("export-model", help="write a finished run's pruned model as a file that loads without "
                          "this harness", description="Write a finished run's pruned model: pt2 (a torch.export "
                          "program: torch.export.load(FILE).module()), onnx (the dynamo exporter; runs in ONNX "
                          "Runtime; needs the onnx extra) or state (the slim state dict), each with a dynamic batch "
                          "dimension, and FILE.json beside it (run id, method, ratio, accuracy, channels kept, "
                          "sha256). Masked runs export their masked model and say so.")
    take.add_argument("run", metavar="RUN_DIR_OR_ID", help="a run's folder, or its id (unique prefix) under --results")
    take.add_argument("--format", dest="fmt", default="pt2",
                      help="pt2 (default), onnx or state")
    take.add_argument("--out", metavar="FILE", help="where to write (default: <run id>.pt2/.onnx/.pt here)")
    take.add_argument("--results", default="results", help="results directory (default: results/)")

    sweep = sub.add_parser("latency", help="time finished runs' dense and pruned models per batch size and backend",
                           description="Dense and pruned inference latency (median and IQR over timed blocks, "
                           "torch.utils.benchmark.Timer) and the speed-up, per batch size and backend, for a run or "
                           "every finished run of a suite, without retraining. Prints the table and writes it as CSV "
                           "(default <results>/<suite>/latency_sweep.csv).")
    sweep.add_argument("target", metavar="RUN_OR_SUITE", help="a run's folder or id, or a suite (YAML file or name)")
    sweep.add_argument("--batch-sizes", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    sweep.add_argument("--backends", default="eager", help="comma-separated: eager, onnxruntime (the onnx extra); "
                       "default eager")
    sweep.add_argument("--repeats", type=int, default=20, help="timed blocks at least (default 20)")
    sweep.add_argument("--min-time-s", type=float, default=0.2, help="seconds of timing per model, at least")
    sweep.add_argument("--out", metavar="FILE", help="CSV to write (default <results>/<suite>/latency_sweep.csv)")
    sweep.add_argument("--results", default="results", help="results directory (default: results/)")

    listing = sub.add_parser("list", help="list registered methods, models or datasets",
                             description="List registered methods (with hyperparameters), models or datasets (with "
                             "options).")
    listing.add_argument("what", choices=["methods", "models", "datasets"])
    listing.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_MODULE_OR_ENTRY_POINT",
                         help="import outside code first: a .py file, a module or an installed plugin's entry point")
    verify = sub.add_parser("verify", help="check every result, checkpoint and cached model of a results folder",
                            description="Read every result.json, checkpoint and cached model (their sha256 checked) "
                            "and check each against what refers to it: a finished run's model.pt keeps the channels "
                            "its result records, a pruned model belongs to its prune id and to the dense model now "
                            "cached. Prints what is corrupt, orphaned (nothing refers to it; looked for only without "
                            "SUITE) or stale; exit 0 only when all is well.")
    verify.add_argument("suite", nargs="?", help="only this suite (its name, or its YAML file) and the cached models "
                        "it refers to")
    verify.add_argument("--results", default="results", help="results directory (default: results/)")
    verify.add_argument("--fix", action="store_true", help="move what is wrong aside (<file>.<kind>-<time>, kept for "
                        "inspection), so that the next run makes it again")

    gc = sub.add_parser("gc", help="delete cached models and checkpoints no unfinished run needs",
                        description="Delete the cached dense and pruned models that no unfinished run of any suite in "
                        "the folder needs, leftover checkpoints (a finished run's, unless its suite keeps them; a "
                        "run's no longer in its suite), files set aside by verify --fix or a self-healed cache, and "
                        "stale temporaries; print the space freed. Never a result.json or a finished run's model.pt, "
                        "never anything a live run holds a lock on.")
    gc.add_argument("--results", default="results", help="results directory (default: results/)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    gc.add_argument("--keep-dense", action="store_true", help="keep every cached dense model (the expensive ones)")
    for command in sub.choices.values():
        _add_common_arguments(command)
    return parser


def prepare(args: argparse.Namespace) -> tuple[Suite, list[Run], Path]:
    """Load plugins and the suite of a parsed command line, validate it and expand it into runs (nothing is written)."""
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
    for kind in suite.log.targets(suite_dir):  # live logging (suite key log) needs its tracker's package
        try:
            require_tracker(kind)
        except UserError as err:
            raise ConfigError(f"log.{kind}: {err}", str(args.suite)) from None
    if args.nproc > 1 and not distributed.requested():  # the suite is valid: start the group, each runs this command
        distributed.check_gpus_for(args.nproc, args.device or suite.device)
        return distributed.spawn(args.nproc, main, args.argv)
    try:
        return _run_suite(args, suite, runs, suite_dir)
    finally:
        distributed.shutdown()


def _run_suite(args: argparse.Namespace, suite: Suite, runs: list[Run], suite_dir: Path) -> int:
    from bench.launch import Invocation, run_local
    from bench.progress import Progress
    from bench.runner import execute, validate_runs
    from bench.store import RunDir, check_writable

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
            for run in todo:
                d = run.describe()
                bar.set_postfix_str(f"{d['method']} r={d['ratio']} lr={d['lr']:g} s={d['seed']}")
                statuses[execute(run, ws)] += 1
                bar.update()
    done = len(runs) - len(todo)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "nothing to do"
    level = logging.WARNING if statuses["failed"] else logging.INFO  # success is news, not a warning
    log.log(level, "suite '%s': %s%s. Results in %s", suite.name, summary,
            f" ({done} already finished)" if done else "", results / suite.name)
    return 1 if statuses["failed"] else 0


def record_suite(results: Path, suite: Suite, suite_dir: Path, runs: list[Run]) -> None:
    """Keep the suite as run beside its results: ``suite.json`` (so ``report`` finds e.g. its reference) and
    ``manifest.json`` (its runs, so reports never pool runs of another configuration)."""
    from bench.manifest import Manifest, write_manifest
    from bench.schema import to_plain
    from bench.store import write_json

    write_manifest(results / suite.name, Manifest.of(suite.name, runs))
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
    from bench.store import RunDir

    suite, runs, _ = prepare(args)
    dense = dense_models(suite, runs)  # before any output: a method may refuse the dense recipe
    results = Path(args.results)
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
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print("dense models:", *dense, sep="\n")
    return 0


def dense_models(suite: Suite, runs: list[Run]) -> list[str]:
    """One line per dense model the runs start from: id, seed, how it is trained (a method's dense variant can change
    the recipe) and the methods that share it."""
    from bench.runner import dense_recipe

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
                            workers=args.workers)
    for page in (p for p in written if p.name == "index.html"):
        count = sum(p.is_relative_to(page.parent) for p in written)
        print(f"{page.parent.parent.name}: {count} files in {page.parent}; open {page}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from bench.export import export_suite

    name = load_suite(args.suite).name if Path(args.suite).suffix in (".yaml", ".yml") else args.suite
    print(export_suite(Path(args.results), name, args.tracker, args.target))
    return 0


def command_export_model(args: argparse.Namespace) -> int:
    from bench.deploy import export_model

    path, sidecar = export_model(args.run, args.fmt, args.out, args.results)
    print(f"wrote {path} and {sidecar.name}")
    return 0


def _integers(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} '{text}': give comma-separated whole numbers, e.g. 1,8,64.") from None


def command_latency(args: argparse.Namespace) -> int:
    from bench.deploy import latency_sweep, sweep_table

    if args.repeats < 1 or not args.min_time_s > 0:
        raise UserError(f"--repeats {args.repeats} --min-time-s {args.min_time_s}: need repeats >= 1 and a "
                        "positive time.")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows, path = latency_sweep(args.target, Path(args.results), _integers(args.batch_sizes, "--batch-sizes"),
                               backends, args.repeats, args.min_time_s, Path(args.out) if args.out else None)
    print(sweep_table(rows))
    print(f"{torch.get_num_threads()} threads; written to {path}")
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
    from bench.selftest import selftest

    if device_problem(args.device) or args.nproc < 1:
        raise ConfigError(f"selftest: --device {args.device} --nproc {args.nproc}: use auto, cpu or cuda[:N], N >= 1.")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return selftest(device, args.nproc, args.quick)


def command_verify(args: argparse.Namespace) -> int:
    from bench import maintenance

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
    from bench import maintenance

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
            "list": command_list, "verify": command_verify, "gc": command_gc,
            "selftest": command_selftest}


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
