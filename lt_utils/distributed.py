"""Distributed plumbing: whether this process is one rank of a torchrun job, joining its group, and the few
collectives that shard an evaluation over the ranks and keep them in step."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def dist_info(distributed: bool | None = None) -> tuple[bool, int, int]:
    """``(on, rank, world_size)``. On when a process group is initialised (unless ``distributed=False``), or when
    ``distributed=True`` and torchrun's ``WORLD_SIZE`` > 1 (the group is then initialised here from the env)."""
    if distributed is False or not dist.is_available():
        return False, 0, 1
    if not dist.is_initialized() and distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_distributed()
    if not dist.is_initialized():
        return False, 0, 1
    return True, dist.get_rank(), dist.get_world_size()


def init_distributed() -> None:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs)."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("Distributed training needs torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR): "
                           "launch with `torchrun --nproc_per_node=N ...`, or train without distributed=True.")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # so "cuda" means this process's GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


# ------------------------------------------------------------------------------------- sharded evaluation
def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)``: rank ``rank``'s contiguous slice of ``n`` rows split among ``world_size`` ranks, in rank
    order, sizes differing by at most one (the later ranks take the extra rows)."""
    if n < 0 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range needs n >= 0 and 0 <= rank < world_size, got n={n}, rank={rank}, "
                         f"world_size={world_size}.")
    return n * rank // world_size, n * (rank + 1) // world_size


def _comm_device() -> torch.device:
    """Where the process group's collectives take their tensors (NCCL: this process's GPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` rows whose slice ``shard_range(n, rank, world_size)`` each rank holds in ``local``, gathered on
    every rank in rank order (each shard padded to the longest for ``all_gather``, the padding dropped), on
    ``local``'s device. Without a process group: ``local`` itself."""
    on, rank, world_size = dist_info()
    start, stop = shard_range(n, rank, world_size)
    if len(local) != stop - start:
        raise ValueError(f"gather_rows: rank {rank} holds {len(local)} rows, but its slice of {n} rows over "
                         f"{world_size} ranks is [{start}, {stop}): pass this rank's rows shard_range(n, rank, "
                         "world_size) of the full result.")
    if not on:
        return local
    sizes = [b - a for a, b in (shard_range(n, r, world_size) for r in range(world_size))]
    padded = local.new_zeros((max(sizes), *local.shape[1:]), device=_comm_device())
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(local.device)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank waits for all: a barrier that carries a failure, so a rank
    can stop with the others rather than leave them waiting in a collective). Without a process group: ``flag``."""
    if not dist_info()[0]:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj=None, src: int = 0):
    """Rank ``src``'s ``obj`` (any picklable value, e.g. a cached result of CPU tensors) on every rank; without a
    process group, ``obj`` itself."""
    if not dist_info()[0]:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]
