"""Experiment trackers (TensorBoard, MLflow): a harness run as one tracker run, written whole or streamed per epoch.

A tracker run is named by the run id and carries the configuration as parameters, the per-epoch history as step
metrics (retraining under the history's own names, a method's phase as ``phase/<name>``) and the final metrics
under runs.csv's names. Writing a run replaces whatever the tracker held for that run id: TensorBoard merges every
event file in a run's folder, and MLflow appends to a metric's history, so appending would double every curve.
The tracker packages are optional extras; result.json stays the source of truth.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import UserError
from bench.suite.manifest import flatten

log = logging.getLogger(__name__)

KINDS = ("tensorboard", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # the module each extra provides
MODULES = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow.tracking"}  # what writing imports
RUN_TAG = "bench.run_id"
STATUS_TAG = "bench.status"
MAX_PARAM = 6000  # MLflow's longest parameter value


def require(kind: str) -> None:
    """Raise the one-line error that names the extra to install when ``kind``'s package is missing."""
    try:
        __import__(PACKAGES[kind])
    except ImportError:
        raise UserError(f"{kind} is not installed; install the extra: pip install -e '.[{kind}]'") from None


# ----------------------------------------------------------------------------------------- result -> tracker run

@dataclass
class TrackerRun:
    """What a tracker receives for one harness run."""

    name: str
    experiment: str
    status: str
    params: dict[str, Any]
    steps: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    started: float | None = None  # seconds since the epoch


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def params_of(result: dict[str, Any]) -> dict[str, Any]:
    """The configuration as flat parameters: the run's coordinates, then every key of its configuration."""
    params = {k: result.get(k) for k in ("suite", "method", "model", "dataset", "ratio", "lr", "seed", "prune_id")}
    config = dict(result.get("config") or {})
    components = config.pop("method", None) or []
    params.update({f"hp.{c.get('name')}.{k}": v for c in components for k, v in (c.get("hparams") or {}).items()})
    params.update(flatten(config))
    return params


