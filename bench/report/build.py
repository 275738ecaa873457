"""Assemble each suite's report under ``<results>/<suite>/report/``: runs.csv, tables (md, tex, csv), figures
(png, pdf), summary.md and a self-contained index.html."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import UserError
from bench.core.store import check_writable, content_hash, write_bytes
from bench.report import costs, efficiency, plots, rounds, tables, verdict
from bench.report.load import Results, apply_filter, load_results, suite_runs
from bench.report.plots import MethodStyles, Plot
from bench.report.references import load_reference
from bench.report.render import to_csv, to_latex, to_markdown
from bench.report.tables import Table
from bench.report.webpage import Section, page

log = logging.getLogger(__name__)

TABLE_FORMATS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
OUTPUT_SUFFIXES = {".md", ".tex", ".csv", ".png", ".pdf"}
NEEDS_TWO_LRS = ("needs finished runs of two or more methods (and, for the gap and the stability, at two or more "
                 "retraining learning rates).")


@dataclass
class Item:
    """A table or figure of a suite's report, or why it is missing."""

    title: str
    table: Table | None = None
    plot: Plot | None = None
    missing: str = ""


def _call(job: tuple[Callable[..., Plot | None], tuple[Any, ...]]) -> Plot | None:
    """Run one figure job (module level, so a worker process can receive it)."""
    function, args = job
    return function(*args)


def render_plots(jobs: list[tuple[Callable[..., Plot | None], tuple[Any, ...]]], workers: int | None = None
                 ) -> list[Plot | None]:
    """Run the figure functions, in forked worker processes when there are several cores and several figures.

    Matplotlib drawing is pure Python and dominates the report's time; figures are independent, so a pool
    divides the wall time by about the number of cores. ``workers``: None for one per core (at most 8), 1 for
    serial. Only on Linux: fork is unsafe on macOS and absent on Windows, and spawned workers would spend
    seconds re-importing torch (through ``bench``), more than they save.
    """
    count = min(workers or os.cpu_count() or 1, len(jobs), 8)
    if count < 2 or not sys.platform.startswith("linux"):
        return [_call(job) for job in jobs]
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_call, jobs))


def suite_items(data: Results, styles: MethodStyles, reference: pd.DataFrame | None, workers: int | None = None
                ) -> tuple[list[Item], list[str]]:
    """Every table and figure of one suite's report, in reading order, and its headline (sentences)."""
    runs, history = data.runs, data.history
    methods = [m for m in styles.order if m in set(runs.method)]
    assessment, grown = rounds.suite_assessment(runs, methods, data.manifest)
    items = [Item("Verdict", table=costs.with_cost(verdict.verdict_table(assessment), runs))]
    if grown is not None:
        items.append(Item("Seeds per cell", table=rounds.rounds_table(grown)))
    paired = verdict.paired_table(assessment)
    items.append(Item("Paired comparisons", table=paired) if paired is not None else
                 Item("Paired comparisons", missing="needs finished runs of two or more methods at a ratio."))
    items.append(Item("Runs by status", table=tables.status_table(runs, methods)))
    for extra in (tables.problem_table(runs), tables.left_out_table(data.left_out)):
        if extra is not None:
            items.append(Item(extra.title, table=extra))
    items.append(Item("Final test accuracy", table=costs.with_cost(tables.accuracy_table(runs, methods, reference),
                                                                   runs)))
    optional = [("Learning-rate gap", tables.lr_gap_table(runs, methods, reference)),
                ("Method ranks", tables.rank_table(runs, methods)),
                ("Rank stability", tables.rank_stability_table(runs, methods))]
    items += [Item(title, table=t) if t is not None else Item(title, missing=NEEDS_TWO_LRS) for title, t in optional]
    items.append(Item("Trainability", table=tables.trainability_table(runs, methods)))
    items.append(Item("Efficiency", table=efficiency.efficiency_table(runs, methods)))
    jobs: list[tuple[str, Callable[..., Plot | None], tuple[Any, ...]]] = [
        ("Accuracy vs learning rate", plots.accuracy_vs_lr, (runs, styles)),
        ("Accuracy vs ratio", plots.accuracy_vs_ratio, (runs, styles))]
    jobs += [(f"Epoch curves, ratio {r}", plots.epoch_curves, (runs, history, r, styles))
             for r in tables.ratio_order(runs)]
    jobs.append(("JSV vs accuracy", plots.jsv_vs_accuracy, (runs, styles)))
    chosen = {(s.ratio, s.method): s.lr_selected for s in assessment.selections}
    jobs.append(("Accuracy vs training cost", plots.accuracy_vs_cost, (runs, styles, chosen)))
    if any(c.startswith("speedup_") for c in runs.columns):  # only where latency was measured
        jobs.append(("Speed-up vs FLOP reduction", efficiency.speedup_vs_flops, (runs, styles)))
    for (title, _, _), plot in zip(jobs, render_plots([(f, a) for _, f, a in jobs], workers)):
        items.append(Item(title, plot=plot) if plot is not None else
                     Item(title, missing="no finished run has the data this figure needs."))
    return items, assessment.headline


