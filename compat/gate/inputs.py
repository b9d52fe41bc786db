"""What the gate compares: feature sets, compat model files plus a dataset, or registered models.

A source is one of

- a feature set: a ``.npz`` file or a directory of ``.npy`` files (:func:`compat.features.load_features`);
- a compat model file (``.pt`` / ``.pth``, written by :func:`compat.models.save_model`), loaded with
  ``weights_only=True``; its features are extracted from a dataset split;
- a registered model, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: its compat model file is
  downloaded (:mod:`compat.gate.registry`) and treated as above.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.gate.registry import download_model, is_model_uri, parse_model_uri, resolve_model_uri
from compat.manifest import load_for_rank

__all__ = ["ExtractionSpec", "SourceKind", "adapt_source", "load_source", "source_kind"]

MODEL_SUFFIXES = (".pt", ".pth")


class SourceKind(str, Enum):
    FEATURES = "features"
    MODEL = "model"
    REGISTRY = "registry"


def source_kind(source: str | Path) -> SourceKind:
    """``models:/...`` -> registry; a ``.pt`` / ``.pth`` path -> model file; anything else -> features."""
    text = str(source)
    if is_model_uri(text):
        return SourceKind.REGISTRY
    if Path(text).suffix.lower() in MODEL_SUFFIXES:
        return SourceKind.MODEL
    return SourceKind.FEATURES


@dataclass
class ExtractionSpec:
    """The dataset split that model sources are embedded on (built once, shared by all models)."""

    dataset: str
    data_root: str | None = None
    split: str = "test"
    device: str = "cpu"
    batch_size: int = 512
    progress: bool = True
    _built: Any = field(default=None, repr=False)

    def build(self):
        if self._built is None:
            from compat.data import build_dataset

            self._built = build_dataset(self.dataset, root=self.data_root, split=self.split, train_transform=False)
        return self._built


def load_source(
    source: str | Path,
    *,
    option: str,
    extraction: ExtractionSpec | None = None,
    tracking_uri: str | None = None,
    dist: DistributedContext | None = None,
) -> FeatureSet:
    """The features of one gate input.

    Args:
        source: a feature set path, a model file path or a ``models:/`` URI.
        option: the command-line option that gave it (for messages).
        extraction: the dataset to embed with, needed by model and registry sources.
        tracking_uri: the MLflow store for registry sources (default: the one in effect).
        dist: under torchrun, a sharded feature set is checked shard by shard by the ranks
            (:func:`compat.manifest.load_for_rank`).

    Raises:
        CompatError: unreadable or invalid input, or a model without a dataset.
    """
    kind = source_kind(source)
    if kind is SourceKind.FEATURES:
        dist = dist or DistributedContext.single()
        return load_for_rank(source, dist.rank, dist.world_size)
    if kind is SourceKind.REGISTRY:
        parse_model_uri(str(source))
    if extraction is None:
        raise CompatError(f"{option} {source}: a model needs a dataset to embed (--dataset NAME [--data-root DIR])")
    if kind is SourceKind.MODEL:
        return _embed(Path(source), str(source), extraction, {"checkpoint_path": str(source)})
    version = resolve_model_uri(str(source), tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="compat-gate-") as tmp:
        path = download_model(version.uri, tmp, tracking_uri=tracking_uri)
        meta = {"model_uri": str(source), "registered_model": version.name, "model_version": version.version}
        return _embed(path, str(source), extraction, meta)


def _embed(path: Path, source: str, extraction: ExtractionSpec, meta: dict[str, Any]) -> FeatureSet:
    from compat.data import dataset_ids, dataset_labels
    from compat.models import extract_model_file

    dataset = extraction.build()
    info = {"dataset": extraction.dataset, "split": extraction.split, **meta}
    try:
        fs = extract_model_file(path, dataset, labels=dataset_labels(dataset), ids=dataset_ids(dataset),
                                device=extraction.device, batch_size=extraction.batch_size, meta=info,
                                progress=extraction.progress)
    except CompatError as exc:  # e.g. NaN features
        if str(exc).startswith(str(path)):
            raise
        raise CompatError(f"{source}: features extracted from {extraction.dataset!r}: {exc}") from None
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompatError(f"{source}: cannot embed dataset {extraction.dataset!r} with this model ({first})") from None
    return FeatureSet(fs.features, fs.labels, fs.ids, fs.meta, source)


def adapt_source(fs: FeatureSet, adapter_path: str | Path, *, old_dim: int) -> FeatureSet:
    """A candidate as deployed with an adapter: its features mapped by ``B`` into the old space.

    Args:
        fs: the candidate's features as extracted (``new_dim``).
        adapter_path: an adapter file (:func:`compat.adapters.io.load_adapter`) for these sizes.
        old_dim: the production model's feature size.

    Returns:
        ``B(new)`` (``d = min(new_dim, old_dim)`` columns), with ``adapter`` and ``adapter_digest`` in
        its metadata (a ``compatible_dim`` of the raw features no longer applies and is dropped).
    """
    import numpy as np

    from compat.adapters.io import load_adapter
    from compat.models.extract import file_digest

    adapter = load_adapter(adapter_path)
    adapter.check_dims(fs.dim, old_dim, where=f"--adapter {adapter_path}")
    meta = {k: v for k, v in fs.meta.items() if k != "compatible_dim"}
    meta.update(adapter=str(adapter_path), adapter_digest=file_digest(adapter_path))
    return FeatureSet(adapter.to_old(np.asarray(fs.features)), fs.labels, fs.ids, meta, f"B({fs.source})")
