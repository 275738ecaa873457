"""Suites: the YAML schema as dataclasses, loading with ``--set`` overrides, and validation of the schema.

A suite is a grid (methods × ratios × retraining learning rates × seeds) over one model and dataset; see
``bench/grid.py`` for its expansion into runs. Everything here is pure data: nothing is trained or written.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.errors import ConfigError
from bench.schema import field, parse

RESULT_FORMAT = 1  # bump when a change to the harness alters results, so old run ids no longer match
# Nodes of a YAML document with its aliases expanded: the largest shipped suite has a few hundred; an alias bomb
# (a few lines, each level repeating the one above nine times) reaches 9^9, gigabytes once built.
MAX_YAML_NODES = 100_000


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a device a suite or ``--device`` may ask for, or None when it is one."""
    if re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", name):
        return None
    return f"is {name!r}; allowed: auto, cpu, cuda, cuda:N."


@dataclass
class Schedule:
    """A learning-rate schedule over epochs: step (×gamma at each milestone), cosine (to 0), constant, or piecewise
    (lr × factors[k] from the k-th milestone on: an LR that may rise again, as between pruning rounds)."""

    name: Literal["step", "cosine", "constant", "piecewise"] = "constant"
    milestones: list[int] = field(default_factory=list, doc="epochs at which a step schedule multiplies by gamma "
                                  "(a piecewise one moves to its next factor)")
    gamma: float = field(0.1, low=0, low_open=True, doc="step factor")
    factors: list[float] = field(default_factory=list, low=0, low_open=True, keyed_at_default=False,
                                 doc="piecewise: the LR multiplier before the first milestone and from each one on "
                                     "(one more than milestones)")

    def validate(self) -> list[str]:
        problems = []
        if self.milestones != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            problems.append(f"milestones {self.milestones} must be increasing positive epochs.")
        if self.name not in ("step", "piecewise") and self.milestones:
            problems.append(f"milestones are only used by the step and piecewise schedules, not '{self.name}'.")
        if self.name == "piecewise" and len(self.factors) != len(self.milestones) + 1:
            problems.append(f"a piecewise schedule needs one factor more than milestones: {len(self.factors)} "
                            f"factors for {len(self.milestones)} milestones.")
        if self.name != "piecewise" and self.factors:
            problems.append(f"factors are only used by the piecewise schedule, not '{self.name}'.")
        return problems


@dataclass
class Optim:
    """Optimizer and batch settings shared by every training phase (SGD with momentum)."""

    batch_size: int = field(128, low=1)
    momentum: float = field(0.9, low=0, high=1, high_open=True)
    nesterov: bool = False
    weight_decay: float = field(5e-4, low=0)
    schedule: Schedule = field(default_factory=Schedule)


@dataclass
class Pretrain(Optim):
    """How the dense model is obtained: trained with this recipe (once per seed, cached) or loaded."""

    epochs: int = field(30, low=0, doc="0 keeps the freshly initialised model (e.g. to count FLOPs)")
    lr: float = field(0.1, low=0, low_open=True)
    checkpoint: str | None = field(None, doc="a state_dict file (torch.save) to load instead of training")
    best_on: Literal["final", "test", "validation"] = field(
        "final", keyed_at_default=False,
        doc="which dense checkpoint is pruned: final (the last epoch's), or the epoch with the best test accuracy "
            "(test: what the TPP, GReg, RNI and OrthoReg code prune; selected on the test set, so optimistic) or "
            "the best validation accuracy (validation: needs the dataset option validation: N > 0)")
    init: Literal["model", "fan_out"] = field(
        "model", keyed_at_default=False,
        doc="the dense model's initialisation: the model's own, or fan_out (the RNI code's: every conv "
            "N(0, sqrt(2/(k*k*out_channels))), every linear N(0, 0.01) with zero bias, plain BatchNorm scale 0.5 "
            "and shift 0; a bounded BN's scale stays N(0, 1))")


@dataclass
class Retrain(Optim):
    """Retraining after removal; ``lr`` is swept (a list) and is the axis the trainability bias shows on."""

    epochs: int = field(10, low=0)
    lr: list[float] = field(default_factory=lambda: [0.01], low=0, low_open=True, min_items=1)


Ratio = float | dict[str, float]


