"""Keep a results folder healthy: ``verify`` reads every result, checkpoint and cached model and checks each against
what refers to it; ``gc`` deletes the cached models and checkpoints that no unfinished run still needs.

Which runs belong to which suite comes from the suites' manifests (``bench.manifest``), so neither command needs the
suite files, plugins or data. Both leave alone what a live process holds a lock on.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import CheckpointError, UserError
from bench.core.store import (
    DENSE_DIR,
    PRUNED_DIR,
    CorruptFileError,
    DenseDir,
    PrunedDir,
    RunDir,
    UnreadableFileError,
    content_hash,
    digest_path,
    file_lock,
    file_sha256,
    is_set_aside,
    load_checkpoint,
    move_aside,
    read_json,
    remove_checkpoint,
)
from bench.suite.manifest import MANIFEST, Manifest, read_manifest

log = logging.getLogger(__name__)

FINISHED = ("ok", "diverged")  # as bench.runner.FINISHED (not imported: it would pull in the training stack)


@dataclass(frozen=True)
class Finding:
    """Something wrong with one file: ``corrupt`` (its bytes are wrong), ``unreadable`` (this user may not read it:
    never fixed), ``orphaned`` (nothing refers to it) or ``stale`` (it does not match what refers to it). ``fix``: the
    files to move aside so that the next run makes them again."""

    kind: str
    path: Path
    detail: str
    lock: Path
    fix: tuple[Path, ...] = ()


@dataclass
class Folder:
    """A results folder's suites (directory -> manifest, None for results from before manifests) and runs."""

    results: Path
    suites: dict[Path, Manifest | None]

    @classmethod
    def of(cls, results: Path, suite: str | None = None) -> Folder:
        if not results.is_dir():
            raise UserError(f"results directory '{results}' not found; pass --results DIR.")
        dirs = [d for d in sorted(results.iterdir()) if d.is_dir() and d.name not in (DENSE_DIR, PRUNED_DIR)
                and ((d / "runs").is_dir() or (d / MANIFEST).exists())]
        if suite is not None:
            dirs = [d for d in dirs if d.name == suite]
            if not dirs:
                raise UserError(f"no suite '{suite}' under '{results}' (a folder with runs/ or {MANIFEST}); run it "
                                "first, or name one of its suites.")
        return cls(results, {d: read_manifest(d) for d in dirs})

    def run_dirs(self) -> Iterator[tuple[Path, RunDir]]:
        """Every run folder of the suites, with its suite's folder."""
        for suite_dir in self.suites:
            runs = suite_dir / "runs"
            for path in sorted(runs.iterdir()) if runs.is_dir() else []:
                if path.is_dir():
                    yield suite_dir, RunDir(self.results, suite_dir.name, path.name)


def result_ids(rd: RunDir) -> tuple[str | None, str | None, str]:
    """A run's prune id, dense id and status as its result.json records them (Nones and 'pending'/'corrupt')."""
    try:
        data = read_json(rd.result)
    except UnreadableFileError:
        return None, None, "unreadable"
    except CorruptFileError:
        return None, None, "corrupt"
    except CheckpointError:
        return None, None, "pending"
    config = data.get("config")
    dense = config.get("dense") if isinstance(config, dict) else None
    return data.get("prune_id"), content_hash(dense) if isinstance(dense, dict) else None, str(data.get("status"))


@dataclass
class References:
    """The cache ids the runs of a folder refer to (``prune``, ``dense``), and those unfinished runs still need."""

    prune: set[str] = field(default_factory=set)
    dense: set[str] = field(default_factory=set)
    needed_prune: set[str] = field(default_factory=set)
    needed_dense: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)  # suites without a manifest: their pending runs are unknown

    @classmethod
    def of(cls, folder: Folder) -> References:
        refs = cls()
        for suite_dir, manifest in folder.suites.items():
            if manifest is None:
                refs.unknown.append(suite_dir.name)
                continue
            for run_id, entry in manifest.runs.items():
                refs.prune.add(entry["prune_id"])
                refs.dense.add(entry["dense_id"])
                if RunDir(folder.results, suite_dir.name, run_id).status() not in FINISHED:
                    refs.needed_prune.add(entry["prune_id"])
                    refs.needed_dense.add(entry["dense_id"])
        for suite_dir, rd in folder.run_dirs():
            prune_id, dense_id, status = result_ids(rd)
            manifest = folder.suites[suite_dir]
            live = status not in FINISHED and (manifest is None or rd.path.name in manifest.runs or held(rd.lock))
            for ids, needed, value in ((refs.prune, refs.needed_prune, prune_id),
                                       (refs.dense, refs.needed_dense, dense_id)):
                if value is not None:
                    ids.add(value)
                    if live:
                        needed.add(value)
        return refs


def held(lock: Path) -> bool:
    """Whether a live process holds ``lock`` (a lock file that does not exist is held by nobody)."""
    if not lock.exists():
        return False
    with file_lock(lock, blocking=False) as acquired:
        return not acquired


def cache_dirs(results: Path, kind: str) -> list[Path]:
    folder = results / kind
    return sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []


