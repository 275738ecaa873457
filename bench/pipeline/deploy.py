"""A finished run's pruned model, taken away: rebuilt as a plain ``nn.Module`` (:func:`load_model`) or written as a
file that loads without this harness (:func:`export_model`: a ``torch.export`` program, an ONNX file, or a state dict),
with a small JSON beside it saying which run it is.

``model.pt`` holds the slim state dict and the channels kept; only the harness (its registry, the suite's layers and
groups) can rebuild the module, which is what :func:`load_model` does once so that the exported files need none of it.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.errors import CheckpointError, ConfigError, UserError
from bench.core.store import hash_file, load_checkpoint, read_json, write_bytes, write_json

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "FinishedRun", "export_model", "find_run", "load_model", "open_run"]

FORMATS = {"pt2": ".pt2", "onnx": ".onnx", "state": ".pt"}
MASKED_NOTE = ("a masked run (prune.mode: mask): the model keeps the dense shapes with the pruned channels' weights "
               "at zero, so it is no smaller or faster than the dense model; 'channels' says what removal would keep")


@dataclass
class FinishedRun:
    """A finished run, rebuilt: its directory, result.json, slim model (eval mode, CPU) and input shape (C, H, W)."""

    path: Path
    result: dict[str, Any]
    model: nn.Module
    input_shape: tuple[int, int, int]
    masked: bool

    @property
    def run_id(self) -> str:
        return str(self.result["run_id"])

    def describe(self) -> dict[str, Any]:
        """What the JSON beside an exported file says about the run."""
        metrics = self.result.get("metrics") or {}
        return {"run_id": self.run_id, "suite": self.result.get("suite"), "method": self.result.get("method"),
                "model": self.result.get("model"), "dataset": self.result.get("dataset"),
                "ratio": self.result.get("ratio"), "lr": self.result.get("lr"), "seed": self.result.get("seed"),
                "status": self.result.get("status"), "accuracy": metrics.get("acc_final"),
                "acc_dense": metrics.get("acc_dense"), "params": sum(p.numel() for p in self.model.parameters()),
                "params_dense": metrics.get("params_dense"), "flops_dense": metrics.get("flops_dense"),
                "flops_pruned": metrics.get("flops_pruned"),
                "channels_kept": {k: v[0] for k, v in (metrics.get("channels") or {}).items()},
                "channels": metrics.get("channels"), "input_shape": [1, *self.input_shape],
                "num_classes": self.result.get("num_classes"), "masked": self.masked,
                **({"note": MASKED_NOTE} if self.masked else {})}


def find_run(target: str | Path, results: Path = Path("results")) -> Path:
    """The run directory ``target`` names: a directory holding a result.json, or a run id (or a unique prefix of one,
    six characters at least) under ``results/<suite>/runs/``."""
    path = Path(target)
    if (path / "result.json").is_file():
        return path
    text = str(target)
    if path.exists() or "/" in text:
        raise UserError(f"'{target}' is not a run directory (it holds no result.json); give a run's folder "
                        "(results/<suite>/runs/<id>) or its id.")
    if not results.is_dir():
        raise UserError(f"run '{target}': the results directory '{results}' does not exist; pass --results DIR.")
    found = sorted({p.parent for p in results.glob("*/runs/*/result.json")
                    if p.parent.name == text or (len(text) >= 6 and p.parent.name.startswith(text))})
    if not found:
        raise UserError(f"no run '{target}' under {results}/*/runs/; list the ids with `bench.py status SUITE "
                        f"--results {results}`.")
    if len(found) > 1:
        raise UserError(f"run '{target}' is ambiguous under {results}: {', '.join(str(p) for p in found[:4])}; "
                        "give more of the id or the run's folder.")
    return found[0]


def _suite_and_run(path: Path, result: dict[str, Any]) -> Any:
    """The suite (from the ``suite.json`` beside the runs) and the :class:`bench.suite.grid.Run` of ``result``."""
    from bench.core.config import Suite
    from bench.core.schema import parse
    from bench.plugins import load_builtin, load_enabled, load_plugin
    from bench.suite.grid import Run, resolve_method

    load_builtin()
    load_enabled()
    suite_file = path.parent.parent / "suite.json"
    try:
        raw = read_json(suite_file)
        raw.pop("reference", None)  # resolved to a path when recorded; not needed to rebuild a model
        suite = parse(Suite, raw)
    except CheckpointError:
        raise UserError(f"{suite_file} is missing or unreadable: the suite of run '{path.name}' is needed to "
                        "rebuild its model; run the suite again (finished runs are skipped) to record it.") from None
    except ConfigError as err:
        raise UserError(f"{suite_file}: {err} (recorded by another version of the harness?)") from None
    for plugin in suite.plugins:  # modules and entry points load; a file plugin's suite folder is not recorded
        try:
            load_plugin(plugin)
        except UserError as err:
            log.warning("plugin %s of %s not loaded (%s); its methods and models are unknown here", plugin,
                        suite_file, err)
    specs = []
    for i, entry in enumerate(suite.methods):
        try:
            specs.append(resolve_method(entry, i))
        except ConfigError:
            continue
    spec = next((s for s in specs if s.label == result.get("method")), None)
    if spec is None:
        raise UserError(f"{path / 'result.json'}: method '{result.get('method')}' is not among the methods of "
                        f"{suite_file} (or its plugin is not loaded); the suite changed since the run.")
    run = Run(suite, spec, result.get("ratio_value", result.get("ratio")), result["lr"], result["seed"],
              result["config"]["dense"], result["config"])
    return suite, run


def _info(suite: Any, result: dict[str, Any], data_root: str | None) -> Any:
    """The dataset facts a model is built from: classes and input shape, from the result when it records them
    (``input_shape``), else from the dataset itself."""
    shape = result.get("input_shape")
    if shape is not None:
        return _Info(int(result["num_classes"]), int(shape[0]), int(shape[-1]))
    from bench.core.registry import MODELS
    from bench.data import build_dataset
    from bench.suite.grid import suite_data_root

    info = build_dataset(suite.dataset_name, suite.dataset_options, suite_data_root(suite, None, data_root),
                         MODELS.get(suite.model).image_size).info
    return _Info(info.num_classes, info.in_channels, info.image_size)


@dataclass(frozen=True)
class _Info:
    num_classes: int
    in_channels: int
    image_size: int


def open_run(target: str | Path, results: Path = Path("results"), data_root: str | None = None) -> FinishedRun:
    """The finished run ``target`` (a run directory or id) with its slim model rebuilt; unfinished runs, runs that
    kept no model and models that do not fit are UserErrors naming the file."""
    from bench.pipeline.setup import group_plan, masking, new_model
    from bench.pruning.groups import slim_groups

    path = find_run(target, results)
    try:
        result = read_json(path / "result.json")
    except CheckpointError as err:
        raise UserError(str(err)) from None
    status = result.get("status")
    if status != "ok":
        raise UserError(f"run '{path.name}' is {status or 'unreadable'}, not finished ok; its model is not final "
                        f"({path / 'result.json'}). Finish it with `bench.py run SUITE` first.")
    if not (path / "model.pt").is_file():
        raise UserError(f"run '{path.name}' kept no model.pt (storage.keep_final_model was false); run it again "
                        "with storage.keep_final_model: true.")
    suite, run = _suite_and_run(path, result)
    info = _info(suite, result, None)
    state = load_checkpoint(path / "model.pt")
    with _quiet_seed():
        model = new_model(run, info, run.method.build())
    masked = state.get("mode") == "mask" or masking(run)
    if not masked:  # a masked model keeps the dense shapes; its state holds the zeros
        slim_groups(model, group_plan(model, run, info), dict(state["keep"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"{path / 'model.pt'} does not fit the model rebuilt from {path.parent.parent / 'suite.json'}"
                        f": {str(err).splitlines()[0]}") from None
    model.eval()
    return FinishedRun(path, result, model.cpu(), (info.in_channels, info.image_size, info.image_size), masked)


class _quiet_seed:
    """Build a model without disturbing the caller's global random state (``new_model`` seeds it)."""

    def __enter__(self) -> None:
        self.state = torch.random.get_rng_state()

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self.state)


