"""Running a function on several gloo ranks in a test (CPU, torch.multiprocessing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compat.distributed import DistributedContext


def _entry(rank: int, world: int, init_file: str, fn: Callable[..., None], args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(DistributedContext(rank, world, rank, "gloo"), *args)
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, tmp: Path, fn: Callable[..., None], *args) -> None:
    """``fn(context, *args)`` on ``world`` gloo processes; ``fn`` must be importable (module level)."""
    import torch.multiprocessing as mp

    init = tmp / f"rendezvous-{world}"
    init.unlink(missing_ok=True)
    mp.spawn(_entry, args=(world, str(init), fn, args), nprocs=world, join=True)
