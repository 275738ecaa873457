"""Expansion of a suite into runs (methods × ratios × learning rates × seeds) with content-hash ids.

A run id is a hash of everything that changes a run's result and nothing else, so the same configuration
gives the same id on any machine, a re-run finds finished work, and a duplicated cluster task finds its own.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.config import RESULT_FORMAT, Ratio, Suite
from bench.core.errors import ConfigError
from bench.core.registry import COUNT_RULES, DATASETS, METHODS, MODELS, UnknownNameError
from bench.core.schema import parse, to_plain
from bench.core.store import content_hash, hash_file
from bench.data import (
    DataError,
    build_dataset,
    check_dataset_options,
    data_source,
    keyed_dataset_options,
    resolve_data_root,
)
from bench.method import Method
from bench.pruning import select_layers
from bench.suite.cost import resolve_budget
from bench.training.latency_backends import check_backends

LABEL_KEY = "label"  # reserved key in a method's options: the name results show for that entry


@dataclass(frozen=True)
class MethodSpec:
    """One entry of a suite's ``methods`` list, resolved: its components with validated hyperparameters."""

    label: str
    components: tuple[tuple[str, Any], ...]  # (registered name, hyperparameter dataclass instance)

    def build(self) -> list[Method]:
        return [METHODS.get(name)(hparams) for name, hparams in self.components]

    def plain(self) -> list[dict[str, Any]]:
        """The components as they enter run ids: every hyperparameter, but those added later only when set, and
        the method's ``version`` once a fix has changed its results (version 1 stays out, so old ids hold)."""
        plain = []
        for name, hparams in self.components:
            entry = {"name": name, "hparams": to_plain(hparams, keyed=True)}
            if (version := METHODS.get(name).version) != 1:
                entry["version"] = version
            plain.append(entry)
        return plain


def resolve_method(entry: str | dict[str, Any], index: int) -> MethodSpec:
    """``"l1"``, ``{"tpp": {...}}`` or ``"l1 + orthp"`` (options per component) -> MethodSpec."""
    key = f"methods[{index}]"
    if isinstance(entry, str):
        name, options = entry, {}
    else:
        ((name, options),) = entry.items()
        options = dict(options or {})
    label = options.pop(LABEL_KEY, None)
    parts = [p.strip() for p in name.split("+")]
    if any(not p for p in parts):
        raise ConfigError(f"{key}: '{name}' is not a method name or a chain like 'l1 + orthp'.")
    problems: list[str] = []
    components = []
    for part in parts:
        try:
            cls = METHODS.get(part)
        except UnknownNameError as err:
            problems.append(f"{key}: {err}")
            continue
        own = options if len(parts) == 1 else options.pop(part, None) or {}
        components.append((part, parse(cls.Hparams, own, f"{key}.{part}", problems)))
    if len(parts) > 1 and options:
        problems.append(f"{key}: options of a chain are given per component ({', '.join(parts)}); "
                        f"unknown: {', '.join(map(str, options))}.")
    if not problems and not any(METHODS.get(p).selects for p in parts):
        problems.append(f"{key}: '{name}' has no component that selects channels; start it with e.g. 'l1 + '.")
    if problems:
        raise ConfigError(problems)
    return MethodSpec(label=str(label) if label else "+".join(parts), components=tuple(components))


def ratio_label(ratio: Ratio) -> str:
    """A short printable name of a ratio: the number, or the profile as pattern:ratio pairs."""
    if isinstance(ratio, dict):
        return ",".join(f"{k}:{v:g}" for k, v in ratio.items())
    return f"{ratio:g}"


@dataclass(frozen=True)
class Run:
    """One cell of a suite's grid."""

    suite: Suite
    method: MethodSpec
    ratio: Ratio
    lr: float
    seed: int
    dense_key: dict[str, Any]
    key: dict[str, Any]

    @functools.cached_property  # hashed once; the run is frozen
    def run_id(self) -> str:
        return content_hash(self.key)

    @functools.cached_property  # hashed once; the run is frozen
    def dense_id(self) -> str:
        return content_hash(self.dense_key)

    @property
    def prune_key(self) -> dict[str, Any]:
        """What determines the pruned model before retraining and its record: the run's key without the retraining
        LR, with the latency settings (the record holds the dense and pruned models' measured latency)."""
        shared = {k: v for k, v in self.key.items() if k != "budget"}  # a budget changes only the retraining
        return shared | {"retrain": {k: v for k, v in self.key["retrain"].items() if k != "lr"},
                         "latency": to_plain(self.suite.latency, keyed=True)}

    @functools.cached_property  # hashed once; the run is frozen
    def prune_id(self) -> str:
        return content_hash(self.prune_key)

    def describe(self) -> dict[str, Any]:
        """The run's coordinates in the grid, as results and reports name them."""
        return {"suite": self.suite.name, "run_id": self.run_id, "method": self.method.label,
                "model": self.suite.model, "dataset": self.suite.dataset_name, "ratio": ratio_label(self.ratio),
                "lr": self.lr, "seed": self.seed}



def pretrain_identity(suite: Suite, suite_dir: Path | None) -> dict[str, Any]:
    """The dense recipe, or the digest of the checkpoint the dense model is loaded from."""
    if not suite.pretrain.checkpoint:
        return to_plain(suite.pretrain, keyed=True)
    path = resolve_path(suite.pretrain.checkpoint, suite_dir)
    if not path.is_file():
        raise ConfigError(f"pretrain.checkpoint '{path}' not found. Give the path of a saved state_dict.")
    return {"checkpoint_sha256": hash_file(path)}  # its identity enters the dense id


