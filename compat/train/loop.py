"""Train one version: the epoch loop, with a checkpoint every epoch and exact resume.

Reads top to bottom like torchvision's reference ``main``: data batches -> model and frozen old
model -> method loss -> optimiser and schedule -> DDP wrap (the unwrapped model is kept) -> resume
-> epoch loop -> atomic checkpoint on rank 0.

Batches are planned per epoch from ``(seed, epoch)`` alone (:class:`compat.data.HalfHalfBatchSampler`), so a resumed run sees exactly the
batches an uninterrupted run would have seen; RNG states are restored from the checkpoint for
everything else (augmentation, dropout).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compat.methods.base import Method
from compat.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from compat.train.config import TrainConfig
from compat.train.distributed import DistributedContext
from compat.train.optim import build_optimizer, build_scheduler
from compat.train.step import backward_step

__all__ = ["EpochStats", "plan_batches", "train_version"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    parts: dict[str, float]
    lr: float


def plan_batches(
    new_indices: np.ndarray, memory_indices: np.ndarray, batch_size: int, *, seed: int, epoch: int
) -> list[np.ndarray]:
    """The batches of one epoch, decided by ``(seed, epoch)`` only (half memory when there is one)."""
    from compat.data import HalfHalfBatchSampler

    sampler = HalfHalfBatchSampler(new_indices, memory_indices, batch_size, seed=seed)
    sampler.set_epoch(epoch)
    return [np.asarray(b, dtype=np.int64) for b in sampler]


def _batch(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
    return images, labels


class _Batches(torch.utils.data.Dataset):
    """A dataset of planned batches, so a DataLoader's workers can assemble them in parallel."""

    def __init__(self, dataset, batches: Sequence[np.ndarray]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        images, labels = _batch(self.dataset, self.batches[i])
        return images, labels, torch.from_numpy(self.batches[i])


def train_version(
    model: nn.Module,
    method: Method,
    *,
    dataset,
    new_indices: np.ndarray,
    memory_indices: np.ndarray,
    old_model: nn.Module | None,
    cfg: TrainConfig,
    seed: int,
    device: str,
    checkpoint_path: Path,
    resume: bool,
    extra_state: dict | None = None,
    num_workers: int = 0,
    dist: DistributedContext | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    cached: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``cfg.epochs`` epochs and return it (unwrapped).

    Args:
        model: the new model (already initialised: from scratch, the previous version, or a checkpoint).
        method: the loss; ``method.prepare`` must have been called.
        dataset: the training dataset (items ``(image, label)``).
        new_indices: dataset indices of this version's new data.
        memory_indices: indices of the rehearsal memory (empty for no rehearsal).
        old_model: the frozen previous model when the method needs one.
        cfg: optimiser, schedule, epochs, AMP, clipping.
        seed: seeds the batch plan.
        device: ``cpu`` or ``cuda[:N]``.
        checkpoint_path: written after every epoch; read back when ``resume``.
        resume: continue from ``checkpoint_path`` when it exists.
        extra_state: saved in the checkpoint as is (the resolved recipe, the label map...).
        dist: torch.distributed context (rank, world size) when launched by torchrun.
        on_epoch: called with each epoch's statistics (rank 0).
        cached: features computed once per dataset index, looked up per batch: ``"old"`` (the old
            model's, when ``method.old_features == "cached"``) and ``"teacher"``.
    """
    cached = cached or {}
    dist = dist or DistributedContext.single()
    model.to(device)
    if old_model is not None:
        old_model.to(device).eval()
        for p in old_model.parameters():
            p.requires_grad_(False)
    memory_set = torch.from_numpy(np.asarray(memory_indices, dtype=np.int64))
    steps_per_epoch = len(plan_batches(new_indices, memory_indices, cfg.batch_size, seed=seed, epoch=0))
    steps_per_epoch = max(1, steps_per_epoch // dist.world_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    use_amp = cfg.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    train_model = dist.wrap(model)

    start_epoch = 0
    if resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        logger.info("resumed %s at epoch %d", checkpoint_path, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        batches = plan_batches(new_indices, memory_indices, cfg.batch_size, seed=seed, epoch=epoch)
        batches = dist.shard(batches)[:steps_per_epoch]
        loader = torch.utils.data.DataLoader(
            _Batches(dataset, batches), batch_size=None, shuffle=False, num_workers=num_workers,
            persistent_workers=False,
        )
        totals = {"loss": 0.0, "correct": 0, "seen": 0}
        parts_sum: dict[str, float] = {}
        bar = _progress(loader, epoch, cfg.epochs, enabled=progress and dist.is_main)
        for images, labels, idx in bar:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
            with autocast:
                out = train_model(images)
                old_features = cached["old"][idx.to(cached["old"].device)] if "old" in cached else None
                if old_model is not None and method.old_features == "batch":
                    with torch.no_grad():
                        old_features = old_model.embed(images)
                teacher = cached["teacher"][idx.to(cached["teacher"].device)] if "teacher" in cached else None
                from_memory = torch.isin(idx, memory_set).to(device) if len(memory_set) else None
                result = method.loss(out.features, out.logits, labels, old_features=old_features,
                                     from_memory=from_memory, teacher_features=teacher,
                                     head_features=out.head_features)
            backward_step(result.total, optimizer, scaler, cfg.grad_clip, list(model.parameters()))
            scheduler.step()
            n = len(labels)
            totals["loss"] += float(result.total.detach()) * n
            totals["correct"] += int((out.logits.detach().argmax(1) == labels).sum())
            totals["seen"] += n
            for k, v in result.parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * n
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.4f}",
                                acc=f"{totals['correct'] / totals['seen']:.3f}")
        seen = max(1, totals["seen"])
        stats = EpochStats(epoch, totals["loss"] / seen, totals["correct"] / seen,
                           {k: v / seen for k, v in parts_sum.items()}, scheduler.get_last_lr()[0])
        if dist.is_main:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch,
                "rng": rng_state(),
                **(extra_state or {}),
            })
            if on_epoch is not None:
                on_epoch(stats)
        dist.barrier()
    return model


def _progress(loader, epoch: int, epochs: int, *, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
