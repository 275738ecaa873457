"""The argument parser of ``bench.py``: every command, its flags and their help."""
from __future__ import annotations

import argparse


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


LARGE_PLAN = 10_000  # runs in one suite beyond which `run` asks for --yes: more is likely a typo than a plan

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
    run.add_argument("--yes", action="store_true", help=f"run a suite of more than {LARGE_PLAN:,} runs (without it, "
                     "such a plan is refused, in case a list of seeds or ratios is longer than meant)")
    run.add_argument("--until-decided", action="store_true", help="a suite with seeds: {start, max, step}: run its "
                     "first seeds, then add seeds in rounds only to the cells whose comparisons are neither "
                     "decided nor futile, up to max (on Slurm each round is one job array, waited for)")
    run.add_argument("--wait", action="store_true", help="slurm: wait until the jobs end and summarise their runs")
    _add_fuse_argument(run)
    slurm = run.add_argument_group("Slurm resources", "override the suite's slurm: section (same as "
                                   "--set slurm.KEY=VALUE); see docs/cluster.md")
    for flag, kind, help_text in SLURM_FLAGS:
        key = flag[2:].replace("-", "_")
        slurm.add_argument(flag, type=kind, dest=f"slurm_{key}", metavar=key.upper(), help=help_text)

    plan = sub.add_parser("plan", help="list the runs a suite expands to and which are done",
                          description="List the runs of a suite and their status, without running anything.")
    _add_suite_arguments(plan)
    _add_fuse_argument(plan)

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
    report.add_argument("--out", metavar="DIR", help="write the reports to DIR/<suite>/report/ instead of into the "
                        "results directory (e.g. a colleague's results folder you may read but not write)")

    selftest = sub.add_parser("selftest", help="check that this machine runs the harness: every method, the speed "
                              "options, memory, latency, JSV, data parallelism, the pool",
                              description="Tiny suites on synthetic data that prove this machine ready; one PASS/FAIL "
                              "line per check, exit status 0 only when all pass. Run it first on a new (GPU) node.")
    selftest.add_argument("--device", default="auto", help="auto (default: cuda when a GPU is visible), cpu or cuda")
    selftest.add_argument("--nproc", type=int, default=1, metavar="N",
                          help="also run a data-parallel run in N processes against one (N >= 2)")
    selftest.add_argument("--quick", action="store_true",
                          help="fewer methods, torch.compile on the MLP only (what CI runs on CPU); like the full "
                          "selftest, it skips the data-parallel check unless --nproc 2 or more is given")
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


def _add_fuse_argument(command: argparse.ArgumentParser) -> None:
    """``--fuse``: the same as ``--set execution.fuse=MODE`` (docs/fusion.md)."""
    command.add_argument("--fuse", choices=["auto", "on", "off"],
                         help="retrain the runs that differ only in LR or seed as one fused model: auto (the suite's "
                         "default: where measured to pay), on, off; same as --set execution.fuse=MODE")
