"""The sections of a suite (pretrain, retrain, prune, trainability, latency, log, slurm, performance, storage,
budget) as typed, bounded dataclasses; ``config`` assembles them into a ``Suite`` and loads it from YAML."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.core.schema import field


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
    init: Literal["model", "fan_out", "torch_default"] = field(
        "model", keyed_at_default=False,
        doc="the dense model's initialisation: the model's own, fan_out (the RNI code's: every conv "
            "N(0, sqrt(2/(k*k*out_channels))), every linear N(0, 0.01) with zero bias, plain BatchNorm scale 0.5 "
            "and shift 0; a bounded BN's scale stays N(0, 1)), or torch_default (the OrthoReg code's: PyTorch's "
            "own layer init, conv and linear weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BatchNorm 1 and 0)")


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
    count_rule: str = field(
        "ceil", keyed_at_default=False,
        doc="filters a layerwise cut removes from N at ratio r, by a registered count rule: ceil: ceil(r*N) of r*N "
            "rounded to 6 decimals, at most N-1 (0.28 of 25 removes 7); methods register their codes' rules, e.g. "
            "tpp_code: min(ceil(r*N), int(0.995*N)) of the unrounded float product, as TPP's released code counts "
            "(0.28 of 25 removes 8, because 0.28*25 = 7.000000000000001)")

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
        # Unknown, repeated or uninstalled backends are refused where the suite expands (bench.suite.grid), beside
        # the other registered names: the backends live in bench.training.latency_backends, above this floor.
        if "eager" not in self.backends:
            return [f"backends {self.backends} leaves out 'eager', the reference every other backend is "
                    "compared with; add it."]
        return []


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
class Execution:
    """How runs are executed, never what they compute (not part of run ids): fused retraining of the runs that
    differ only in LR or seed, and fused training of the dense models that differ only in the seed (docs/fusion.md)."""

    fuse: Literal["auto", "on", "off"] | bool = field(
        "auto", doc="retrain runs of one architecture and recipe (apart from the LR), and train dense models that "
                    "differ only in the seed, as one horizontally fused model: "
                    "auto = where measured to pay (the MLP family's retraining; not dense training), on = wherever "
                    "supported, off = never (YAML's "
                    "unquoted on/off, read as true/false, mean the same)")
    max_members: int = field(64, low=1, doc="the most runs (or dense models) one fused group trains at once")

    def __post_init__(self) -> None:
        if isinstance(self.fuse, bool):  # YAML 1.1 reads an unquoted on/off as true/false
            self.fuse = "on" if self.fuse else "off"


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
class SeedPlan:
    """Seeds grown in rounds (``bench.py run --until-decided``): seeds 0 .. start-1 first, then ``step`` more at a
    time to the cells whose comparisons are neither decided nor futile, up to ``max``; the report tests them with a
    group-sequential design over those looks (``bench.report.sequential``)."""

    start: int = field(low=3, high=1000, doc="seeds every cell runs first (at least 3: fewer test nothing)")
    max: int = field(low=3, high=1000, doc="the most seeds a cell gets")
    step: int = field(low=1, high=1000, doc="seeds a round adds to each undecided cell")
    futility: float = field(0.1, low=0, high=1, high_open=True, doc="a comparison stops as futile when its "
                            "conditional power at max seeds, under the trend seen so far, is below this (0: never)")
    spending: Literal["obrien-fleming", "pocock"] = field(
        "obrien-fleming", doc="the Lan-DeMets alpha-spending function over the looks: obrien-fleming spends little "
        "early and keeps the final test near the fixed one; pocock spends more early (earlier stops at large "
        "differences, less power at max)")

    def validate(self) -> list[str]:
        if self.max < self.start:
            return [f"max ({self.max}) is below start ({self.start}); give max >= start."]
        return []

    @property
    def seeds(self) -> list[int]:
        """Every seed a cell may get, in the order rounds add them: 0 .. max-1."""
        return list(range(self.max))
