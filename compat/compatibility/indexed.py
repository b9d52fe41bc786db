"""A cell searched through a gallery's approximate index, beside its exact evaluation.

:func:`evaluate_index_cell` takes the inputs of :func:`compat.compatibility.cell.evaluate_cell`
(an evaluator, the query and gallery sets, the dimension policy and transform) plus the gallery's
:class:`~compat.retrieval.index.GalleryIndex`, and measures what the index returns: ``cmc@K`` and
``map@K`` (truncated AP, docs/metrics.md) over the returned list, and the index's recall@k against
the exact top-k of the same cell. :class:`GalleryIndexes` builds (or opens) each gallery's index
once, as production would have, so that every newer version's queries search the same index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compat.compatibility.cell import ArrayTransform, DimPolicy, cell_arrays
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
from compat.retrieval.index import DEFAULT_INDEX_K, GalleryIndex, IndexSpec, build_index
from compat.retrieval.knn import knn
from compat.retrieval.metrics import Metric, MetricKind, RetrievalResult, parse_metrics, recall_at_k, topk_values
from compat.retrieval.protocols import match_ids

__all__ = [
    "GalleryIndexes",
    "IndexCellResult",
    "IndexFile",
    "IndexSetup",
    "evaluate_index_cell",
    "index_metrics",
    "with_index_metrics",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexFile:
    """A stored faiss index of one gallery version, and the ids of its vectors when it has no id map."""

    path: Path
    ids: Path | None = None


@dataclass(frozen=True)
class IndexSetup:
    """What the galleries are searched through.

    Args:
        spec: the index built for every gallery version without a stored file (``spec.factory``),
            and the search parameters, depth ``k`` and seed.
        files: version name -> a stored index searched as it is, instead of building one.
    """

    spec: IndexSpec = field(default_factory=IndexSpec)
    files: Mapping[str, IndexFile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spec.factory is None and not self.files:
            raise CompatError("index: give a faiss factory string (--index) or a stored index (--index-file)")

    def covers(self, version: str) -> bool:
        """Whether the gallery of ``version`` is searched through an index."""
        return version in self.files or self.spec.factory is not None


@dataclass(frozen=True)
class IndexCellResult:
    """One cell searched through the gallery's index.

    Attributes:
        result: ``cmc@K`` and ``map@K`` over the returned lists, per query and averaged over the
            queries with a positive (the same queries as the exact cell).
        recall: mean recall@k of the index against the exact top-k (``None`` when no query has one).
        per_query_recall: (Nq,) recall@k of each query (NaN for a query with an empty exact list).
        neighbours: (Nq, depth) gallery positions the index returned, the query's own item removed.
    """

    result: RetrievalResult
    recall: float | None
    per_query_recall: np.ndarray = field(repr=False)
    neighbours: np.ndarray = field(repr=False)

    def __getitem__(self, metric: str) -> float:
        return self.result[metric]


def index_metrics(metrics: tuple[Metric, ...], k: int = DEFAULT_INDEX_K) -> tuple[Metric, ...]:
    """What an index search reports: the evaluator's ``cmc@K`` and ``map@K``, and ``map@k``.

    Full-ranking metrics (``map``, ``map@r``) need every gallery item ranked, which an index does
    not return; ``map@k`` (truncated AP) stands beside them.
    """
    out = [m for m in metrics if m.from_top_k]
    if all(m.name != f"map@{k}" for m in out):
        out.append(Metric(MetricKind.MAP_AT_K, k))
    return tuple(out)


def with_index_metrics(names: tuple[str, ...] | list[str], k: int = DEFAULT_INDEX_K) -> tuple[str, ...]:
    """Metric names with ``map@k`` added, so the exact side reports what the index side does."""
    metrics = parse_metrics(tuple(names))
    return tuple(m.name for m in metrics) + tuple(m.name for m in index_metrics(metrics, k) if m not in metrics)


def _positives(query_labels: np.ndarray, gallery_labels: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Positives of each query in the gallery (same label), its own item not counted."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    at = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    n = np.where(classes[at] == query_labels, counts[at], 0)
    own = exclude >= 0
    n[own] -= gallery_labels[exclude[own]] == query_labels[own]
    return n


def evaluate_index_cell(
    evaluator: RetrievalEvaluator,
    query: FeatureSet,
    gallery: FeatureSet,
    index: GalleryIndex,
    *,
    k: int = DEFAULT_INDEX_K,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    transform: ArrayTransform | None = None,
    where: str | None = None,
) -> IndexCellResult:
    """Search ``gallery``'s index with ``query``'s features, leave-one-out by id.

    The features are prepared as :func:`evaluate_cell` prepares them; only the queries may change
    (the index holds the gallery as it was built). Each query asks for ``depth + 1`` items and its
    own one is removed (docs/metrics.md, "Through an index").

    Args:
        evaluator: its protocol (``loo``), similarity and metrics; its backend, device and memory
            budget compute the exact top-k for the recall.
        index: the gallery's index (:class:`GalleryIndexes` or :func:`build_index`).
        k: depth of ``map@k`` and of the recall.

    Raises:
        CompatError: another protocol than ``loo``, or a dimension rule that would change the gallery.
    """
    where = where or f"{query.source} on {gallery.source}"
    if evaluator.protocol is not Protocol.LOO:
        raise CompatError(f"{where}: an index is searched under protocol loo only, not {evaluator.protocol.value}")
    q, g = cell_arrays(query, gallery, dim_policy=dim_policy, transform=transform, where=where)
    if g is not gallery.features:
        raise CompatError(
            f"{where}: the gallery's index holds its {gallery.dim}-d features as built, so only the queries may "
            f"change size (queries {q.shape[1]}-d after the dimension rule); use --dim-policy pad or compatible_dim"
        )
    exclude = match_ids(query.ids, gallery.ids, required=True, where=where)
    metrics = index_metrics(evaluator.metrics, k)
    depth = max([k, *(m.k for m in metrics)])
    _, found = index.search(q, depth, exclude=exclude)
    _, exact = knn(q, g, k, similarity=evaluator.similarity, backend=evaluator.backend, device=evaluator.device,
                   exclude=exclude, memory_budget=evaluator.memory_budget)
    n_pos = _positives(query.labels, gallery.labels, exclude)
    per_query = topk_values(found, gallery.labels, query.labels, n_pos, metrics)
    counted = n_pos > 0
    values = {name: float(v[counted].mean()) if counted.any() else 0.0 for name, v in per_query.items()}
    recall = recall_at_k(found[:, :k], exact)
    mean_recall = float(np.nanmean(recall)) if np.isfinite(recall).any() else None
    logger.info("%s through %s: %s, recall@%d %s", where, index.description, values, k, mean_recall)
    result = RetrievalResult(values, len(counted), int((~counted).sum()), per_query, counted)
    return IndexCellResult(result, mean_recall, recall, found)


class GalleryIndexes:
    """Each gallery's index, built from the spec (or opened from its file) once, then kept.

    Args:
        setup: the factory string and search parameters, and the stored files by version name.
        evaluator: its similarity and device.
    """

    def __init__(self, setup: IndexSetup, evaluator: RetrievalEvaluator):
        self.setup, self.evaluator = setup, evaluator
        self._built: dict[str, GalleryIndex] = {}

    def covers(self, name: str) -> bool:
        return self.setup.covers(name)

    def get(self, name: str, gallery: FeatureSet) -> GalleryIndex:
        """The index of gallery ``name`` (built or opened on first use)."""
        if name not in self._built:
            self._built[name] = self._make(name, gallery)
        return self._built[name]

    def _make(self, name: str, gallery: FeatureSet) -> GalleryIndex:
        ev = self.evaluator
        stored = self.setup.files.get(name)
        if stored is not None:
            from compat.retrieval.index_file import load_index

            return load_index(stored.path, gallery.ids, gallery.dim, similarity=ev.similarity, ids_path=stored.ids,
                              spec=self.setup.spec, device=ev.device)
        return build_index(gallery.features, self.setup.spec, similarity=ev.similarity, device=ev.device,
                           where=f"gallery {name} ({gallery.source})")

    @property
    def built(self) -> dict[str, GalleryIndex]:
        """The indexes made so far, by gallery name."""
        return dict(self._built)
