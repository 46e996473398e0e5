"""Data parallel for the `harness` lm-eval model: `accelerate launch -m lm_eval ...` (or
torchrun) starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; lm-eval
gives each rank its share of the requests when the model reports its rank and world size,
then gathers the results on rank 0 through the model's collectives. These come from
torch.distributed: NCCL on CUDA, Gloo on the CPU, initialised from the launcher's
environment (MASTER_ADDR, MASTER_PORT) when the launcher has not done it already.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int  # this process among all of them
    world_size: int  # processes in all
    local_rank: int  # this process among those of its machine: its GPU there

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """What the launcher says (accelerate and torchrun both set these); one process if none."""
    return Ranks(
        rank=int(environ.get("RANK", "0")),
        world_size=int(environ.get("WORLD_SIZE", "1")),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
    )


def device_for(device: str, ranks: Ranks) -> str:
    """Under data parallel, a CUDA device means this process's own GPU (cuda:LOCAL_RANK)."""
    if ranks.parallel and device.startswith("cuda"):
        return f"cuda:{ranks.local_rank}"
    return device


def join(ranks: Ranks, device: str) -> None:
    """Join the process group of the launch (once per process); leave it at exit."""
    if ranks.parallel and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size)
        atexit.register(leave)


def leave() -> None:
    """Wait for every rank, then close the group: a rank that exits while its peers still
    hold connections to it makes Gloo abort them (SIGABRT) instead of letting them finish."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor, concatenated in rank order (a scalar counts as one element)."""
    piece = tensor.reshape(1) if tensor.dim() == 0 else tensor
    pieces = [torch.empty_like(piece) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, piece.contiguous())
    return torch.cat(pieces)


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's object, in rank order, on `dst`; None on the others."""
    found: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, found, dst=dst)
    return found


def barrier() -> None:
    dist.barrier()
