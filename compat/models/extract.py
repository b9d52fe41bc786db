"""Feature extraction: a model's retrieval features over a dataset (split), as a FeatureSet."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compat.features import FeatureSet
from compat.progress import progress as progress_bar

__all__ = ["embed_dataset", "extract_features", "extract_model_file", "file_digest", "model_file_meta"]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    dataset,
    *,
    indices: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``model.embed`` over ``dataset`` (or its items ``indices``, in that order), in eval mode.

    Args:
        progress: a bar over the batches on a terminal.
        on_batch: called with each batch's number of items (a caller's own progress).

    Returns:
        (N, D) float32 features on the CPU.
    """
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, [int(i) for i in indices])
    was_training = model.training
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    batches = progress_bar(loader, desc="extracting features", total=len(loader), enabled=progress)
    chunks = []
    for images, _ in batches:
        chunks.append(model.embed(images.to(device)).float().cpu())
        if on_batch is not None:
            on_batch(len(images))
    model.train(was_training)
    return torch.cat(chunks)


def extract_features(
    model: nn.Module,
    dataset,
    *,
    labels: np.ndarray,
    ids: np.ndarray,
    device: str = "cpu",
    batch_size: int = 512,
    num_workers: int = 0,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Embed every item of ``dataset`` with ``model.embed`` (eval mode, no augmentation).

    Args:
        model: an embedding model with ``embed(images) -> (N, D)``.
        dataset: items ``(image, label)`` in the order of ``labels`` and ``ids``.
        labels, ids: (N,) arrays describing the items.
        meta: stored with the features (model, version, dataset, split, checkpoint digest).
        progress: a bar over the batches on a terminal.
    """
    features = embed_dataset(model, dataset, device=device, batch_size=batch_size, num_workers=num_workers,
                             progress=progress).numpy()
    return FeatureSet.from_arrays(features, labels, ids, meta={"normalized": False, **(meta or {})})


def extract_model_file(
    path: str | Path,
    dataset,
    *,
    labels: np.ndarray,
    ids: np.ndarray,
    device: str = "cpu",
    batch_size: int = 512,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of ``dataset`` by the model of a compat model file (``weights_only``), with what the
    file says of the model in the metadata: its ``checkpoint`` digest, ``model`` (the backbone) and,
    when it was trained against an older model of another size, ``compatible_dim``."""
    from compat.models.io import read_model_file

    model, info = read_model_file(path, device=device)
    return extract_features(model, dataset, labels=labels, ids=ids, device=device, batch_size=batch_size,
                            meta={**model_file_meta(path, info), **(meta or {})}, progress=progress)


def model_file_meta(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """What features record of the model file they come from: ``model`` (the backbone), its
    ``checkpoint`` digest and, when set, ``compatible_dim``."""
    recorded = {"model": info["backbone"], "checkpoint": file_digest(path)}
    if "compatible_dim" in info:
        recorded["compatible_dim"] = info["compatible_dim"]
    return recorded
