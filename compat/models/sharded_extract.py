"""Feature extraction into a sharded set, by one process or by the ranks of ``torchrun``, resumable.

The dataset's items are cut into shards of ``shard_rows`` consecutive items (the last may be
shorter); shard k goes to rank ``k % world_size``. A rank embeds each of its shards in batches,
writes it as a ``.npy`` directory (``shard-0000k/``, atomically) and then a small record beside it
(``.shard-0000k.json``: rows, sha256 of the shard's files, the metadata it was extracted with).
When every rank is done, rank 0 writes ``manifest.json`` (:mod:`compat.manifest`) from the records.

A shard whose record exists, matches this extraction (same model file digest, dataset, split,
rows) and matches the files on disk (checksum) is complete and is skipped: an extraction killed
half-way resumes where it stopped, and redoes a shard that was being written. Each shard is
embedded in the same batches however many ranks there are, so the features do not depend on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compat._atomic import atomic_path
from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.features import FeatureSet, save_features
from compat.manifest import MANIFEST_NAME, Manifest, ShardInfo, shard_digest, write_manifest
from compat.progress import counter

__all__ = ["ShardPlan", "extract_sharded", "plan_shards"]


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index``: dataset items ``start:stop``."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def record(self) -> str:
        return f".{self.name}.json"


def plan_shards(n: int, shard_rows: int) -> list[ShardPlan]:
    """Consecutive shards of ``shard_rows`` items over ``n`` items."""
    if shard_rows < 1:
        raise CompatError(f"--shard-rows: expected a positive number of items per shard, got {shard_rows}")
    return [ShardPlan(k, s, min(n, s + shard_rows)) for k, s in enumerate(range(0, n, shard_rows))]


def _record(out: Path, plan: ShardPlan) -> dict[str, Any] | None:
    try:
        doc = json.loads((out / plan.record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _complete(out: Path, plan: ShardPlan, meta: dict[str, Any]) -> bool:
    """The shard's record matches this extraction and the files on disk."""
    doc = _record(out, plan)
    if doc is None or doc.get("meta") != meta or doc.get("rows") != plan.stop - plan.start:
        return False
    try:
        return shard_digest(out / plan.name) == doc.get("sha256")
    except OSError:
        return False


def extract_sharded(
    model_file: str | Path,
    dataset,
    *,
    labels: np.ndarray,
    ids: np.ndarray,
    out: str | Path,
    shard_rows: int,
    dist: DistributedContext | None = None,
    device: str = "cpu",
    batch_size: int = 512,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Embed ``dataset`` with a compat model file into the sharded set ``out``; returns its manifest.

    Args:
        model_file: written by :func:`compat.models.save_model` (loaded with ``weights_only``).
        dataset: items ``(image, label)`` in the order of ``labels`` and ``ids``.
        out: the set's directory (created).
        shard_rows: items per shard.
        dist: this process's rank under torchrun (every rank calls this function).
        meta: stored with the features (version, dataset, split), after what the model file says.
        progress: a bar per rank on a terminal, and rank 0's bar over every rank's shards.
    """
    from compat.models.extract import embed_dataset, model_file_meta
    from compat.models.io import read_model_file

    dist = dist or DistributedContext.single()
    root = Path(out)
    model, info = read_model_file(model_file, device=device)
    full_meta = {"normalized": False, **model_file_meta(model_file, info), **(meta or {})}
    plans = plan_shards(len(dataset), shard_rows)
    if not plans:
        raise CompatError("extract: the dataset has no items")
    root.mkdir(parents=True, exist_ok=True)
    mine = dist.shard(plans)
    mine_bar = counter(desc=f"rank {dist.rank}: extracting", total=sum(p.stop - p.start for p in mine),
                       enabled=progress, position=dist.rank + (1 if dist.enabled else 0))
    all_bar = counter(desc="all ranks: shards done", total=len(plans), enabled=progress and dist.is_main and dist.enabled)
    for plan in mine:
        shard_meta = {**full_meta, "shard": [plan.start, plan.stop]}
        if not _complete(root, plan, shard_meta):
            features = embed_dataset(model, dataset, indices=np.arange(plan.start, plan.stop), device=device,
                                     batch_size=batch_size, on_batch=mine_bar.update).numpy()
            fs = FeatureSet.from_arrays(features, labels[plan.start : plan.stop], ids[plan.start : plan.stop],
                                        meta=shard_meta, source=str(root / plan.name))
            save_features(fs, root / plan.name)
            with atomic_path(root / plan.record) as tmp:
                tmp.write_text(json.dumps({"rows": fs.n, "sha256": shard_digest(root / plan.name), "meta": shard_meta}),
                               encoding="utf-8")
        else:
            mine_bar.update(plan.stop - plan.start)
        all_bar.set(sum(_record(root, p) is not None for p in plans))
    mine_bar.close()
    dist.barrier()
    all_bar.set(len(plans))
    all_bar.close()
    if dist.is_main:
        _write_manifest(root, plans, full_meta)
    dist.barrier()
    return root / MANIFEST_NAME


def _write_manifest(root: Path, plans: list[ShardPlan], meta: dict[str, Any]) -> None:
    shards, dim = [], None
    for plan in plans:
        doc = _record(root, plan)
        if doc is None:
            raise CompatError(f"{root / plan.record}: missing; shard {plan.name} was not completed by any rank")
        shards.append(ShardInfo(plan.name, int(doc["rows"]), str(doc["sha256"])))
        if dim is None:
            dim = int(np.load(root / plan.name / "features.npy", mmap_mode="r").shape[1])
    write_manifest(Manifest(dim, tuple(shards), meta), root)