def dense_key(suite: Suite, seed: int, variants: list[dict[str, Any]], pretrain: dict[str, Any],
              source: str | None = None) -> dict[str, Any]:
    """What determines a dense model: model, data, recipe (or checkpoint contents), seed, method variants,
    and, only when set so default suites keep their ids, the speed options that change numerics and the data
    actually used when it is not the dataset's full set (``source``, from bench.data.data_source)."""
    key = {"format": RESULT_FORMAT, "model": suite.model, "dataset": suite.dataset_name,
           "dataset_options": keyed_dataset_options(suite.dataset_name, suite.dataset_options), "pretrain": pretrain,
           "seed": seed, "variants": variants}
    if not suite.performance.is_default():
        key["performance"] = to_plain(suite.performance, keyed=True)
    if source is not None:
        key["data_source"] = source
    return key


def resolved_layers(suite: Suite) -> list[str]:
    """The layers the suite prunes, by name (its patterns, or the model's usual ones, resolved on the
    architecture): what enters the prune key, so changing a model's default layers cannot reuse old results."""
    entry = MODELS.get(suite.model)
    with torch.device("meta"):  # names only: no memory, no initialisation cost
        model = entry.build(num_classes=10, in_channels=3)
    prune = suite.prune
    return select_layers(model, suite.model, prune.layers, prune.skip, entry.default_layers, entry.default_skip)


def resolve_path(path: str, suite_dir: Path | None) -> Path:
    """A path from a suite: absolute, or relative to the suite file's directory (then the working dir)."""
    p = Path(path).expanduser()
    if p.is_absolute() or suite_dir is None or not (suite_dir / p).exists():
        return p
    return suite_dir / p


def suite_data_root(suite: Suite, suite_dir: Path | None, cli_root: str | None = None) -> Path | None:
    """The data root a run of the suite loads from: ``--data-root``, else the suite's ``data_root``, else the env."""
    suite_root = str(resolve_path(suite.data_root, suite_dir)) if suite.data_root else None
    return resolve_data_root(cli_root, suite_root)


@functools.lru_cache(maxsize=8)
def _training_images(name: str, options: str, root: Path | None) -> int:
    return build_dataset(name, json.loads(options), root, None).info.num_train


def training_images(suite: Suite, root: Path | None) -> int:
    """Images in the suite's training split (less any validation split): the dataset is built once to count them,
    only when a budget is matched to a method (its retraining is counted in epochs)."""
    try:
        return _training_images(suite.dataset_name, json.dumps(suite.dataset_options, sort_keys=True), root)
    except DataError as err:
        raise ConfigError(f"budget.match: the training set must be counted to resolve it, but the dataset does not "
                          f"load ({err}); install the data or give budget.steps instead.") from None


def expand(suite: Suite, suite_dir: Path | None = None, data_root: str | None = None) -> list[Run]:
    """The suite's runs in a stable order (method, ratio, lr, seed); methods and dataset options validated.

    ``data_root`` is the ``--data-root`` flag: which files exist under the data root can decide the data (MNIST's
    subset fallback), and that enters the dense ids."""
    problems = []
    for key, registry, name in (("model", MODELS, suite.model), ("dataset", DATASETS, suite.dataset_name)):
        if name not in registry:
            problems.append(f"{key}: {registry.unknown_message(name)}")
    if suite.dataset_name in DATASETS:
        problems.extend(check_dataset_options(suite.dataset_name, suite.dataset_options))
    if suite.prune.count_rule not in COUNT_RULES:
        problems.append(f"prune.count_rule: {COUNT_RULES.unknown_message(suite.prune.count_rule)}")
    if suite.latency.enabled:
        problems.extend(check_backends(suite.latency.backends))
    specs = []
    for i, entry in enumerate(suite.methods):
        try:
            specs.append(resolve_method(entry, i))
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"methods: {', '.join(duplicates)} appear twice; give one of them a "
                          f"'{LABEL_KEY}' option so results can tell them apart.")
    pretrain = pretrain_identity(suite, suite_dir)
    layers = resolved_layers(suite)
    root = suite_data_root(suite, suite_dir, data_root)
    source = data_source(suite.dataset_name, suite.dataset_options, root)
    budget = resolve_budget(suite, specs, lambda batch: math.ceil(training_images(suite, root) / batch))
    # the rule enters ids only when not the default (last_stage), so budgeted runs made before it keep their ids
    budget_rule = {k: v for k, v in to_plain(suite.budget, keyed=True).items() if k == "rule"} if suite.budget else {}
    runs = []
    for spec in specs:
        variants = [v.key for v in (m.dense_variant() for m in spec.build()) if v is not None]
        for ratio in suite.prune.ratios:
            for lr in suite.retrain.lr:
                for seed in suite.seed_list:
                    dk = dense_key(suite, seed, variants, pretrain, source)
                    retrain = to_plain(suite.retrain, keyed=True) | {"lr": lr}
                    prune = to_plain(suite.prune, keyed=True) | {"ratios": None, "ratio": ratio, "layers": layers}
                    prune.pop("skip")  # the resolved layers already leave the skipped ones out
                    key = {"dense": dk, "prune": prune, "method": spec.plain(), "retrain": retrain,
                           "trainability": to_plain(suite.trainability, keyed=True)}
                    if budget is not None:  # only when set, so suites without one keep their ids
                        key["budget"] = {"steps": budget} | budget_rule
                    runs.append(Run(suite, spec, ratio, lr, seed, dk, key))
    return runs