@dataclass
class Prune:
    """Which layers are pruned and how much: ratios are swept; a ratio is a number or a pattern -> ratio map."""

    ratios: list[Ratio] = field(min_items=1)
    layers: list[str] | None = field(None, doc="glob patterns on module names; default: the model's usual layers")
    skip: list[str] | None = field(None, doc="patterns never pruned; default: the model's usual skips")
    scope: Literal["layerwise", "global"] = "layerwise"
    min_keep: int = field(1, low=1, doc="filters every layer keeps at least, under global ranking "
                         "and in the quantile cuts (rni, slimming cut: quantile); layerwise count cuts ignore it")
    floor_fraction: float = field(0.0, low=0, high=1, high_open=True, keyed_at_default=False,
                                  doc="the floor grows with the layer: int(floor_fraction · n) + min_keep of its n "
                                      "filters (the OrthoReg code's 5% + 1 on VGG and MobileNet: 0.05)")
    floor_keeps: Literal["important", "index"] = field(
        "important", keyed_at_default=False,
        doc="which filters the floor keeps: the most important; index: the highest-index ones, whatever their "
            "score (the OrthoReg code's constrain_ratios)")
    mode: Literal["remove", "mask"] = field(
        "remove", keyed_at_default=False,
        doc="remove: pruned channels are removed physically; mask: they are zeroed and kept at zero through "
            "retraining (shapes unchanged; a layer feeding a residual sum is masked on its own, at its BatchNorm)")
    count_rule: Literal["ceil", "tpp_code"] = field(
        "ceil", keyed_at_default=False,
        doc="filters a layerwise cut removes from N at ratio r: ceil: ceil(r*N) of r*N rounded to 6 decimals, at most "
            "N-1 (0.28 of 25 removes 7); tpp_code: min(ceil(r*N), int(0.995*N)) of the unrounded float product, as "
            "TPP's released code counts (0.28 of 25 removes 8, because 0.28*25 = 7.000000000000001)")

    def validate(self) -> list[str]:
        problems = []
        for i, ratio in enumerate(self.ratios):
            values = ratio.values() if isinstance(ratio, dict) else [ratio]
            if any(not 0 <= v < 1 for v in values):
                problems.append(f"ratios[{i}] = {ratio!r}: a pruning ratio must lie in [0, 1).")
            if isinstance(ratio, dict) and self.scope == "global":
                problems.append(f"ratios[{i}] is a per-layer profile, which needs scope: layerwise.")
        if self.layers is not None and not self.layers:
            problems.append("'layers' is empty: name at least one layer pattern.")
        return problems


@dataclass
class Trainability:
    """Jacobian singular values: on a fixed probe set, for the dense model, after pruning, every k epochs."""

    enabled: bool = True
    samples: int = field(100, low=1, doc="probe inputs drawn (seeded) from the training data")
    every: int = field(1, low=0, doc="compute every k retraining epochs (0: only before and after)")
    mode: Literal["eval", "train_batch"] = field(
        "eval", keyed_at_default=False,
        doc="eval: each sample's Jacobian in eval mode (a property of the network); train_batch: as TPP's code "
            "computes it, the probe as one batch in train mode, BatchNorm's batch statistics coupling the samples "
            "(to set numbers beside the paper's; the model itself is left untouched)")


@dataclass
class Latency:
    """Inference latency of the dense and of the slimmed model: the measured speed-up beside the FLOP ratio.

    Timed with ``torch.utils.benchmark.Timer`` at the run's thread count. Wall-clock, so it varies between
    executions and never enters run ids or determinism checks; the settings enter the prune id (the shared pruned
    model's record holds the figures).
    """

    enabled: bool = True
    batch_size: int = field(64, low=1, doc="inputs per timed forward pass")
    repeats: int = field(20, low=1, doc="timed blocks at least (median and IQR over them), after 5 untimed passes")
    min_time_s: float = field(0.2, low=0, low_open=True, keyed_at_default=False,
                              doc="seconds torch.utils.benchmark's blocked_autorange spends timing, at least")
    backends: list[str] = field(default_factory=lambda: ["eager"], min_items=1, keyed_at_default=False,
                                doc="runtimes to time each model in: eager (PyTorch) and onnxruntime (CPU; the onnx "
                                "extra); eager must be one of them")

    def validate(self) -> list[str]:
        from bench.latency_backends import EAGER, check_backends

        problems = check_backends(self.backends) if self.enabled else []
        if EAGER not in self.backends:
            problems.append(f"latency.backends: {self.backends} leaves out '{EAGER}', the reference every other "
                            "backend is compared with; add it.")
        return problems


