"""Distributed training plumbing: whether this process is one rank of a torchrun job, and joining its group."""
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