# ----------------------------------------------------------------------------------------- verify

def check_model(path: Path, lock: Path, fix: tuple[Path, ...] = ()) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Load a saved model or checkpoint (its digest checked); a corrupt or unreadable one is a finding."""
    try:
        return load_checkpoint(path), []
    except UnreadableFileError as err:
        return None, [Finding("unreadable", err.path, err.problem, lock)]
    except CorruptFileError as err:
        return None, [Finding("corrupt", path, err.problem, lock, fix or (path,))]


def verify_run(rd: RunDir) -> list[Finding]:
    """A run's result.json is readable; a finished run's model.pt loads and keeps the channels the result records;
    a checkpoint loads."""
    status = rd.status()
    if status == "corrupt":
        return [Finding("corrupt", rd.result, rd.problem() or "unreadable", rd.lock, (rd.result,))]
    if status == "unreadable":
        return [Finding("unreadable", rd.result, rd.problem() or "", rd.lock)]
    findings: list[Finding] = []
    if rd.checkpoint.exists():
        findings += check_model(rd.checkpoint, rd.lock)[1]
    if status in FINISHED and rd.model.exists():
        state, found = check_model(rd.model, rd.lock, (rd.model, rd.result))
        findings += found
        recorded = (read_json(rd.result).get("metrics") or {}).get("channels") or {}
        if state is not None and recorded:
            for layer, (kept, _) in recorded.items():
                weight = (state.get("model") or {}).get(f"{layer}.weight")
                mine = len(state.get("keep", {}).get(layer, []))
                if mine != kept or weight is None or weight.shape[0] != kept:
                    findings.append(Finding("stale", rd.model, f"layer {layer}: result.json records {kept} channels "
                                            f"kept, the model holds {None if weight is None else weight.shape[0]} "
                                            f"(keep set: {mine})", rd.lock, (rd.model, rd.result)))
                    break
    return findings


def verify_dense(dense: DenseDir) -> list[Finding]:
    """A cached dense model loads, and its record names the id of its folder."""
    findings: list[Finding] = []
    for path in (dense.model, dense.checkpoint):
        if path.exists():
            findings += check_model(path, dense.lock)[1]
    if dense.meta.exists():
        try:
            meta = read_json(dense.meta)
        except UnreadableFileError as err:
            return findings + [Finding("unreadable", dense.meta, err.problem, dense.lock)]
        except CorruptFileError as err:
            return findings + [Finding("corrupt", dense.meta, err.problem, dense.lock, (dense.meta, dense.model))]
        key = meta.get("key")
        if meta.get("dense_id") != dense.path.name or not isinstance(key, dict) or content_hash(key) != dense.path.name:
            findings.append(Finding("stale", dense.meta, f"records dense id {meta.get('dense_id')} for the folder of "
                                    f"{dense.path.name}", dense.lock, (dense.model, dense.meta)))
    return findings


def verify_pruned(pruned: PrunedDir, results: Path) -> list[Finding]:
    """A cached pruned model loads, names the prune id of its folder, and was made from the dense model now cached
    for it (a dense model made again on a GPU differs: runs pruned from the old and the new one would not share it)."""
    findings = check_model(pruned.phase, pruned.lock)[1] if pruned.phase.exists() else []
    if not pruned.model.exists():
        return findings
    state, found = check_model(pruned.model, pruned.lock)
    if state is None:
        return findings + found
    if state.get("prune_id", pruned.path.name) != pruned.path.name:
        return findings + [Finding("stale", pruned.model, f"holds the pruned model of {state['prune_id']}, not of "
                                   f"{pruned.path.name}", pruned.lock, (pruned.model,))]
    made_from = (state.get("record") or {}).get("dense_sha256")
    dense = DenseDir(results, str(state.get("dense_id")))
    if made_from and dense.model.exists() and file_sha256(dense.model) != made_from:
        findings.append(Finding("stale", pruned.model, f"made from a dense model with sha256 {made_from[:12]}, but "
                                f"{dense.model} now has {file_sha256(dense.model)[:12]}", pruned.lock,
                                (pruned.model,)))
    return findings


@dataclass
class Verification:
    """What ``verify`` checked and found, and the files set aside earlier (left for gc)."""

    findings: list[Finding]
    checked: dict[str, int]
    set_aside: list[Path]


def verify(results: Path, suite: str | None = None) -> Verification:
    """Check every run of the folder's suites (or of ``suite``) and every cached model they refer to; without
    ``suite``, also the cached models that nothing refers to (orphaned)."""
    folder = Folder.of(results, suite)
    refs = References.of(folder)
    findings: list[Finding] = []
    checked = {"runs": 0, "dense models": 0, "pruned models": 0}
    aside: list[Path] = []
    for _, rd in folder.run_dirs():
        checked["runs"] += 1
        findings += verify_run(rd)
        aside += [p for p in rd.path.iterdir() if is_set_aside(p) and p.suffix != ".sha256"]
    for kind, ids, make, check in ((DENSE_DIR, refs.dense, DenseDir, verify_dense),
                                   (PRUNED_DIR, refs.prune, PrunedDir, lambda c: verify_pruned(c, results))):
        for path in cache_dirs(results, kind):
            if suite is not None and path.name not in ids:
                continue
            cache = make(results, path.name)
            aside += [p for p in path.iterdir() if is_set_aside(p) and p.suffix != ".sha256"]
            if not cache.model.exists():
                continue
            checked["dense models" if kind == DENSE_DIR else "pruned models"] += 1
            found = check(cache)
            if path.name not in ids and not found:
                found = [Finding("orphaned", cache.model, "no run of any suite in the folder refers to it",
                                 cache.lock, (cache.model,))]
            findings += found
    return Verification(findings, checked, aside)


def fix(findings: list[Finding]) -> tuple[list[tuple[Finding, list[Path]]], list[Finding]]:
    """Move each finding's files aside (``<name>.<kind>-<time>``) under its lock, so the next run makes them again;
    returns what was moved and the findings left because a live process holds their lock."""
    moved: list[tuple[Finding, list[Path]]] = []
    busy: list[Finding] = []
    for finding in findings:
        if not finding.fix:  # unreadable: only its owner can help, and moving it aside would lose nothing wrong
            continue
        with file_lock(finding.lock, blocking=False) as acquired:
            if not acquired:
                busy.append(finding)
                continue
            targets = [move_aside(path, finding.kind) for path in finding.fix if path.exists()]
            moved.append((finding, [t for t in targets if t is not None]))
    return moved, busy


# ----------------------------------------------------------------------------------------- gc

@dataclass
class Removal:
    """Files ``gc`` removes together under one lock, and why."""

    lock: Path
    files: list[Path]
    why: str
    folder: Path | None = None  # a whole cache folder: removed once empty

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files if p.exists())


def stray(paths: list[Path]) -> list[Path]:
    """The existing ones of ``paths``, each with its digest."""
    return [q for p in paths for q in (p, digest_path(p)) if q.exists()]


def _suite_keeps_checkpoints(suite_dir: Path) -> bool:
    """Whether the suite asked to keep finished runs' checkpoints (storage.keep_checkpoints in suite.json)."""
    try:
        return bool((read_json(suite_dir / "suite.json").get("storage") or {}).get("keep_checkpoints"))
    except CheckpointError:
        return False