@dataclass
class Log:
    """Live logging: each retraining epoch's metrics streamed to trackers while a run trains (``bench.trackers``).

    Never part of any id (it does not change results); a tracker error is a warning, never a failed run.
    """

    tensorboard: str | None = field(None, doc="a directory; each run writes <dir>/<suite>/<run id>/ (relative paths: "
                                    "to the suite file)")
    mlflow: str | None = field(None, doc="a tracking URI, or a directory for a local file store (relative paths: to "
                               "the suite file); one MLflow run per harness run in the experiment <suite>")

    def targets(self, suite_dir: Path | None) -> dict[str, str]:
        """The trackers asked for, with paths resolved against the suite file's directory."""
        found = {}
        for kind, target in (("tensorboard", self.tensorboard), ("mlflow", self.mlflow)):
            if target:
                is_uri = kind == "mlflow" and ("://" in target or target.startswith("file:"))
                path = Path(target).expanduser()
                found[kind] = target if is_uri or path.is_absolute() or suite_dir is None else str(suite_dir / path)
        return found


SUBMITIT_MANAGED = ("array", "output", "error", "open-mode", "signal")  # sbatch options submitit sets itself


@dataclass
class Slurm:
    """How ``run --executor slurm`` submits: one job-array task per run, each with these sbatch resources.

    None leaves an option to the cluster's defaults. Nothing here enters run ids: changing resources never
    changes results.
    """

    partition: str | None = field(None, doc="sbatch --partition")
    account: str | None = field(None, doc="sbatch --account")
    qos: str | None = field(None, doc="sbatch --qos")
    gpus_per_task: int = field(0, low=0, doc="sbatch --gpus-per-task (0: no GPU request; 1 on a GPU cluster)")
    cpus_per_task: int = field(4, low=1, doc="sbatch --cpus-per-task; also the task's torch threads")
    tasks_per_run: int = field(1, low=1, doc="sbatch --ntasks-per-node: processes per run, trained data-parallel "
                               "(DDP) on one node; with gpus_per_task 1, one GPU each")
    mem_gb: float | None = field(None, low=0, low_open=True, doc="sbatch --mem in GB (None: the partition's default)")
    timeout_min: int = field(240, low=1, doc="sbatch --time in minutes; a run that reaches it is requeued and resumes")
    array_parallelism: int = field(256, low=1, doc="sbatch --array=0-N%P: at most this many tasks run at once")
    max_num_timeout: int = field(3, low=0, doc="requeues after reaching the time limit before a task gives up "
                                 "(requeues after preemption are not counted)")
    signal_delay_s: int = field(90, low=1, doc="sbatch --signal=USR2@S: the task checkpoints and requeues itself "
                                "this many seconds before the time limit")
    additional_parameters: dict[str, str | int | float | bool] = field(
        default_factory=dict, doc="extra sbatch options without the dashes, e.g. {constraint: a100, gres: 'gpu:1'}")
    setup: list[str] = field(default_factory=list, doc="shell lines run in the job before the task "
                             "(module load, conda activate)")
    python: str | None = field(None, doc="command that runs Python in the job (default: the submitting interpreter)")
    log_dir: str | None = field(None, doc="submitit's folder of job scripts, pickles and logs, on a filesystem the "
                                "nodes share (default: <results>/<suite>/slurm)")
    dense_job: bool = field(True, doc="train missing dense models in a first job array and start the runs after "
                            "it (afterany), rather than letting run tasks hold GPUs while waiting for them")
    prune_job: bool = field(True, doc="make the missing pruned models that several runs share (the same run but "
                            "for the retraining LR) in a job array before the runs, rather than letting their tasks "
                            "hold GPUs while one of them runs the method's phase")

    def validate(self) -> list[str]:
        managed = sorted(set(self.additional_parameters) & set(SUBMITIT_MANAGED))
        if managed:
            return [f"additional_parameters: {', '.join(managed)} are set by submitit itself; remove them."]
        return []


