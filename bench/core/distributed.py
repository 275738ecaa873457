"""Data-parallel runs (DistributedDataParallel): several processes execute one run together.

Every process (rank) walks the same pipeline on the same seeded model. In training each rank takes its slice
of every global batch and DDP averages the gradients, so the optimizer sees the full batch's mean gradient as
in a one-process run; evaluation is split across ranks and summed. Rank 0 alone writes files and takes run
locks; every decision that depends on the file system (is the run finished, is there a checkpoint) is taken
on rank 0 and broadcast, so all ranks follow the same path and issue the same collectives.

The process group comes from the usual environment variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``), set by ``torchrun``, by ``bench.py run --nproc N`` (``spawn`` below) or,
on Slurm, by submitit's ``TorchDistributedEnvironment`` in a job with several tasks per node.

Known differences from one process, by design of data parallelism: BatchNorm normalises each rank's slice
with that slice's statistics (``performance.sync_batchnorm`` makes them global on CUDA), and sums are
reduced in another order, so results agree within floating-point tolerance rather than bit for bit.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a rank waits for the others at a collective before giving up (a crashed rank stalls the rest).
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("BENCH_DDP_TIMEOUT_MIN", "30")))


def active() -> bool:
    """Whether this process is one rank of a data-parallel group of two or more."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files, logs and draws progress bars."""
    return rank() == 0


def requested() -> bool:
    """Whether the environment asks for a process group (torchrun, ``--nproc`` or a Slurm multi-task job)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialize(device: torch.device) -> torch.device:
    """Join the process group the environment describes; returns this rank's device.

    CUDA ranks use NCCL and the GPU of their local rank (modulo the GPUs visible, since Slurm may show each
    task only its own); CPU ranks use gloo. A no-op returning ``device`` when no group is asked for.
    """
    if not requested() or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, backend)
    if device.type == "cuda":
        refuse_shared_gpus(device)
    return device


def check_gpus_for(nproc: int, device: str) -> None:
    """Before ``--nproc`` spawns its ranks on this machine: CUDA ranks need a GPU each (ConfigError otherwise)."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    visible = torch.cuda.device_count() if cuda else 0
    if cuda and nproc > visible:
        from bench.core.errors import ConfigError

        raise ConfigError(f"--nproc {nproc} on CUDA needs {nproc} GPUs, {visible} visible (NCCL cannot put two ranks "
                          f"on one GPU); use --nproc {visible} or fewer, or --device cpu.")


def shared_gpus(placements: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
    """The GPUs (host, device UUID) that two or more ranks landed on, with those ranks; ``placements[rank]``."""
    ranks: dict[tuple[str, str], list[int]] = {}
    for i, placement in enumerate(placements):
        ranks.setdefault(tuple(placement), []).append(i)  # type: ignore[arg-type]
    return {gpu: on for gpu, on in ranks.items() if len(on) > 1}


def refuse_shared_gpus(device: torch.device) -> None:
    """Fail every rank alike when ranks on one node resolved to the same physical GPU (``LOCAL_RANK`` modulo the
    visible GPUs: more ranks than GPUs), with how many GPUs the run needs; ranks on distinct GPUs, e.g. Slurm tasks
    that each see one GPU as cuda:0, pass. Compares device UUIDs, which are unique per physical GPU."""
    placements: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(placements, (socket.gethostname(), str(torch.cuda.get_device_properties(device).uuid)))
    shared = shared_gpus(placements)
    if shared:
        from bench.core.errors import UserError

        host = next(iter(shared))[0]
        needed = sum(1 for h, _ in placements if h == host)
        raise UserError(f"data-parallel ranks {', '.join(map(str, sorted(r for on in shared.values() for r in on)))} "
                        f"share a GPU on {host}: the run needs {needed} GPUs there, {torch.cuda.device_count()} "
                        "visible. Start as many ranks per node as it has GPUs.")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object); the value itself without a group."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def main_only(action: Callable[[], None], what: str) -> None:
    """Run ``action`` (a file write) on rank 0 only; all ranks wait for it and fail together if it fails."""
    if not active():
        action()
        return
    error: BaseException | None = None
    if is_main():
        try:
            action()
        except BaseException as err:  # re-raised below, after the other ranks learn of it
            error = err
    failure = agree(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failure is not None:
        from bench.core.errors import UserError

        raise UserError(f"rank 0 failed to {what}: {failure}")


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous slice of each tensor along dimension 0 (the whole tensors without a group)."""
    if not active():
        return tensors
    return tuple(t.tensor_split(world_size())[rank()] for t in tensors)


def sum_across(*tensors: torch.Tensor) -> None:
    """Sum each tensor in place over all ranks (the per-rank loss and accuracy counters of an epoch)."""
    if active():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """``model`` inside DistributedDataParallel when data-parallel, for the forward pass of training.

    With ``sync_batchnorm`` the model's plain BatchNorms are swapped, in place, for SyncBatchNorms sharing their
    parameters and running statistics; ``unwrap`` swaps them back after training, so the rest of the pipeline
    (selection, the slicer, checkpoints) only ever sees the usual modules.
    """
    if not active():
        return model
    if sync_batchnorm:
        from bench.core.errors import ConfigError

        if device.type != "cuda":
            raise ConfigError("performance.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel).")
        swap_in_sync_batchnorms(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def swap_in_sync_batchnorms(model: nn.Module) -> int:
    """Replace every plain BatchNorm of ``model`` by a SyncBatchNorm sharing its tensors; returns how many."""
    from bench.core.errors import ConfigError

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) not in PLAIN_BATCHNORMS:
                raise ConfigError(f"performance.sync_batchnorm: '{name}' is a {type(child).__name__}, not a plain "
                                  "BatchNorm (e.g. RNI's bounded one); switch sync_batchnorm off for this method.")
            if type(child) in PLAIN_BATCHNORMS:
                synced = nn.SyncBatchNorm.convert_sync_batchnorm(child)  # the same parameter and buffer tensors
                object.__setattr__(synced, "_plain_original", child)     # not a submodule: state_dict keys unchanged
                setattr(parent, name, synced)
                swapped += 1
    return swapped


def unwrap(model: nn.Module) -> None:
    """Undo ``wrap``'s BatchNorm swap (a no-op when nothing was swapped): the originals share the trained tensors."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            original = child.__dict__.get("_plain_original")
            if isinstance(child, nn.SyncBatchNorm) and original is not None:
                setattr(parent, name, original)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, nproc: int, port: int, entry: Callable[[Sequence[str]], int],
             argv: Sequence[str], codes: Any) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    codes[local_rank] = entry(argv)


def spawn(nproc: int, entry: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """Run ``entry(argv)`` in ``nproc`` fresh processes forming one group on this machine; the worst exit code.

    What ``torchrun --nproc-per-node N`` does, without needing it on the PATH.
    """
    import torch.multiprocessing as mp

    codes = mp.get_context("spawn").Array("i", [255] * nproc)
    try:
        mp.start_processes(_spawned, args=(nproc, free_port(), entry, list(argv), codes), nprocs=nproc,
                           start_method="spawn", join=True)
    except mp.ProcessExitedException as err:  # a rank was killed (out of memory, SIGKILL): the others are stopped
        log.error("data-parallel rank %d died (exit code %s); the other ranks were stopped. Finished work is kept: "
                  "run the same command again to resume.", err.error_index, err.exit_code)
        return 1
    except mp.ProcessRaisedException as err:
        log.error("data-parallel rank %d failed: %s", err.error_index, str(err).strip().splitlines()[-1])
        return 1
    return max(codes)
