"""Suites: the YAML schema as dataclasses, loading with ``--set`` overrides, and validation of the schema.

A suite is a grid (methods × ratios × retraining learning rates × seeds) over one model and dataset; see
``bench/grid.py`` for its expansion into runs. Everything here is pure data: nothing is trained or written.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.core.errors import ConfigError
from bench.core.schema import field, parse
from bench.core.sections import (  # re-exported: callers import the sections from here
    SUBMITIT_MANAGED,
    Budget,
    Execution,
    Latency,
    Log,
    Optim,
    Performance,
    Pretrain,
    Prune,
    Ratio,
    Retrain,
    Schedule,
    SeedPlan,
    Slurm,
    Storage,
    Trainability,
    device_problem,
)

RESULT_FORMAT = 1  # bump when a change to the harness alters results, so old run ids no longer match
# Nodes of a YAML document with its aliases expanded: the largest shipped suite has a few hundred; an alias bomb
# (a few lines, each level repeating the one above nine times) reaches 9^9, gigabytes once built.
MAX_YAML_NODES = 100_000


@dataclass
class Suite:
    """One experiment: a model and dataset, a dense recipe, and the swept methods, ratios, LRs and seeds."""

    name: str
    model: str
    dataset: str | dict[str, Any]
    prune: Prune
    methods: list[str | dict[str, dict[str, Any] | None]] = field(min_items=1)
    seeds: list[int] | SeedPlan = field(default_factory=lambda: [0], min_items=1,
                                        doc="a list (swept), or {start, max, step}: grown in rounds (--until-decided)")
    description: str = ""
    data_root: str | None = None
    pretrain: Pretrain = field(default_factory=Pretrain)
    retrain: Retrain = field(default_factory=Retrain)
    trainability: Trainability = field(default_factory=Trainability)
    latency: Latency = field(default_factory=Latency)
    device: str = field("auto", doc="auto, cpu, cuda or cuda:N")
    performance: Performance = field(default_factory=Performance)
    storage: Storage = field(default_factory=Storage)
    execution: Execution = field(default_factory=Execution)
    log: Log = field(default_factory=Log)
    plugins: list[str] = field(default_factory=list)
    slurm: Slurm = field(default_factory=Slurm)
    budget: Budget | None = field(None, doc="equal-budget comparison: {steps: N} or {match: METHOD}; enters run ids "
                                  "only when set")
    reference: str | None = field(None, doc="published numbers the report prints beside ours: a shipped name "
                                  "(tpp_table1) or a CSV path; not part of any run id")

    def validate(self) -> list[str]:
        problems = []
        if isinstance(self.seeds, list) and len(set(self.seeds)) != len(self.seeds):
            problems.append(f"'seeds' repeats a seed: {self.seeds}.")
        problems.extend(self.pretrain_problems())
        if problem := device_problem(self.device):
            problems.append(f"'device' {problem}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            problems.append(f"'name' {self.name!r} must be a plain directory name.")
        if isinstance(self.dataset, dict) and not isinstance(self.dataset.get("name"), str):
            problems.append("'dataset' as a mapping needs a 'name' (and optional dataset options).")
        for i, entry in enumerate(self.methods):
            if isinstance(entry, dict) and len(entry) != 1:
                problems.append(f"methods[{i}] must map one method name to its hyperparameters, got {entry!r}.")
        return problems

    def pretrain_problems(self) -> list[str]:
        """The dense-model options that contradict the rest of the suite."""
        problems = []
        p = self.pretrain
        if p.checkpoint and (p.best_on != "final" or p.init != "model"):
            problems.append("'pretrain.checkpoint' loads a trained dense model, so 'pretrain.best_on' and "
                            "'pretrain.init' (which shape dense training) must stay at their defaults; remove them.")
        validation = self.dataset_options.get("validation", 0) if isinstance(self.dataset, dict) else 0
        if p.best_on == "validation" and not (isinstance(validation, int) and validation > 0):
            problems.append("'pretrain.best_on: validation' picks the dense checkpoint on a validation split, but the "
                            "dataset has none; set the dataset option validation: N (N > 0 training images held "
                            "out), e.g. dataset: {name: cifar10, validation: 5000}, or use best_on: final.")
        return problems

    @property
    def seed_list(self) -> list[int]:
        """Every seed the suite may run: the list, or a plan's seeds up to its max."""
        return self.seeds.seeds if isinstance(self.seeds, SeedPlan) else self.seeds

    @property
    def seed_plan(self) -> SeedPlan | None:
        """The plan of seeds grown in rounds, or None for a fixed list."""
        return self.seeds if isinstance(self.seeds, SeedPlan) else None

    @property
    def dataset_name(self) -> str:
        return self.dataset if isinstance(self.dataset, str) else self.dataset["name"]

    @property
    def dataset_options(self) -> dict[str, Any]:
        return {} if isinstance(self.dataset, str) else {k: v for k, v in self.dataset.items() if k != "name"}


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept YAML shorthands: ``schedule: cosine``, a single ``lr``/``ratios``/``seeds`` value."""
    raw = copy.deepcopy(raw)
    for phase in ("pretrain", "retrain"):
        section = raw.get(phase)
        if isinstance(section, dict) and isinstance(section.get("schedule"), str):
            section["schedule"] = {"name": section["schedule"]}
    if isinstance(raw.get("retrain"), dict) and isinstance(raw["retrain"].get("lr"), (int, float)):
        raw["retrain"]["lr"] = [raw["retrain"]["lr"]]
    if isinstance(raw.get("prune"), dict) and isinstance(raw["prune"].get("ratios"), (int, float, dict)):
        raw["prune"]["ratios"] = [raw["prune"]["ratios"]]
    if isinstance(raw.get("seeds"), int):
        raw["seeds"] = [raw["seeds"]]
    if isinstance(raw.get("methods"), (str, dict)):
        raw["methods"] = [raw["methods"]]
    return raw


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses, before building anything, a document whose aliases expand past
    MAX_YAML_NODES nodes (or refer to themselves): what a process would otherwise build, validate or print."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}
        size = expanded_size(node, sizes)
        if size > MAX_YAML_NODES and size > len(sizes):  # more values than distinct nodes: aliases repeat some
            raise ConfigError(f"the YAML document expands, through its aliases (*name), to more than "
                              f"{MAX_YAML_NODES:,} values; a suite needs far fewer. Write the values out, or "
                              "use fewer aliases.")
        if size > MAX_YAML_NODES:
            raise ConfigError(f"the YAML document holds more than {MAX_YAML_NODES:,} values, the limit; a suite needs "
                              "far fewer. List fewer seeds, ratios, LRs or methods.")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError("the YAML document is nested too deeply to be a suite.") from None
    finally:
        loader.dispose()


def expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded, counted once per distinct node (``sizes``:
    the counts so far by node id; -1 while a node is being counted, so an alias inside itself is refused)."""
    known = sizes.get(id(node))
    if known == -1:
        raise ConfigError("the YAML document has an alias inside the value it names (*name within &name); a suite "
                          "cannot refer to itself.")
    if known is not None:
        return known
    sizes[id(node)] = -1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total = min(total + expanded_size(child, sizes), MAX_YAML_NODES + 1)  # capped: never a huge integer
    sizes[id(node)] = total
    return total