def _facts(data: Results, query: str | None, reference: pd.DataFrame | None) -> list[str]:
    """The lines under the report's title: what was run, how many runs in which state, which runs, filter and
    reference."""
    runs = data.runs
    models = ", ".join(sorted(set(runs.model.dropna().astype(str))))
    datasets = ", ".join(sorted(set(runs.dataset.dropna().astype(str))))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(runs.status.value_counts().items()))
    facts = [f"{models} on {datasets}; {len(runs)} runs ({counts}).",
             f"Methods: {', '.join(sorted(set(runs.method)))}; ratios: {', '.join(tables.ratio_order(runs))}; "
             f"retraining LRs: {', '.join(f'{lr:g}' for lr in tables.learning_rates(runs))}; "
             f"seeds: {', '.join(str(s) for s in sorted(runs.seed.dropna().unique()))}.",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} by bench.py report."]
    selected = sorted(set(runs.dense_checkpoint.dropna()) - {"final", "loaded"})
    for kind in selected:  # one per report: pretrain.best_on enters the dense ids, so configurations never mix
        on = kind.removeprefix("best_on_")
        bias = "; selected on the test set, so optimistic" if on == "test" else ""
        facts.append(f"Dense checkpoint: the epoch of dense training with the best {on} accuracy (pretrain.best_on: "
                     f"{on}{bias}), not the final one: a configuration of its own, never pooled with final-checkpoint "
                     "runs.")
    if data.basis:
        facts.append(f"Runs: {data.basis}."
                     + (f" {len(data.left_out)} other result files in the folder are listed apart (Runs left out of "
                        "this report), never averaged in." if len(data.left_out) else ""))
    if query:
        facts.append(f"Filter: {query}")
    if reference is not None:
        facts.append(f"Published numbers from {Path(reference.attrs.get('path', '?')).name}.")
    return facts


def _summary(suite: str, facts: list[str], headline: list[str], items: list[Item]) -> str:
    """summary.md: the headline, then every table in Markdown and every figure as a linked image, with notes."""
    lines = [f"# {suite}", "", *[f"{f}  " for f in facts], ""]
    if headline:
        lines += ["## What this suite found", "", *[f"- {line}" for line in headline], ""]
    for item in items:
        if item.table is not None:
            lines += [f"## {item.table.title}", "", item.table.note, "", to_markdown(item.table)]
        elif item.plot is not None:
            lines += [f"## {item.plot.title}", "", item.plot.note, "",
                      f"![{item.plot.title}](figures/{item.plot.name}.png)", ""]
        else:
            lines += [f"## {item.title}", "", f"_Not shown: {item.missing}_", ""]
    return "\n".join(lines)


def _remove_stale(folder: Path, written: set[Path]) -> None:
    """Drop tables and figures an earlier report wrote that this one did not (e.g. a ratio filtered out)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.suffix in OUTPUT_SUFFIXES and path not in written:
            log.debug("removing stale report file %s", path)
            path.unlink()


def write_suite_report(data: Results, directory: Path, suite: str, styles: MethodStyles,
                       reference: pd.DataFrame | None = None, query: str | None = None, workers: int | None = None
                       ) -> list[Path]:
    """Write one suite's report into ``directory``; returns the files written."""
    began = time.perf_counter()
    items, headline = suite_items(data, styles, reference, workers)
    written: list[Path] = []

    def save(path: Path, payload: bytes) -> None:
        """Write atomically and remember the path."""
        write_bytes(path, payload)
        written.append(path)

    save(directory / "runs.csv", data.runs.to_csv(index=False).encode())
    sections = []
    for item in items:
        if item.table is not None:
            for suffix, render in TABLE_FORMATS.items():
                save(directory / "tables" / f"{item.table.name}.{suffix}", render(item.table).encode())
            sections.append(Section(item.table.name, item.table.title, item.table.note, table=item.table,
                                    files=f"tables/{item.table.name}.md, .tex, .csv"))
        elif item.plot is not None:
            save(directory / "figures" / f"{item.plot.name}.png", item.plot.png)
            save(directory / "figures" / f"{item.plot.name}.pdf", item.plot.pdf)
            sections.append(Section(item.plot.name, item.plot.title, item.plot.note, plot=item.plot,
                                    files=f"figures/{item.plot.name}.png, .pdf"))
        else:
            sections.append(Section(plots.file_stem(item.title.lower()), item.title, f"Not shown: {item.missing}"))
    facts = _facts(data, query, reference)
    save(directory / "summary.md", _summary(suite, facts, headline, items).encode())
    save(directory / "index.html", page(f"Pruning benchmark report: {suite}", facts, sections, headline).encode())
    for folder in ("tables", "figures"):
        _remove_stale(directory / folder, set(written))
    log.info("suite '%s': report with %d files in %s (%.1f s)", suite, len(written), directory,
             time.perf_counter() - began)
    return written


