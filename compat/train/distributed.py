"""torch.distributed when launched by ``torchrun``; a single process otherwise. No cluster code of our own."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

__all__ = ["DistributedContext"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def single(cls) -> DistributedContext:
        return cls(0, 1, 0)

    @classmethod
    def from_env(cls, device: str) -> DistributedContext:
        """Initialise the process group when ``torchrun`` set ``WORLD_SIZE`` > 1 (NCCL on CUDA, else gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """``cuda`` becomes this process's ``cuda:LOCAL_RANK`` under torchrun."""
        return f"cuda:{self.local_rank}" if self.enabled and device == "cuda" else device

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of a list planned identically on every rank."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
