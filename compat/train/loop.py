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

from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.methods.base import Method
from compat.models.io import load_checkpoint, save_checkpoint
from compat.progress import progress as progress_bar
from compat.train.checkpoint import rng_state, set_rng_state
from compat.train.config import TrainConfig
from compat.train.optim import build_optimizer, build_scheduler
from compat.train.resume import check_same_training
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


@dataclass
class _Optimisation:
    """The optimiser, its per-iteration schedule, the AMP scaler (CUDA only) and the steps per epoch."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    steps_per_epoch: int


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
        progress: a bar per epoch on a terminal (rank 0).
        cached: features computed once per dataset index, looked up per batch: ``"old"`` (the old
            model's, when ``method.old_features == "cached"``) and ``"teacher"``.
    """
    dist = dist or DistributedContext.single()
    model.to(device)
    if old_model is not None:
        old_model.to(device).eval()
        for p in old_model.parameters():
            p.requires_grad_(False)
    opt = _optimisation(model, cfg, new_indices, memory_indices, seed=seed, world_size=dist.world_size, device=device)
    train_model = dist.wrap(model)
    start_epoch = 0
    if resume and checkpoint_path.is_file():
        start_epoch = _resume(checkpoint_path, model, opt, device, expected=extra_state or {})
    step = _Step(method, old_model, cached or {}, torch.from_numpy(np.asarray(memory_indices, dtype=np.int64)),
                 opt, cfg, device, list(model.parameters()))
    for epoch in range(start_epoch, cfg.epochs):
        batches = plan_batches(new_indices, memory_indices, cfg.batch_size, seed=seed, epoch=epoch)
        batches = dist.shard(batches)[: opt.steps_per_epoch]
        loader = torch.utils.data.DataLoader(_Batches(dataset, batches), batch_size=None, shuffle=False,
                                             num_workers=num_workers, persistent_workers=False)
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress and dist.is_main)
        stats = _train_epoch(train_model, step, bar, epoch)
        if dist.is_main:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(),
                "optimizer": opt.optimizer.state_dict(),
                "scheduler": opt.scheduler.state_dict(),
                "scaler": opt.scaler.state_dict() if opt.scaler is not None else {},
                "epoch": epoch,
                "rng": rng_state(),
                **(extra_state or {}),
            })
            if on_epoch is not None:
                on_epoch(stats)
        dist.barrier()
    return model


def _optimisation(model: nn.Module, cfg: TrainConfig, new_indices: np.ndarray, memory_indices: np.ndarray, *,
                  seed: int, world_size: int, device: str) -> _Optimisation:
    steps = len(plan_batches(new_indices, memory_indices, cfg.batch_size, seed=seed, epoch=0))
    steps = max(1, steps // world_size)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.startswith("cuda") else None
    return _Optimisation(optimizer, scheduler, scaler, steps)


def _resume(path: Path, model: nn.Module, opt: _Optimisation, device: str, *, expected: dict) -> int:
    """Load the last epoch's state from ``path``; returns the epoch to continue from.

    The checkpoint must have been written for the same training: ``expected`` (what this run stores
    as ``extra_state``: the resolved recipe, the version) is compared with what it holds, and the
    model, optimiser, schedule and RNG states must fit (another architecture, a missing optimiser
    state: a :class:`CompatError` naming the field, never a traceback).
    """
    state = load_checkpoint(path, map_location=device)
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "rng") if not isinstance(state, dict)
               or k not in state]
    if missing:
        raise CompatError(f"{path}: not a training checkpoint (no '{missing[0]}'); --resume needs the model, "
                          "optimiser, schedule, epoch and RNG states that compat train writes")
    for key, value in expected.items():
        if key == "recipe":
            check_same_training(state.get("recipe"), value, path)
        elif state.get(key) != value:
            raise CompatError(f"{path}: field '{key}' is {state.get(key)!r}, expected {value!r} for this run")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CompatError(f"{path}: field 'epoch' must be a non-negative integer, got {epoch!r}")
    steps = [("model", model.load_state_dict), ("optimizer", opt.optimizer.load_state_dict),
             ("scheduler", opt.scheduler.load_state_dict), ("rng", set_rng_state)]
    if opt.scaler is not None and state.get("scaler"):
        steps.append(("scaler", opt.scaler.load_state_dict))
    for key, load in steps:
        try:
            load(state[key])
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CompatError(f"{path}: field '{key}' does not fit this run's {key} ({first})") from None
    logger.info("resumed %s at epoch %d", path, epoch + 1)
    return epoch + 1


@dataclass(frozen=True)
class _Step:
    """One optimisation step of a method: forward, the method's loss, backward and schedule."""

    method: Method
    old_model: nn.Module | None
    cached: dict[str, torch.Tensor]
    memory_set: torch.Tensor
    opt: _Optimisation
    cfg: TrainConfig
    device: str
    parameters: list[torch.Tensor]

    def __call__(self, train_model: nn.Module, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        use_amp = self.opt.scaler is not None
        with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
            out = train_model(images)
            old_features = self._lookup("old", idx)
            if self.old_model is not None and self.method.old_features == "batch":
                with torch.no_grad():
                    old_features = self.old_model.embed(images)
            from_memory = torch.isin(idx, self.memory_set).to(self.device) if len(self.memory_set) else None
            result = self.method.loss(out.features, out.logits, labels, old_features=old_features,
                                      from_memory=from_memory, teacher_features=self._lookup("teacher", idx),
                                      head_features=out.head_features)
        backward_step(result.total, self.opt.optimizer, self.opt.scaler, self.cfg.grad_clip, self.parameters)
        self.opt.scheduler.step()
        return out, labels, result

    def _lookup(self, key: str, idx: torch.Tensor) -> torch.Tensor | None:
        table = self.cached.get(key)
        return None if table is None else table[idx.to(table.device)]


def _train_epoch(train_model: nn.Module, step: _Step, batches, epoch: int) -> EpochStats:
    """One pass over the planned batches; the epoch's mean loss, accuracy and loss terms."""
    train_model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    parts_sum: dict[str, float] = {}
    for images, labels, idx in batches:
        out, labels, result = step(train_model, images, labels, idx)
        n = len(labels)
        loss_sum += float(result.total.detach()) * n
        correct += int((out.logits.detach().argmax(1) == labels).sum())
        seen += n
        for k, v in result.parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v * n
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    seen = max(1, seen)
    return EpochStats(epoch, loss_sum / seen, correct / seen, {k: v / seen for k, v in parts_sum.items()},
                      step.opt.scheduler.get_last_lr()[0])
