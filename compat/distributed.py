"""torch.distributed when launched by ``torchrun``; a single process otherwise. No cluster code of our own.

:class:`DistributedContext` says which rank this process is. Training wraps its model in DDP with it;
sharded extraction and distributed evaluation exchange small numpy arrays through the collectives
below (gloo on CPU, NCCL on CUDA), which do nothing in a single process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from compat.errors import CompatError

__all__ = ["DistributedContext"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """This process's rank among ``world_size`` (``local_rank`` on its node).

    Attributes:
        backend: ``gloo`` or ``nccl`` when a process group is in use, else ``None``.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None = None

    @classmethod
    def single(cls) -> DistributedContext:
        return cls(0, 1, 0)

    @classmethod
    def from_env(cls, device: str) -> DistributedContext:
        """Initialise the process group when ``torchrun`` set ``WORLD_SIZE`` > 1 (NCCL on CUDA, else gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        import torch
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """``cuda`` becomes this process's ``cuda:LOCAL_RANK`` under torchrun."""
        return f"cuda:{self.local_rank}" if self.enabled and device == "cuda" else device

    def wrap(self, model: Any) -> Any:
        """``model`` in DistributedDataParallel when several processes train it."""
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

    def close(self) -> None:
        """Wait for every rank, then leave the process group (a rank that exits while others still
        exchange data would break their last collective)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()

    # ------------------------------------------------------------------ collectives over numpy arrays

    def _tensor(self, x: np.ndarray):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.cuda() if self.backend == "nccl" else t

    def all_reduce_sum(self, x: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``x`` (same shape and dtype on every rank) over the ranks."""
        if not self.enabled:
            return x
        import torch.distributed as dist

        t = self._tensor(x)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def all_reduce_max(self, x: np.ndarray) -> np.ndarray:
        """Element-wise maximum of ``x`` over the ranks."""
        if not self.enabled:
            return x
        import torch.distributed as dist

        t = self._tensor(x)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().numpy()

    def all_gather(self, x: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``x`` (same dtype and trailing shape; the first dimension may differ), in rank order."""
        if not self.enabled:
            return [x]
        import torch.distributed as dist

        x = np.ascontiguousarray(x)
        sizes = [self._tensor(np.zeros(1, dtype=np.int64)) for _ in range(self.world_size)]
        dist.all_gather(sizes, self._tensor(np.array([len(x)], dtype=np.int64)))
        lengths = [int(s.item()) for s in sizes]
        padded = np.zeros((max(lengths), *x.shape[1:]), dtype=x.dtype)
        padded[: len(x)] = x
        out = [self._tensor(np.zeros_like(padded)) for _ in range(self.world_size)]
        dist.all_gather(out, self._tensor(padded))
        return [t.cpu().numpy()[:n] for t, n in zip(out, lengths, strict=True)]

    def first_error(self, message: str | None) -> str | None:
        """The first rank's error message among the ranks (``None`` when no rank has one).

        Every rank calls it at the same point, so that a bad input met on one rank stops all of them
        instead of leaving the others waiting in a collective.
        """
        if not self.enabled:
            return message
        text = np.frombuffer((message or "").encode("utf-8"), dtype=np.uint8)
        for part in self.all_gather(text):
            if len(part):
                return part.tobytes().decode("utf-8")
        return None

    def agree(self, fn: Callable[[], T], *, close: bool = True) -> T:
        """``fn()`` on every rank; a :class:`CompatError` on any rank is raised on all of them.

        For steps that check input (loading feature sets): a rank that finds bad input would
        otherwise leave the others waiting in their next collective. With ``close`` (commands, which
        then exit) the process group is destroyed before raising; a library caller keeps it.
        """
        try:
            result, message = fn(), None
        except CompatError as exc:
            result, message = None, str(exc)
        message = self.first_error(message)
        if message is not None:
            if close:
                self.close()
            raise CompatError(message)
        return result
