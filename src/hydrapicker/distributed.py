"""Running on several processes under ``torchrun``: the process group, rank-0-only work, sharding.

``torchrun --nproc-per-node N`` (or one ``torchrun`` per node under SLURM's ``srun``) starts N
copies of the command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment.
:func:`session` reads them and joins the process group (``gloo`` on the CPU, ``nccl`` when the
work runs on CUDA, one GPU per local rank); without them everything here is the single-process
case (rank 0 of 1), so the same code runs with and without ``torchrun``.

What the verbs do with several processes:

- ``train``: DistributedDataParallel; each rank draws its own whole single-dataset batches
  (:mod:`hydrapicker.training.loop`); rank 0 alone writes checkpoints, logs and plots.
- ``pick``: :func:`hydrapicker.picking.runner.pick_files_sharded`: rank ``r`` of ``W`` picks micrographs ``r, r + W, ...``
  into the shared output folder, then rank 0 merges ``OUT/picks.csv`` once every rank is done.

All ranks must see the same file system (the output folder is shared).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from hydrapicker.errors import HydraPickerError

__all__ = [
    "Launch",
    "all_gather",
    "barrier",
    "from_environment",
    "is_distributed",
    "is_main",
    "rank",
    "session",
    "shard",
    "world_size",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` launch (``rank`` 0 of ``world_size`` 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def from_environment(environ: dict[str, str] | None = None) -> Launch:
    """The launch ``torchrun`` describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (single process when absent)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return Launch()
    try:
        launch = Launch(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise HydraPickerError(
            f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}: "
            "not the integers torchrun sets"
        ) from None
    if not (launch.world_size >= 1 and 0 <= launch.rank < launch.world_size and launch.local_rank >= 0):
        raise HydraPickerError(
            f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}: the rank must be in [0, WORLD_SIZE)"
        )
    return launch


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes share the work (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on the process that writes shared files (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world_size]`` (round-robin, so a sorted list of
    micrographs spreads evenly however their sizes run)."""
    return list(items[rank() :: world_size()])


@contextlib.contextmanager
def session(device: str = "cpu", backend: str | None = None) -> Iterator[Launch]:
    """Join the ``torchrun`` process group for the block, and leave it after.

    Without ``torchrun`` (or with one process) no group is made. ``device`` is where the work
    runs: ``"cuda"`` makes ``cuda`` mean GPU ``LOCAL_RANK mod GPUs`` of the node, and the
    ``backend`` default ``nccl`` (else ``gloo``). ``pick`` asks for ``gloo`` on GPUs too: it
    exchanges only a few Python objects, and gloo, unlike nccl, lets several ranks share a GPU
    (picking one micrograph leaves the GPU idle most of the time: benchmarks/pick_throughput.py).
    A group made elsewhere (the caller's) is used as it is and left alone.
    """
    launch = from_environment()
    if launch.world_size == 1 or dist.is_initialized():
        yield launch
        return
    if not dist.is_available():
        raise HydraPickerError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    on_gpu = str(device).startswith("cuda") and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    backend = backend or ("nccl" if on_gpu else "gloo")
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size)
    try:
        yield launch
    finally:
        dist.destroy_process_group()
