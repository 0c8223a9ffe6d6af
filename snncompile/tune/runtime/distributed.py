"""Data-parallel tuning under ``torchrun`` (torch.distributed: gloo on CPU, nccl on GPU).

Every process holds the whole network and the same data; each batch (drawn from a
permutation every process draws alike from the seed) is split across the processes, their
gradients are averaged with all-reduce before each step, so all copies stay identical.
Validation decisions come from rank 0 so the schedule cannot diverge; only rank 0 writes.
Gradients are averaged by hand rather than through DistributedDataParallel because the
tandem forward is not a plain module call (integer simulation plus straight-through).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1);
    returns whether this run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return True


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes."""
    n = world_size()
    if n == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= n


def total(value: float) -> float:
    """Sum of a number over the processes."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def from_rank0(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group (every process, once tuning is over)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
