"""The command line: ``run``, ``plan``, ``report`` and ``list``. Errors a user can fix exit with status 2."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.config import Suite, load_suite
from bench.errors import ConfigError, UserError
from bench.grid import Run, expand, resolve_path
from bench.plugins import load_builtin, load_plugin
from bench.registry import DATASETS, METHODS, MODELS, UnknownNameError
from bench.schema import describe

log = logging.getLogger("bench")


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="a YAML suite file, e.g. suites/quickstart.yaml")
    parser.add_argument("--results", default="results", help="results directory (default: results/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a suite key with a YAML value, e.g. --set retrain.lr=[0.1,0.01]")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import outside code that registers methods, models or datasets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description="Structured-pruning benchmark harness: "
                                     "prune-then-retrain sweeps over methods, ratios, retraining LRs and seeds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every unfinished run of a suite", description="Run a suite: every "
                         "method × ratio × retraining LR × seed. Finished runs are skipped, interrupted ones resume.")
    _add_suite_arguments(run)
    run.add_argument("--data-root", help="where datasets live (else the suite's data_root, else $BENCH_DATA_ROOT)")
    run.add_argument("--device", help="override the suite's device (auto, cpu, cuda, cuda:N)")
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")

    plan = sub.add_parser("plan", help="list the runs a suite expands to and which are done",
                          description="List the runs of a suite and their status, without running anything.")
    _add_suite_arguments(plan)

    report = sub.add_parser("report", help="write tables of the results", description="Collect every "
                            "result.json under the results directory into runs.csv and summary tables.")
    report.add_argument("--results", default="results", help="results directory (default: results/)")
    report.add_argument("--suite", dest="suites", action="append", default=[], help="only this suite (repeatable)")

    listing = sub.add_parser("list", help="list registered methods, models or datasets",
                             description="List registered methods (with hyperparameters), models or datasets.")
    listing.add_argument("what", choices=["methods", "models", "datasets"])
    listing.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_OR_MODULE")
    return parser


def prepare(args: argparse.Namespace) -> tuple[Suite, list[Run], Path]:
    """Load plugins and the suite, validate it and expand it into runs (nothing is written)."""
    load_builtin()
    for plugin in args.plugins:
        load_plugin(plugin)
    suite_path = Path(args.suite)
    suite = load_suite(suite_path, args.overrides)
    suite_dir = suite_path.resolve().parent
    for plugin in suite.plugins:
        load_plugin(plugin, suite_dir)
    try:
        runs = expand(suite, suite_dir)
    except ConfigError as err:
        raise ConfigError(err.problems, str(suite_path)) from None
    return suite, runs, suite_dir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available here. Use --device cpu.")
    return torch.device(name)


def command_run(args: argparse.Namespace) -> int:
    from bench.data import build_dataset, resolve_data_root
    from bench.progress import Progress
    from bench.runner import Workspace, execute, validate_runs
    from bench.store import RunDir, check_writable

    suite, runs, suite_dir = prepare(args)
    device = resolve_device(args.device or suite.device)
    suite_root = str(resolve_path(suite.data_root, suite_dir)) if suite.data_root else None
    data = build_dataset(suite.dataset_name, suite.dataset_options, resolve_data_root(args.data_root, suite_root),
                         MODELS.get(suite.model).image_size)
    validate_runs(runs, data.info, suite_dir)
    results = Path(args.results)
    check_writable(results)
    todo = [r for r in runs if RunDir(results, suite.name, r.run_id).status() not in ("ok", "diverged")]
    log.info("suite '%s': %d runs, %d to do, on %s", suite.name, len(runs), len(todo), device)
    progress = Progress(quiet=args.quiet)
    ws = Workspace(results=results, data=data, device=device, suite_dir=suite_dir, progress=progress)
    statuses: Counter[str] = Counter()
    with progress.suite(len(todo), suite.name) as bar:
        for run in todo:
            d = run.describe()
            bar.set_postfix_str(f"{d['method']} r={d['ratio']} lr={d['lr']:g} s={d['seed']}")
            statuses[execute(run, ws)] += 1
            bar.update()
    done = len(runs) - len(todo)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "nothing to do"
    log.warning("suite '%s': %s%s. Results in %s", suite.name, summary,
                f" ({done} already finished)" if done else "", results / suite.name)
    return 1 if statuses["failed"] else 0


def command_plan(args: argparse.Namespace) -> int:
    from bench.store import RunDir

    suite, runs, _ = prepare(args)
    results = Path(args.results)
    rows = [(r.run_id, r.describe(), RunDir(results, suite.name, r.run_id).status()) for r in runs]
    width = max(len(d["method"]) for _, d, _ in rows)
    print(f"suite '{suite.name}': {suite.model} on {suite.dataset_name}, {len(runs)} runs")
    print(f"{'run id':12}  {'method':{width}}  {'ratio':>8}  {'lr':>8}  {'seed':>4}  status")
    for run_id, d, status in rows:
        print(f"{run_id:12}  {d['method']:{width}}  {d['ratio']:>8}  {d['lr']:>8g}  {d['seed']:>4}  {status}")
    counts = Counter(status for _, _, status in rows)
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def command_report(args: argparse.Namespace) -> int:
    from bench.report import write_reports

    written = write_reports(Path(args.results), args.suites)
    for path in written:
        print(path)
    return 0


def command_list(args: argparse.Namespace) -> int:
    load_builtin()
    for plugin in args.plugins:
        load_plugin(plugin)
    if args.what == "methods":
        for name in METHODS:
            cls = METHODS.get(name)
            print(f"{name:14} {cls.description}")
            for field_name, type_name, default, doc in describe(cls.Hparams):
                print(f"    {field_name} = {default!r}  ({type_name}){'  ' + doc if doc else ''}")
    elif args.what == "models":
        for name in MODELS:
            entry = MODELS.get(name)
            print(f"{name:14} {entry.description}  [prunes: {', '.join(entry.default_layers)}]")
    else:
        for name in DATASETS:
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:14} {doc[0] if doc else ''}")
    return 0


COMMANDS = {"run": command_run, "plan": command_plan, "report": command_report, "list": command_list}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
        with logging_redirect_tqdm() if not quiet else contextlib.nullcontext():
            return COMMANDS[args.command](args)
    except (UserError, UnknownNameError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to resume.", file=sys.stderr)
        return 130