def load_model(run_dir: str | Path, results: str | Path = "results") -> nn.Module:
    """The slim ``nn.Module`` of a finished run (a run directory or id), in eval mode on the CPU, for notebooks."""
    return open_run(run_dir, Path(results)).model


def _program(run: FinishedRun) -> torch.export.ExportedProgram:
    from torch.export import Dim

    example = torch.zeros((2, *run.input_shape))  # batch 2: a batch of 1 would be specialised to a constant
    with torch.no_grad():
        return torch.export.export(run.model, (example,), dynamic_shapes=({0: Dim.DYNAMIC},))


def export_bytes(run: FinishedRun, fmt: str) -> bytes:
    """The run's model as the bytes of a ``fmt`` file (pt2, onnx or state)."""
    buffer = io.BytesIO()
    if fmt == "pt2":
        torch.export.save(_program(run), buffer)
    elif fmt == "onnx":
        from bench.training.latency_backends import missing, onnx_bytes

        if (problem := missing("onnx", "onnxscript")()) is not None:  # the exporter's; onnxruntime is not needed
            raise UserError(f"--format onnx: the ONNX exporter {problem.removeprefix('it ')}.")
        return onnx_bytes(run.model, run.input_shape)
    else:
        torch.save({"state_dict": run.model.state_dict(), "run": run.describe()}, buffer)
    return buffer.getvalue()