def step_metrics(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """One history row's numbers (its epoch and step counters are the step, not metrics)."""
    return {f"{prefix}{k}": v for k, raw in row.items() if k not in ("epoch", "step")
            and (v := _finite(raw)) is not None}


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The final numbers under runs.csv's names: acc_*, params_*, flops_*, jsv_*, latency_*_median_ms, timings_*."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        items = value.items() if isinstance(value, dict) and key != "channels" else [("", value)]
        for sub, item in items:
            if (number := _finite(item)) is not None:
                flat[f"{key}_{sub}" if sub else key] = number
    return flat


def _started(result: dict[str, Any]) -> float | None:
    try:
        return time.mktime(time.strptime(str(result.get("started")), "%Y-%m-%dT%H:%M:%S%z"))
    except ValueError:
        return None


def from_result(result: dict[str, Any], suite: str) -> TrackerRun:
    """A result.json as a tracker run: the method's phase epochs first, then the retraining epochs."""
    history = result.get("history") or {}
    phase, retrain = history.get("phase") or [], history.get("retrain") or []
    steps = [(i + 1, step_metrics(row, "phase/")) for i, row in enumerate(phase)]
    steps += [(int(row.get("epoch", i + 1)), step_metrics(row)) for i, row in enumerate(retrain)]
    return TrackerRun(name=str(result["run_id"]), experiment=suite, status=str(result.get("status") or "unknown"),
                      params=params_of(result), steps=steps, final=final_metrics(result.get("metrics") or {}),
                      started=_started(result))


# ----------------------------------------------------------------------------------------- TensorBoard

class TensorBoardRun:
    """One run's event files in ``<dir>/<experiment>/<run id>/`` (its own folder, so TensorBoard shows one run)."""

    def __init__(self, root: str | Path, run: TrackerRun, fresh: bool, first_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(root) / run.experiment / run.name
        if fresh:  # a run written or started anew: nothing of an earlier one may merge into it
            shutil.rmtree(self.path, ignore_errors=True)
        # Resuming: events at or after first_step (logged before a crash, then done again) are dropped on reading.
        self.writer = SummaryWriter(str(self.path), purge_step=None if fresh else first_step)
        self.last_step = 0
        self.run = run
        if fresh:
            self.writer.add_text("config", f"```\n{json.dumps(run.params, indent=1, default=str)}\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, step)

    def finish(self, status: str, final: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = self.last_step
        for key, value in final.items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_text("status", status, step)
        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                  for k, v in self.run.params.items() if v is not None}
        for summary in hparams(values, dict(final)):  # the HParams dashboard: configuration beside final numbers
            self.writer.file_writer.add_summary(summary)
        self.writer.close()


# ----------------------------------------------------------------------------------------- MLflow

def mlflow_uri(target: str) -> str:
    """A tracking URI: kept when it is one, else a directory made into a ``file://`` store URI."""
    if "://" in target or target.startswith(("file:", "databricks")):
        return target
    return Path(target).expanduser().resolve().as_uri()


def mlflow_client(target: str) -> Any:
    """An MlflowClient for ``target``. The local store mlflow-skinny has is a folder (``file://``), which MLflow 3
    keeps in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; a database URI needs the full ``mlflow``."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(target)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # opens the store now, so a bad URI fails here
    except Exception as err:
        raise UserError(f"MLflow cannot open '{target}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                        "Give a directory (a local file store) or a server URI; a database URI (sqlite://) needs "
                        "the full 'mlflow' package.") from None
    return client


def mlflow_experiment(client: Any, name: str) -> str:
    """The id of the experiment ``name``, created (or restored from deletion) when needed."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def mlflow_runs_by_name(client: Any, experiment: str) -> dict[str, list[str]]:
    """The experiment's active MLflow runs, by the harness run id they carry."""
    found: dict[str, list[str]] = {}
    token = None
    while True:
        page = client.search_runs([experiment], max_results=1000, page_token=token)
        for run in page:
            if (name := run.data.tags.get(RUN_TAG)) is not None:
                found.setdefault(name, []).append(run.info.run_id)
        token = page.token
        if not token:
            return found


MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "diverged": "FAILED"}  # others stay RUNNING


class MlflowRun:
    """One harness run as one MLflow run in the experiment named after the suite."""

    def __init__(self, client: Any, experiment: str, run: TrackerRun, replaces: Iterable[str] = (),
                 resume: str | None = None) -> None:
        from mlflow.entities import Param

        self.client, self.run = client, run
        for old in replaces:  # a soft delete: search_runs no longer returns it (mlflow gc removes it for good)
            client.delete_run(old)
        if resume is not None:
            self.id = resume
            return
        started = int((run.started or time.time()) * 1000)
        created = client.create_run(experiment, start_time=started, run_name=run.name,
                                    tags={RUN_TAG: run.name, STATUS_TAG: run.status})
        self.id = created.info.run_id
        params = [Param(k, _param_text(v)) for k, v in run.params.items()]
        for i in range(0, len(params), 100):
            client.log_batch(self.id, params=params[i:i + 100])

    def log(self, step: int, metrics: dict[str, float], when: float | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int((when or time.time()) * 1000)
        entries = [Metric(k, v, stamp, step) for k, v in metrics.items()]
        for i in range(0, len(entries), 1000):
            self.client.log_batch(self.id, metrics=entries[i:i + 1000])

    def finish(self, status: str, final: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import RunTag

        self.log(step, final)
        self.client.log_batch(self.id, tags=[RunTag(STATUS_TAG, status)])
        if status in MLFLOW_STATUS:
            self.client.set_terminated(self.id, MLFLOW_STATUS[status])


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM else text[:MAX_PARAM - 3] + "..."


# ----------------------------------------------------------------------------------------- whole runs

def write_tensorboard(root: str | Path, run: TrackerRun) -> None:
    """Write ``run`` to ``root``, replacing what an earlier write of the same run left."""
    writer = TensorBoardRun(root, run, fresh=True)
    for step, metrics in run.steps:
        writer.log(step, metrics)
    writer.finish(run.status, run.final)


def write_mlflow(client: Any, experiment: str, run: TrackerRun, replaces: Iterable[str]) -> None:
    """Write ``run`` as a new MLflow run after deleting ``replaces`` (the runs an earlier write made for it)."""
    writer = MlflowRun(client, experiment, run, replaces)
    began = run.started or time.time()
    for i, (step, metrics) in enumerate(run.steps):
        writer.log(step, metrics, began + i)
    writer.finish(run.status, run.final, run.steps[-1][0] if run.steps else 0)


# ----------------------------------------------------------------------------------------- live logging

class LiveLog:
    """Streams one run's retraining epochs to the suite's trackers while it trains (suite key ``log``).

    The first epoch logged decides: epoch 1 starts the tracker run anew (an earlier attempt's curves are dropped),
    a later epoch is a resumed run and continues the tracker run; at the end the run is written whole. Any tracker
    error is a warning naming the tracker, which is then left alone for the rest of the run: logging never fails a
    run.
    """

    def __init__(self, targets: dict[str, str], run: TrackerRun) -> None:
        self.targets, self.run = targets, run
        self.open: dict[str, Any] = {}
        self.spent_s = 0.0
        self.epoch_s = 0.0
        self.epochs = 0

    @classmethod
    def start(cls, targets: dict[str, str], result: dict[str, Any], suite: str, resuming: bool = False
              ) -> LiveLog | None:
        """The live log of a run (``result``: its result.json as it starts; ``resuming``: whether its retraining
        continues from a checkpoint), or None when the suite asks for none. Imports the trackers and opens the MLflow
        run now, before any epoch, since that is most of their cost (TensorBoard's run opens at the first epoch,
        whose number its reader needs)."""
        if not targets:
            return None
        live = cls(targets, from_result(result, suite))
        for kind in list(targets):
            live._guard(kind, lambda kind=kind: importlib.import_module(MODULES[kind]))
        if "mlflow" in live.targets:
            live._guard("mlflow", lambda: live._open("mlflow", 2 if resuming else 1))
        return live

    def _guard(self, kind: str, action: Any) -> None:
        try:
            action()
        except Exception as err:  # never fail a run for a tracker
            log.warning("live logging to %s failed (%s: %s); run %s goes on without it", kind, type(err).__name__,
                        str(err).splitlines()[0][:200] if str(err) else "", self.run.name)
            self.targets = {k: v for k, v in self.targets.items() if k != kind}
            self.open.pop(kind, None)

    def _open(self, kind: str, first_epoch: int) -> None:
        """Start (epoch 1) or continue (a later epoch: a resumed run) the run's tracker run."""
        fresh = first_epoch == 1
        if kind == "tensorboard":
            self.open[kind] = TensorBoardRun(self.targets[kind], self.run, fresh, first_epoch)
            return
        client = mlflow_client(self.targets[kind])
        experiment = mlflow_experiment(client, self.run.experiment)
        earlier = mlflow_runs_by_name(client, experiment).get(self.run.name, [])
        resume = earlier[-1] if earlier and not fresh else None
        self.open[kind] = MlflowRun(client, experiment, self.run, [e for e in earlier if e != resume], resume)

    def epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Log one finished retraining epoch (its history row)."""
        self.epochs += 1
        self.epoch_s += float(row.get("seconds") or 0.0)
        metrics = step_metrics(row)
        began = time.perf_counter()
        for kind in list(self.targets):
            def send(kind: str = kind) -> None:
                if kind not in self.open:
                    self._open(kind, epoch)
                self.open[kind].log(epoch, metrics)
            self._guard(kind, send)
        self.spent_s += time.perf_counter() - began

    def finish(self, result: dict[str, Any]) -> None:
        """Replace the streamed tracker runs by the finished run written whole (as ``export`` writes it): its phase
        epochs, final metrics and status, and each epoch once even when attempts overlapped (resumes, requeues)."""
        whole = from_result(result, self.run.experiment)
        for kind in list(self.targets):
            def rewrite(kind: str = kind) -> None:
                streamed = self.open.pop(kind, None)
                if kind == "tensorboard":
                    if streamed is not None:
                        streamed.writer.close()
                    write_tensorboard(self.targets[kind], whole)
                    return
                client = mlflow_client(self.targets[kind])
                experiment = mlflow_experiment(client, whole.experiment)
                write_mlflow(client, experiment, whole, mlflow_runs_by_name(client, experiment).get(whole.name, []))
            self._guard(kind, rewrite)
        if self.epochs:
            log.debug("live logging of run %s: %.2f ms per epoch, %.3f%% of its epochs' time", self.run.name,
                      1e3 * self.spent_s / self.epochs, 100 * self.spent_s / max(self.epoch_s, 1e-9))
