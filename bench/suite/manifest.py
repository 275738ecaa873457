"""A suite's manifest: which runs make up the suite as it was last run, so reports never pool other configurations.

``bench.py run`` writes ``<results>/<suite>/manifest.json`` before any work: the run, prune and dense ids of the
expanded suite and its *fixed configuration* (everything in a run key but the swept coordinates). Report, status
and later tools read it and need neither plugins nor data to know a suite's runs. Runs left in the folder by
another configuration (e.g. the same suite run with ``--set retrain.epochs=2``) are told apart by comparing their
recorded configuration with the manifest's.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.errors import CheckpointError
from bench.core.store import read_json, write_json

if TYPE_CHECKING:
    from bench.suite.grid import Run

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# The paths of a run key that vary within one suite (its grid axes, and the dense variants that come with a
# method); everything else is the suite's fixed configuration.
SWEPT_PATHS = (("prune", "ratio"), ("retrain", "lr"), ("dense", "seed"), ("dense", "variants"), ("method",))


def fixed_config(key: dict[str, Any]) -> dict[str, Any]:
    """A run key without its swept coordinates: the same for every run of one suite configuration."""
    fixed = copy.deepcopy(key)
    for path in SWEPT_PATHS:
        node = fixed
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return fixed


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"retrain.epochs": 6, ...}`` (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def difference(config: dict[str, Any], reference: dict[str, Any], most: int = 3) -> str:
    """How ``config`` differs from ``reference``, in words: ``retrain.epochs 2 (suite: 6); ...``."""
    ours, theirs = flatten(config), flatten(reference)
    keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k, "—") != theirs.get(k, "—"))
    parts = [f"{k.removeprefix('dense.')} {_short(ours.get(k, '—'))} (suite: {_short(theirs.get(k, '—'))})"
             for k in keys[:most]]
    return "; ".join(parts) + (f"; and {len(keys) - most} more" if len(keys) > most else "")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Manifest:
    """The suite as last run: its runs (id -> coordinates and cache ids) and its fixed configuration."""

    suite: str
    runs: dict[str, dict[str, Any]]
    config: dict[str, Any]
    seeds: list[int]
    written: str = ""
    design: dict[str, Any] | None = None  # grown in rounds: its seeds plan {start, max, step, futility, spending}
    cells: dict[str, list[int]] | None = None  # grown in rounds: "ratio method" -> the seeds that cell has now

    def plain(self) -> dict[str, Any]:
        plain = {"format": MANIFEST_FORMAT, "suite": self.suite, "written": self.written, "seeds": self.seeds,
                 "config": self.config, "runs": self.runs}
        return plain | ({"design": self.design, "cells": self.cells} if self.design else {})

    @classmethod
    def of(cls, suite: str, runs: list[Run], design: dict[str, Any] | None = None) -> Manifest:
        """The manifest of an expanded suite (of a suite grown in rounds: the runs its cells have so far)."""
        entries = {r.run_id: {**{k: v for k, v in r.describe().items() if k not in ("suite", "run_id")},
                              "prune_id": r.prune_id, "dense_id": r.dense_id} for r in runs}
        config = fixed_config(runs[0].key) if runs else {}
        seeds = sorted({r.seed for r in runs})
        cells: dict[str, list[int]] | None = None
        if design:
            cells = {}
            for entry in entries.values():
                cell = cells.setdefault(f"{entry['ratio']} {entry['method']}", [])
                if entry["seed"] not in cell:
                    cell.append(entry["seed"])
            cells = {key: sorted(value) for key, value in cells.items()}
        return cls(suite, entries, config, seeds, time.strftime("%Y-%m-%dT%H:%M:%S%z"), design, cells)


def write_manifest(suite_dir: Path, manifest: Manifest) -> None:
    """Record ``manifest`` atomically as ``<suite_dir>/manifest.json`` (the last run of the suite wins)."""
    write_json(suite_dir / MANIFEST, manifest.plain())


def read_manifest(suite_dir: Path) -> Manifest | None:
    """The suite's manifest, or None when there is none (results from before manifests) or it is unreadable."""
    path = suite_dir / MANIFEST
    if not path.exists():
        return None
    try:
        data = read_json(path)
        design = data.get("design")
        design = {k: v if isinstance(v, str) else float(v) for k, v in design.items()} if design else None
        return Manifest(str(data["suite"]), dict(data["runs"]), dict(data["config"]), list(data["seeds"]),
                        str(data.get("written", "")), design,
                        dict(data.get("cells") or {}) or None)
    except (CheckpointError, KeyError, TypeError, ValueError) as err:
        log.warning("%s is unreadable (%s); run the suite again to rewrite it", path, err)
        return None