def collect(results: Path, keep_dense: bool = False) -> tuple[list[Removal], list[str]]:
    """What ``gc`` would remove: cached models no unfinished run needs (dense ones unless ``keep_dense``), leftover
    phase and training checkpoints, finished runs' checkpoints (unless their suite keeps them), checkpoints of runs
    no longer in their suite, files set aside and stale temporaries. Never a result.json or a finished run's
    model.pt. Also returns the suites whose pending runs are unknown (no manifest)."""
    folder = Folder.of(results)
    refs = References.of(folder)
    removals: list[Removal] = []
    for kind, needed, make in ((DENSE_DIR, refs.needed_dense, DenseDir), (PRUNED_DIR, refs.needed_prune, PrunedDir)):
        for path in cache_dirs(results, kind):
            cache = make(results, path.name)
            if path.name not in needed and not (keep_dense and kind == DENSE_DIR):
                files = [p for p in sorted(path.iterdir()) if p.is_file() and p != cache.lock]
                removals.append(Removal(cache.lock, files, "no unfinished run needs it", path))
                continue
            leftover = cache.checkpoint if isinstance(cache, DenseDir) else cache.phase
            files = stray([leftover]) if cache.done else []
            files += [p for p in path.iterdir() if is_set_aside(p) or p.name.endswith(".tmp")]
            if files:
                removals.append(Removal(cache.lock, files, "a finished stage's checkpoint, set aside or temporary"))
    for suite_dir, rd in folder.run_dirs():
        manifest = folder.suites[suite_dir]
        status = rd.status()
        drop = status in FINISHED and not _suite_keeps_checkpoints(suite_dir)
        drop |= manifest is not None and rd.path.name not in manifest.runs and status not in FINISHED
        leftovers = [p for p in rd.path.iterdir() if is_set_aside(p) or p.name.endswith(".tmp")]
        if drop and rd.checkpoint.exists():
            why = "a finished run's checkpoint" if status in FINISHED else "a run no longer in its suite"
            removals.append(Removal(rd.lock, stray([rd.checkpoint]) + leftovers, why))
        elif leftovers:
            removals.append(Removal(rd.lock, leftovers, "set aside or a stale temporary"))
    return removals, refs.unknown


def remove(removal: Removal) -> bool:
    """Delete a removal's files under its lock (a whole cache folder with its lock last); False when a live process
    holds the lock."""
    with file_lock(removal.lock, blocking=False) as acquired:
        if not acquired:
            return False
        for path in removal.files:
            if path.suffix == ".pt":
                remove_checkpoint(path)
            else:
                path.unlink(missing_ok=True)
        if removal.folder is not None:
            removal.lock.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another process made something there meanwhile
                removal.folder.rmdir()
    return True