def recorded_reference(suite_dir: Path) -> str | None:
    """The reference named by the suite as it was last run (``bench.py run`` keeps it in suite.json)."""
    record = suite_dir / "suite.json"
    if not record.exists():
        return None
    try:
        return json.loads(record.read_text()).get("reference")
    except (OSError, ValueError):
        log.warning("%s is not readable JSON; ignoring the reference it may name", record)
        return None


def write_reports(results: Path, suites: list[str] | None = None, *, query: str | None = None,
                  references: Mapping[str, str | Path] | None = None, workers: int | None = None,
                  out: Path | None = None) -> list[Path]:
    """Write each suite's report under ``results/<suite>/report/`` (or ``out/<suite>/report/``: a reader who may not
    write the results folder); returns the files written.

    Each suite's report covers the suite as it was last run (its manifest); other runs in its folder are listed
    apart. ``query`` (a pandas expression on runs.csv's columns) narrows the runs and writes the report beside the
    full one, in ``report/filtered/<name>/`` (see filtered_dir); ``references`` maps a suite name to a shipped
    reference name or a CSV path whose published numbers are printed beside ours ("*": every suite); ``workers`` is
    the number of processes drawing figures (None: one per core, 1: none).
    """
    loaded = load_results(results, suites)
    if loaded.runs.empty:
        raise UserError(f"no results under '{results}'"
                        + (f" for suite(s) {', '.join(suites)}" if suites else "") + ". Run a suite first.")
    parts = {suite: suite_runs(loaded, suite, results / suite) for suite in sorted(set(loaded.runs.suite))}
    stamps = {suite: results_stamp(part) for suite, part in parts.items()}
    if query:
        parts = {suite: apply_filter(part, query) for suite, part in parts.items()}
        total = sum(len(p.runs) for p in parts.values())
        if total == 0:
            raise UserError(f"--filter {query!r} matched none of the {len(loaded.runs)} runs under '{results}'.")
        parts = {suite: part for suite, part in parts.items() if len(part.runs)}
    target = results if out is None else out
    for suite in parts:
        check_writable(target / suite / "report", "pass --out DIR to write the report elsewhere" if out is None
                       else "pass another --out DIR")
    styles = MethodStyles.for_methods(sorted({m for p in parts.values() for m in p.runs.method}))
    references = dict(references or {})
    written: list[Path] = []
    for suite, part in parts.items():
        if part.runs.empty:  # every result in the folder belongs to another configuration
            log.warning("suite '%s': none of its %d result files is a run of the suite as last run; nothing reported",
                        suite, len(part.left_out))
            continue
        spec = references.get(suite, references.get("*")) or recorded_reference(results / suite)
        reference = load_reference(spec) if spec is not None else None
        directory = filtered_dir(target / suite, query) if query else target / suite / "report"
        if query:
            write_bytes(directory / "filter.txt", f"{query}\n{FROM_RESULTS}{stamps[suite]}\n".encode())
        else:
            remove_stale_filtered(directory / "filtered", stamps[suite])
        written += write_suite_report(part, directory, suite, styles, reference, query, workers)
    return written


FROM_RESULTS = "from results: "  # filter.txt's second line: the stamp of the suite's runs it was filtered from


def results_stamp(part: Results) -> str:
    """A digest of which runs a suite's report covers and how far each got: it changes whenever a run is added,
    finishes or is redone, so a filtered report made from other results can be told apart."""
    runs = part.runs.sort_values("run_id")
    columns = runs[["run_id", "status", "finished"]]
    return content_hash([[str(value) for value in row] for row in columns.itertuples(index=False)])


def remove_stale_filtered(folder: Path, stamp: str) -> None:
    """Delete the filtered reports under ``folder`` that were made from other results than the full report now
    being written (they would contradict it); ``report --filter`` makes them again."""
    if not folder.is_dir():
        return
    for report in sorted(p for p in folder.iterdir() if p.is_dir()):
        record = report / "filter.txt"
        try:
            lines = record.read_text().splitlines() if record.exists() else []
        except PermissionError:
            log.warning("%s is unreadable (permission); leaving the filtered report %s as it is", record, report)
            continue
        if len(lines) >= 2 and lines[1] == FROM_RESULTS + stamp:
            continue
        log.info("removing the filtered report %s: it was made from earlier results of the suite (run report "
                 "--filter %r again)", report, lines[0] if lines else "?")
        shutil.rmtree(report)


def filtered_dir(suite_dir: Path, query: str) -> Path:
    """Where a filtered report goes: beside the full report, named after the query (and a hash, so two queries
    that read alike never share a folder)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", query).strip("_")[:48] or "filter"
    return suite_dir / "report" / "filtered" / f"{slug}-{content_hash(query, 6)}"