def parse_override(expression: str) -> tuple[list[str], Any]:
    """``retrain.lr=[0.1,0.01]`` -> (["retrain", "lr"], [0.1, 0.01]); the value is read as YAML."""
    key, sep, text = expression.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set '{expression}' must look like key.path=value, e.g. retrain.epochs=2.")
    try:
        value = load_yaml(text) if text.strip() else None
    except ConfigError as err:
        raise ConfigError(f"--set '{expression}': {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set '{expression}': the value is not valid YAML ({err.problem}).") from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` expressions to the raw suite mapping (before validation, so errors name the key)."""
    raw = copy.deepcopy(raw)
    for expression in overrides:
        parts, value = parse_override(expression)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{expression}': '{'.'.join(parts[:i + 1])}' is not a mapping.")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a suite file with safe YAML loading; errors name the file and the line."""
    if path.is_dir():
        raise ConfigError(f"suite file '{path}' is a directory. Give the path of a YAML suite, e.g. "
                          "suites/quickstart.yaml.")
    if not path.is_file():
        raise ConfigError(f"suite file '{path}' not found. Give the path of a YAML suite, e.g. suites/quickstart.yaml.")
    try:
        raw = load_yaml(path.read_text())
    except ConfigError as err:
        raise ConfigError(err.problems, str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"not valid YAML{where}: {problem}. Fix the syntax.", str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the suite ({err}).", str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("a suite must be a YAML mapping with keys such as name, model, dataset, prune, methods.",
                          str(path))
    return raw


def load_suite(path: str | Path, overrides: list[str] = ()) -> Suite:
    """Read, override and validate a suite file; any problem raises ConfigError naming the file and key."""
    path = Path(path)
    original = read_yaml(path)
    raw = apply_overrides(original, list(overrides))
    try:
        return parse(Suite, _normalise(raw))
    except ConfigError as err:
        if not overrides:
            raise ConfigError(err.problems, str(path)) from None
        try:
            parse(Suite, _normalise(copy.deepcopy(original)))
        except ConfigError:
            raise ConfigError(err.problems, str(path)) from None  # the file itself is wrong: blame it
        raise ConfigError([blame_override(problem, overrides) for problem in err.problems]) from None


def blame_override(problem: str, overrides: list[str]) -> str:
    """A problem the ``--set`` expressions made (the file alone is valid), prefixed with the one it names: the
    first whose key, or a leading part of it, the problem quotes; else with all of them."""
    for expression in overrides:
        parts = parse_override(expression)[0]
        if any(f"'{'.'.join(parts[:i])}'" in problem or f"'{parts[i - 1]}'" in problem
               for i in range(len(parts), 0, -1)):
            return f"--set '{expression}': {problem}"
    return f"--set {' '.join(repr(o) for o in overrides)}: {problem}"


__all__ = [
    "Budget", "Latency", "Log", "MAX_YAML_NODES", "Optim", "Performance", "Pretrain", "Prune", "RESULT_FORMAT",
    "Execution", "Ratio", "Retrain", "SUBMITIT_MANAGED", "Schedule", "SeedPlan", "Slurm", "Storage", "Suite",
    "Trainability",
    "apply_overrides", "blame_override", "device_problem", "expanded_size", "load_suite", "load_yaml", "parse_override",
    "read_yaml"
]