def export_model(target: str | Path, fmt: str, out: str | Path | None = None, results: str | Path = "results"
                 ) -> tuple[Path, Path]:
    """Write the run's model as ``fmt`` to ``out`` (default ``<run id><ext>`` in the current directory) and the JSON
    beside it (``<out>.json``); returns both paths. Checks everything before writing anything."""
    if fmt not in FORMATS:
        raise UserError(f"--format '{fmt}': unknown export format; choose from {', '.join(FORMATS)}.")
    run = open_run(target, Path(results))
    path = Path(out) if out is not None else Path(f"{run.run_id}{FORMATS[fmt]}")
    if path.is_dir():
        raise UserError(f"--out '{path}' is a directory; give a file name, e.g. {path / (run.run_id + FORMATS[fmt])}.")
    if not path.parent.is_dir():
        raise UserError(f"--out '{path}': the directory '{path.parent}' does not exist; create it first.")
    data = export_bytes(run, fmt)
    if run.masked:
        log.warning("run %s is masked: %s", run.run_id, MASKED_NOTE)
    write_bytes(path, data)
    meta = {**run.describe(), "format": fmt, "file": path.name, "sha256": hash_file(path),
            "torch": torch.__version__, "load": LOADERS[fmt]}
    sidecar = path.with_name(path.name + ".json")
    write_json(sidecar, meta)
    return path, sidecar


LOADERS = {"pt2": "torch.export.load(path).module()(x)",
           "onnx": "onnxruntime.InferenceSession(path).run(None, {'input': x.numpy()})",
           "state": "torch.load(path)['state_dict'] (the slim shapes; bench.load_model rebuilds the module)"}


# ----------------------------------------------------------------------------------------- latency sweep

SWEEP_COLUMNS = ["suite", "run_id", "method", "ratio", "backend", "batch_size", "dense_median_ms", "dense_iqr_ms",
                 "pruned_median_ms", "pruned_iqr_ms", "speedup", "flops_ratio", "threads", "masked", "dense_weights"]


def finished_runs(target: str, results: Path) -> tuple[str, list[Path]]:
    """The suite name and run directories ``target`` names: a suite (YAML file or name under ``results``) gives its
    finished (ok) runs, a run directory or id that one run."""
    from bench.core.config import load_suite

    name = load_suite(target).name if Path(target).suffix in (".yaml", ".yml") else target
    runs_dir = results / name / "runs"
    if "/" not in name and runs_dir.is_dir():
        ok = [p.parent for p in sorted(runs_dir.glob("*/result.json")) if _status(p) == "ok"]
        if not ok:
            raise UserError(f"suite '{name}' has no finished (ok) run under {runs_dir}; run it first.")
        return name, ok
    if Path(target).suffix in (".yaml", ".yml"):
        raise UserError(f"suite '{name}' has no results under {results}; run it first or pass --results DIR.")
    path = find_run(target, results)
    return path.parent.parent.name, [path]


def _status(result: Path) -> str | None:
    try:
        return read_json(result).get("status")
    except CheckpointError:
        return None


def _dense_model(run: FinishedRun, results: Path) -> tuple[nn.Module, str]:
    """The run's dense model for timing: its cached weights when ``_dense/`` still holds them, else the dense
    architecture freshly initialised (latency does not depend on the weights' values); and which it is."""
    from bench.core.store import DenseDir, content_hash
    from bench.pipeline.setup import new_model

    _, spec = _suite_and_run(run.path, run.result)
    info = _Info(int(run.result.get("num_classes") or 0) or _classes(run.model), *run.input_shape[:2])
    with _quiet_seed():
        model = new_model(spec, info, spec.method.build())
    cached = DenseDir(results, content_hash(run.result["config"]["dense"])).model
    if cached.is_file():
        try:
            model.load_state_dict(load_checkpoint(cached)["model"])
            return model.eval(), "trained"
        except (CheckpointError, RuntimeError):
            pass
    return model.eval(), "initialised"


