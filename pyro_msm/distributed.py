"""Data parallelism on :mod:`torch.distributed`: which rows are mine, and global statistics.

Everything here is a no-op in a single process (no process group initialised), so library code
can call it unconditionally. Launch with ``torchrun --nproc_per_node=K script.py`` and
initialise the group with :func:`init_from_environment` (gloo on CPU, NCCL on GPUs).

Two rules keep results independent of the number of ranks (up to floating-point order):

- every rank draws the same global row indices (same seed), and takes its contiguous shard of
  them (:func:`shard`);
- whatever is estimated once per data set is reduced over ranks before use
  (:func:`all_reduce_sum`, e.g. the sufficient statistics of
  :class:`~pyro_msm.streaming.MomentAccumulator`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "World",
    "world",
    "is_distributed",
    "init_from_environment",
    "shutdown",
    "exit_rank",
    "shard_bounds",
    "shard",
    "all_reduce_sum",
    "broadcast",
    "broadcast_object",
]


@dataclass(frozen=True)
class World:
    """This process's place among the ranks.

    :param rank: index of this process, ``0 <= rank < size``.
    :param size: number of processes.
    """

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """Rank and size of the current process group (``World(0, 1)`` without one)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_environment(backend: str | None = None) -> World:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group already exists.

    :param backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
    :returns: this process's :class:`World`.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return world()


def shutdown() -> None:
    """Tear down the default process group after every rank has reached this call.

    The barrier matters with gloo: a rank that destroys its group while a peer still finishes a
    collective closes the peer's connections under it, and the peer aborts (``terminate called
    without an active exception``, exit signal SIGABRT). Does nothing without a process group.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_rank(code: int = 0) -> None:
    """End a rank's process now, after :func:`shutdown`: flush standard output and error and
    exit with ``code`` without the interpreter's teardown (:func:`os._exit`).

    With gloo a rank that returned from :func:`shutdown` could still abort at interpreter
    teardown (``terminate called without an active exception``, SIGABRT: the order in which
    static objects and gloo's threads are destroyed), in 2 of 60 two-rank runs measured here;
    ending the process before teardown, 0 of 60. Call it as the last statement of a rank's
    entry point (a ``torchrun`` script's ``__main__`` block, a ``torch.multiprocessing.spawn``
    target), never from library code: ``atexit`` handlers do not run, so write and close
    files before. Without a process group it still exits (so a script behaves the same with
    one rank).

    :param code: the exit status.
    """
    import sys

    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(int(code))


def shard_bounds(n: int, rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``n`` items that ``rank`` owns.

    Blocks differ in length by at most one and cover ``range(n)`` exactly once.

    :param n: number of items (rows, or indices of a global minibatch).
    :param rank: default: this process's rank. :param size: default: the world size.
    """
    here = world()
    rank = here.rank if rank is None else int(rank)
    size = here.size if size is None else int(size)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Tensor, rank: int | None = None, size: int | None = None) -> Tensor:
    """This rank's contiguous shard of ``items`` along the first dimension (see
    :func:`shard_bounds`)."""
    start, stop = shard_bounds(int(items.shape[0]), rank, size)
    return items[start:stop]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks, in place, and return it (unchanged in a single process).

    With NCCL the tensor must be on this rank's GPU; with gloo on the CPU. Integer and boolean
    tensors are summed as int64 (gloo has no bool sum).
    """
    if not is_distributed():
        return tensor
    if tensor.dtype == torch.bool:
        widened = tensor.to(torch.int64)
        dist.all_reduce(widened, op=dist.ReduceOp.SUM)
        tensor.copy_(widened != 0)
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s value, in place."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` (any picklable object) on every rank; ``value`` itself in a
    single process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
