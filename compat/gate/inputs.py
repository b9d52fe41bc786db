"""What the gate compares: feature sets, compat model files plus a dataset, or registered models.

A source is one of

- a feature set: a ``.npz`` file or a directory of ``.npy`` files (:func:`compat.features.load_features`);
- a compat model file (``.pt`` / ``.pth``, written by :func:`compat.models.save_model`), loaded with
  ``weights_only=True``; its features are extracted from a dataset split;
- a registered model, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: its compat model file is
  downloaded (:mod:`compat.gate.registry`) and treated as above;
- a model compat did not train, ``torchscript:PATH`` or ``python:package.module:function``
  (:mod:`compat.models.external`): embedded with the explicit preprocessing of the extraction, and only
  when the extraction trusts model code.
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
from compat.preprocessing import Preprocessing

__all__ = ["ExtractionSpec", "SourceKind", "adapt_source", "load_source", "source_kind"]

MODEL_SUFFIXES = (".pt", ".pth")


class SourceKind(str, Enum):
    FEATURES = "features"
    MODEL = "model"
    REGISTRY = "registry"
    TORCHSCRIPT = "torchscript"
    PYTHON = "python"


def source_kind(source: str | Path) -> SourceKind:
    """``models:/...`` -> registry; ``torchscript:`` / ``python:`` -> a user's model; a ``.pt`` / ``.pth``
    path -> model file; anything else -> features."""
    text = str(source)
    if is_model_uri(text):
        return SourceKind.REGISTRY
    for kind in (SourceKind.TORCHSCRIPT, SourceKind.PYTHON):
        if text.startswith(f"{kind.value}:"):
            return kind
    if Path(text).suffix.lower() in MODEL_SUFFIXES:
        return SourceKind.MODEL
    return SourceKind.FEATURES


@dataclass
class ExtractionSpec:
    """The dataset split that model sources are embedded on (built once per transform, shared by all models).

    Args:
        preprocessing: how images are prepared for ``torchscript:`` and ``python:`` models (compat
            model files use the dataset's own evaluation transform).
    """

    dataset: str
    data_root: str | None = None
    split: str = "test"
    device: str = "cpu"
    batch_size: int = 512
    progress: bool = True
    preprocessing: Preprocessing | None = None
    _built: dict[Any, Any] = field(default_factory=dict, repr=False)

    def build(self, preprocessing: Preprocessing | None = None):
        """The dataset, with the dataset's own transform (``None``) or ``preprocessing``'s."""
        if preprocessing not in self._built:
            from compat.data import build_dataset

            transform = None
            if preprocessing is not None:
                from compat.models.external import preprocessing_transform

                transform = preprocessing_transform(preprocessing)
            self._built[preprocessing] = build_dataset(self.dataset, root=self.data_root, split=self.split,
                                                       train_transform=False, transform=transform)
        return self._built[preprocessing]


def load_source(
    source: str | Path,
    *,
    option: str,
    extraction: ExtractionSpec | None = None,
    tracking_uri: str | None = None,
    dist: DistributedContext | None = None,
    trust_model_code: bool = False,
) -> FeatureSet:
    """The features of one gate input.

    Args:
        source: a feature set path, a model file path or a ``models:/`` URI.
        option: the command-line option that gave it (for messages).
        extraction: the dataset to embed with, needed by model and registry sources.
        tracking_uri: the MLflow store for registry sources (default: the one in effect).
        dist: under torchrun, a sharded feature set is checked shard by shard by the ranks
            (:func:`compat.manifest.load_for_rank`).
        trust_model_code: allow ``torchscript:`` and ``python:`` sources, which run code the user
            supplies; without it they are refused before anything is read or imported.

    Raises:
        CompatError: unreadable or invalid input, or a model without a dataset.
    """
    kind = source_kind(source)
    if kind is SourceKind.FEATURES:
        dist = dist or DistributedContext.single()
        return load_for_rank(source, dist.rank, dist.world_size)
    if kind is SourceKind.REGISTRY:
        parse_model_uri(str(source))
    if kind in (SourceKind.TORCHSCRIPT, SourceKind.PYTHON):
        return _embed_external(str(source), option, extraction, trust_model_code)
    if extraction is None:
        raise CompatError(f"{option} {source}: a model needs a dataset to embed (--dataset NAME [--data-root DIR])")
    if kind is SourceKind.MODEL:
        return _embed(Path(source), str(source), extraction, {"checkpoint_path": str(source)})
    version = resolve_model_uri(str(source), tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="compat-gate-") as tmp:
        path = download_model(version.uri, tmp, tracking_uri=tracking_uri)
        meta = {"model_uri": str(source), "registered_model": version.name, "model_version": version.version}
        return _embed(path, str(source), extraction, meta)


def _embed_external(source: str, option: str, extraction: ExtractionSpec | None, trusted: bool) -> FeatureSet:
    """A ``torchscript:`` / ``python:`` source: refused unless trusted, before anything is read or imported."""
    from compat.models.external import TRUST_HINT, parse_model_spec

    model = parse_model_spec(source)
    if not trusted:
        raise CompatError(f"{option} {source}: {TRUST_HINT}")
    if extraction is None:
        raise CompatError(f"{option} {source}: a model needs a dataset to embed (--dataset NAME [--data-root DIR])")
    if extraction.preprocessing is None:
        raise CompatError(f"{option} {source}: a model compat did not train needs its preprocessing "
                          "(--preprocessing PRESET, or --image-size, --mean and --std)")
    from compat.data import dataset_ids, dataset_labels
    from compat.models.external import extract_external

    dataset = extraction.build(extraction.preprocessing)
    fs = extract_external(model, dataset, labels=dataset_labels(dataset), ids=dataset_ids(dataset),
                          preprocessing=extraction.preprocessing, trust_model_code=True, device=extraction.device,
                          batch_size=extraction.batch_size, meta={"dataset": extraction.dataset,
                                                                  "split": extraction.split},
                          progress=extraction.progress)
    return FeatureSet(fs.features, fs.labels, fs.ids, fs.meta, source, fs.groups)


def _embed(path: Path, source: str, extraction: ExtractionSpec, meta: dict[str, Any]) -> FeatureSet:
    from compat.data import dataset_ids, dataset_labels
    from compat.models import extract_model_file
    from compat.models.external import dataset_preprocessing

    dataset = extraction.build()
    info = {"dataset": extraction.dataset, "split": extraction.split,
            "preprocessing": dataset_preprocessing(dataset.info).to_meta(), **meta}
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
    return FeatureSet(fs.features, fs.labels, fs.ids, fs.meta, source, fs.groups)


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
    return FeatureSet(adapter.to_old(np.asarray(fs.features)), fs.labels, fs.ids, meta, f"B({fs.source})", fs.groups)