def _classes(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def latency_sweep(target: str, results: Path, batch_sizes: list[int], backends: list[str], repeats: int = 20,
                  min_time_s: float = 0.2, out: Path | None = None) -> tuple[list[dict[str, Any]], Path]:
    """Dense and pruned latency (median, IQR; ``bench.training.measure``'s Timer procedure) and speed-up, per batch
    size and backend, of every finished run ``target`` names, without retraining; written as CSV to ``out`` (default
    ``<results>/<suite>/latency_sweep.csv``). Everything is checked before anything is timed or written."""
    import pandas as pd

    from bench.core.store import content_hash
    from bench.training.latency_backends import check_backends, measure_backend, runtime, speedup

    problems = check_backends(backends, "--backends")
    if problems:
        raise UserError(problems[0])
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UserError(f"--batch-sizes {batch_sizes}: give positive integers, e.g. 1,8,64.")
    suite, paths = finished_runs(target, results)
    path = out if out is not None else results / suite / "latency_sweep.csv"
    if not path.parent.is_dir():
        raise UserError(f"--out '{path}': the directory '{path.parent}' does not exist; create it first.")
    opened = [open_run(p, results) for p in paths]
    threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    dense_times: dict[tuple[str, str, int], dict[str, Any]] = {}
    for run in opened:
        dense, weights = _dense_model(run, results)
        dense_id = content_hash(run.result["config"]["dense"])
        metrics = run.result.get("metrics") or {}
        for backend in backends:
            dense_runtime = pruned_runtime = None  # each model exported to a backend once, timed at every batch size
            for batch in batch_sizes:
                key = (dense_id, backend, batch)
                if key not in dense_times:  # runs that share a dense model share its timing
                    dense_runtime = dense_runtime or runtime(backend, dense, run.input_shape, threads)
                    dense_times[key] = measure_backend(backend, dense, run.input_shape, batch, repeats,
                                                       min_time_s=min_time_s, threads=threads, prepared=dense_runtime)
                d = dense_times[key]
                pruned_runtime = pruned_runtime or runtime(backend, run.model, run.input_shape, threads)
                p = measure_backend(backend, run.model, run.input_shape, batch, repeats, min_time_s=min_time_s,
                                    threads=threads, prepared=pruned_runtime)
                rows.append({"suite": suite, "run_id": run.run_id, "method": run.result.get("method"),
                             "ratio": run.result.get("ratio"), "backend": backend, "batch_size": batch,
                             "dense_median_ms": d["median_ms"], "dense_iqr_ms": d["iqr_ms"],
                             "pruned_median_ms": p["median_ms"], "pruned_iqr_ms": p["iqr_ms"],
                             "speedup": speedup(d["median_ms"], p["median_ms"]),
                             "flops_ratio": speedup(metrics.get("flops_dense"), metrics.get("flops_pruned")),
                             "threads": int(p["threads"]), "masked": run.masked, "dense_weights": weights})
                log.info("%s %s batch %d: %.3g ms dense, %.3g ms pruned", run.run_id, backend, batch,
                         d["median_ms"], p["median_ms"])
    write_bytes(path, pd.DataFrame(rows, columns=SWEEP_COLUMNS).to_csv(index=False).encode())
    return rows, path


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The sweep as a fixed-width text table for the terminal."""
    head = (f"{'run id':12}  {'method':12}  {'ratio':>6}  {'backend':11}  {'batch':>5}  {'dense ms':>9}  "
            f"{'pruned ms':>9}  {'speed-up':>8}  {'FLOP ratio':>10}  threads")
    lines = [head]
    for r in rows:
        lines.append(f"{r['run_id']:12}  {str(r['method'])[:12]:12}  {str(r['ratio']):>6}  {r['backend']:11}  "
                     f"{r['batch_size']:>5}  {r['dense_median_ms']:>9.3f}  {r['pruned_median_ms']:>9.3f}  "
                     f"{r['speedup']:>7.2f}×  {r['flops_ratio']:>9.2f}×  {r['threads']}"
                     + ("  (masked)" if r["masked"] else ""))
    return "\n".join(lines)