@dataclass
class Performance:
    """Speed options that change numerics slightly; they enter the run ids when not at their defaults."""

    channels_last: bool = field(False, doc="NHWC memory format for 4-D inputs (faster convolutions on GPUs)")
    amp: Literal["off", "bf16"] = field("off", doc="autocast forward passes to bfloat16")
    compile: bool = field(False, doc="torch.compile the model for training steps")
    fused_optimizer: bool = field(False, doc="fused SGD: one kernel updates every parameter (CUDA and CPU); "
                                             "differs from the default SGD in the last bits")
    sync_batchnorm: bool = field(False, doc="data-parallel runs: BatchNorm statistics of the global batch, not "
                                            "of each rank's slice (SyncBatchNorm; CUDA only)")

    def is_default(self) -> bool:
        return self == Performance()


@dataclass
class Storage:
    """What a finished run keeps on disk (it never changes results, so it is not part of run ids)."""

    keep_final_model: bool = field(True, doc="keep model.pt (the slim model and the channels kept)")
    keep_checkpoints: bool = field(False, doc="keep the last retraining checkpoint.pt too (the shared pruned "
                                              "models under _pruned/ are a cache, kept like _dense/)")


@dataclass
class Budget:
    """An equal training budget: every method trains this many SGD steps at the retraining batch size after the
    shared dense model, its retraining extended (or cut) to reach it exactly (rule: ``bench.cost``)."""

    steps: int | None = field(None, low=1, doc="the budget in SGD steps at the retraining batch size")
    match: str | None = field(None, doc="a method label of the suite whose own spend (phase and retraining) is the "
                              "budget; resolved to steps before run ids are made")
    rule: Literal["last_stage", "stretch"] = field(
        "last_stage", keyed_at_default=False,
        doc="how a retraining is brought to the budget: last_stage (extra epochs at the schedule's last LR, or the run "
            "cut short at the budget) or stretch (a step or piecewise schedule's milestones scaled by the retraining "
            "steps left under the budget over the recipe's own, so every LR stage grows or shrinks in proportion; a "
            "cosine schedule follows the epochs: stretched when extended under either rule, compressed when cut only "
            "under stretch)")

    def validate(self) -> list[str]:
        if (self.steps is None) == (self.match is None):
            return ["give exactly one of 'steps' (a number of SGD steps) or 'match' (a method of the suite)."]
        return []


@dataclass
class Suite:
    """One experiment: a model and dataset, a dense recipe, and the swept methods, ratios, LRs and seeds."""

    name: str
    model: str
    dataset: str | dict[str, Any]
    prune: Prune
    methods: list[str | dict[str, dict[str, Any] | None]] = field(min_items=1)
    seeds: list[int] = field(default_factory=lambda: [0], min_items=1)
    description: str = ""
    data_root: str | None = None
    pretrain: Pretrain = field(default_factory=Pretrain)
    retrain: Retrain = field(default_factory=Retrain)
    trainability: Trainability = field(default_factory=Trainability)
    latency: Latency = field(default_factory=Latency)
    device: str = field("auto", doc="auto, cpu, cuda or cuda:N")
    performance: Performance = field(default_factory=Performance)
    storage: Storage = field(default_factory=Storage)
    log: Log = field(default_factory=Log)
    plugins: list[str] = field(default_factory=list)
    slurm: Slurm = field(default_factory=Slurm)
    budget: Budget | None = field(None, doc="equal-budget comparison: {steps: N} or {match: METHOD}; enters run ids "
                                  "only when set")
    reference: str | None = field(None, doc="published numbers the report prints beside ours: a shipped name "
                                  "(tpp_table1) or a CSV path; not part of any run id")

    def validate(self) -> list[str]:
        problems = []
        if len(set(self.seeds)) != len(self.seeds):
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
        size = expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise ConfigError(f"the YAML document expands, through its aliases (*name), to more than "
                              f"{MAX_YAML_NODES:,} values; a suite needs far fewer. Write the values out, or "
                              "use fewer aliases.")
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
    raw = apply_overrides(read_yaml(path), list(overrides))
    try:
        return parse(Suite, _normalise(raw))
    except ConfigError as err:
        raise ConfigError(err.problems, str(path)) from None
