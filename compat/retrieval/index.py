"""Approximate search through a faiss index, the way a production gallery is searched.

Small functions over arrays in the shape of faiss's ``contrib`` helpers: :func:`build_index` trains
a ``faiss.index_factory`` index on a seeded sample of a gallery and fills it with the whole gallery
(in blocks); :func:`search` returns ``(D, I)`` with the query's own item left out. Stored indexes
are opened by :mod:`compat.retrieval.index_file`. Cosine similarity is an inner
product index over L2-normalised vectors; ``l2`` is an L2 index over the features as given.

Every failure a user can cause (an unknown factory string, too few training vectors, a stored index
of another size or metric, ids that do not map to the gallery) is a one-line :class:`CompatError`.
faiss is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.retrieval.knn import Similarity

__all__ = [
    "DEFAULT_INDEX_K",
    "GalleryIndex",
    "IndexSpec",
    "build_index",
    "describe_index",
    "faiss_message",
    "faiss_metric",
    "index_vectors",
    "search",
    "search_parameters",
    "set_search_parameters",
    "to_device",
    "training_rows",
]

logger = logging.getLogger(__name__)

# Depth of map@K and recall@K when none is given.
DEFAULT_INDEX_K = 10
# Gallery rows normalised and added per call, and query rows searched per call.
_BLOCK_ROWS = 1 << 16


class IndexSpec(BaseModel):
    """How a gallery's index is built and searched.

    Args:
        factory: a ``faiss.index_factory`` string (``IVF1024,PQ16``, ``HNSW32``, ``Flat``, ...);
            ``None`` when only stored index files are searched.
        nprobe: inverted lists visited per query (IVF indexes; faiss's default 1 when unset).
        ef_search: HNSW search breadth (faiss's default 16 when unset).
        train_size: train on a seeded sample of this many gallery vectors (default: all of them).
        k: depth of ``map@K`` and of the index's recall against the exact top-k.
        seed: seed of the training sample and of faiss's k-means.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str | None = None
    nprobe: int | None = Field(default=None, ge=1)
    ef_search: int | None = Field(default=None, ge=1)
    train_size: int | None = Field(default=None, ge=1)
    k: int = Field(default=DEFAULT_INDEX_K, ge=1)
    seed: int = 0

    @field_validator("factory")
    @classmethod
    def _factory(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a faiss index_factory string such as 'IVF1024,PQ16'")
        return None if value is None else value.strip()

    def label(self) -> str:
        """``IVF1024,PQ16 (nprobe 16)``: the factory and the search parameters that were set."""
        extra = [f"{name} {value}" for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search))
                 if value is not None]
        return (self.factory or "stored index") + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class GalleryIndex:
    """A searchable index over one gallery set.

    Attributes:
        index: the faiss index (on the GPU when it was moved there).
        labels: (ntotal,) sorted labels the index returns and ``positions`` the gallery position of
            each, when they are not simply the positions 0..N-1 (a stored index); else ``None``.
        description: the factory string, or the type of a stored index.
        similarity: how its vectors were prepared.
    """

    index: Any
    description: str
    similarity: Similarity
    labels: np.ndarray | None = None
    positions: np.ndarray | None = None

    def search(self, query: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`search` on this index, with the results as gallery positions."""
        return search(self.index, query, k, similarity=self.similarity, exclude=exclude,
                      labels=self.labels, positions=self.positions)


def index_vectors(block: np.ndarray, similarity: Similarity) -> np.ndarray:
    """A float32 copy as the index sees it: L2-normalised by ``faiss.normalize_L2`` for cosine (the
    call a faiss pipeline makes, so that the vectors are bit for bit those of one), as given for l2."""
    import faiss

    x = np.array(block, dtype=np.float32, order="C", copy=True)
    if similarity is Similarity.COSINE:
        faiss.normalize_L2(x)
    return x


def faiss_metric(similarity: Similarity) -> int:
    """faiss's metric for a similarity: inner product (cosine, on normalised vectors) or L2."""
    import faiss

    return faiss.METRIC_INNER_PRODUCT if similarity is Similarity.COSINE else faiss.METRIC_L2


def training_rows(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted positions of the vectors an index trains on: all ``n``, or a seeded sample of ``size``."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def faiss_message(exc: BaseException) -> str:
    """The useful part of a faiss error: the sentence after ``Error: '...' failed:``, on one line."""
    text = " ".join(str(exc).split())
    match = re.search(r"Error: '.*?' failed: (.*)$", text) or re.search(r"Error: (.*)$", text)
    return (match.group(1) if match else text).strip()


def _seed_clustering(index: Any, seed: int) -> None:
    """Seed every k-means a factory index runs (coarse quantizer, product quantizer)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None and hasattr(index, "cp"):  # a faiss-gpu IVF index keeps its own clustering parameters
        ivf = index
    if ivf is not None:
        ivf.cp.seed = seed
        index = ivf
    pq = getattr(faiss.downcast_index(index), "pq", None)
    if pq is not None:
        pq.cp.seed = seed


def _gpu_resources(device: str):
    """faiss-gpu resources for ``cuda[:N]`` when faiss has GPU support and sees a GPU; else ``None``."""
    if not device.startswith("cuda"):
        return None
    import faiss

    from compat.retrieval.faiss_search import faiss_gpus

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        logger.warning("index: faiss has no GPU support here; the index is built and searched on the CPU")
        return None
    gpu = int(device.split(":", 1)[1]) if ":" in device else 0
    return faiss_gpus(f"cuda:{gpu}")[0][1]


def to_device(index: Any, device: str, *, where: str = "index") -> Any:
    """The index on ``device``: moved to the GPU with faiss-gpu (``cuda[:N]``), else unchanged.

    An index type faiss-gpu cannot hold (HNSW, for one) stays on the CPU, with a warning.
    """
    resources = _gpu_resources(device)
    if resources is None:
        return index
    import faiss

    gpu = int(device.split(":", 1)[1]) if ":" in device else 0
    try:
        return faiss.index_cpu_to_gpu(resources, gpu, index)
    except RuntimeError as exc:
        logger.warning("%s: stays on the CPU (%s)", where, faiss_message(exc))
        return index


def build_index(
    gallery: np.ndarray,
    spec: IndexSpec,
    *,
    similarity: Similarity | str = Similarity.COSINE,
    device: str = "cpu",
    where: str = "index",
) -> GalleryIndex:
    """Train ``spec.factory`` on a seeded sample of ``gallery`` and add every gallery vector.

    Args:
        gallery: (N, D) features; may be a memory map (normalised and added block by block).
        spec: factory string, training-sample size and seed, search parameters.
        similarity: cosine (inner product over normalised vectors) or l2.
        device: ``cpu`` or ``cuda[:N]`` (trained, filled and searched on the GPU with faiss-gpu).
        where: names the gallery in messages.

    Returns:
        The index; its labels are the gallery positions 0..N-1.

    Raises:
        CompatError: faiss cannot parse the factory string for this size and metric, or cannot
            train it on the vectors given (e.g. fewer than its number of clusters).
    """
    import faiss

    if spec.factory is None:
        raise CompatError(f"{where}: no index factory string was given")
    similarity = parse_choice(Similarity, similarity, "similarity")
    n, d = gallery.shape
    try:
        index = faiss.index_factory(d, spec.factory, faiss_metric(similarity))
    except RuntimeError as exc:
        raise CompatError(f"index {spec.factory!r} ({where}, {d}-d): faiss cannot build it ({faiss_message(exc)})") \
            from None
    _seed_clustering(index, spec.seed)
    index = to_device(index, device, where=where)
    _seed_clustering(index, spec.seed)
    rows = training_rows(n, spec.train_size, spec.seed)
    if not index.is_trained:
        try:
            index.train(index_vectors(gallery[rows], similarity))
        except RuntimeError as exc:
            raise CompatError(f"index {spec.factory!r} ({where}): training on {len(rows)} vectors failed "
                              f"({faiss_message(exc)}); give more training vectors (--index-train-size) "
                              "or a smaller index") from None
    for start in range(0, n, _BLOCK_ROWS):
        index.add(index_vectors(gallery[start : start + _BLOCK_ROWS], similarity))
    set_search_parameters(index, spec, where=where)
    logger.info("%s: built %s over %d vectors (trained on %d)", where, spec.factory, n, len(rows))
    return GalleryIndex(index, spec.factory, similarity)


def set_search_parameters(index: Any, spec: IndexSpec, *, where: str = "index") -> None:
    """Set ``nprobe`` and ``efSearch`` when the spec gives them (through faiss's ParameterSpace).

    Raises:
        CompatError: the index has no such parameter (``nprobe`` on an HNSW index, for one).
    """
    import faiss

    space = faiss.GpuParameterSpace() if "Gpu" in type(index).__name__ else faiss.ParameterSpace()
    for option, name, value in (("nprobe", "nprobe", spec.nprobe), ("ef_search", "efSearch", spec.ef_search)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            raise CompatError(f"{where}: {option}: the index ({describe_index(index)}) has no parameter {name}") \
                from None


def search_parameters(index: Any) -> dict[str, int]:
    """The search parameters in effect: ``nprobe`` of an IVF index, ``ef_search`` of an HNSW one."""
    import faiss

    out: dict[str, int] = {}
    ivf = faiss.try_extract_index_ivf(index) if "Gpu" not in type(index).__name__ else None
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
    elif "Gpu" in type(index).__name__ and hasattr(index, "nprobe"):
        out["nprobe"] = int(index.nprobe)
    hnsw = getattr(_inner(index), "hnsw", None)
    if hnsw is not None:
        out["ef_search"] = int(hnsw.efSearch)
    return out


def _inner(index: Any) -> Any:
    """The index under an id map or a pre-transform, downcast to its concrete type."""
    import faiss

    index = faiss.downcast_index(index)
    while hasattr(index, "index") and type(index).__name__.startswith(("IndexIDMap", "IndexPreTransform")):
        index = faiss.downcast_index(index.index)
    return index


def describe_index(index: Any) -> str:
    """A factory string for a stored index when faiss can write one back, else its type name."""
    try:
        from faiss.contrib.factory_tools import reverse_index_factory

        return reverse_index_factory(index)
    except Exception:  # noqa: BLE001 - any index type reverse_index_factory does not know
        return type(_inner(index)).__name__


def search(
    index: Any,
    query: np.ndarray,
    k: int,
    *,
    similarity: Similarity | str = Similarity.COSINE,
    exclude: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's top-k of each query, its own item left out.

    With ``exclude``, ``k + 1`` items are asked for and the query's own item (its gallery position,
    -1 for none) is removed from the list; when it was not among them, the last item is dropped. The
    index's order is kept as it is (a production search does not re-rank).

    Args:
        index: a faiss index over prepared gallery vectors.
        query: (Nq, D) features (normalised here for cosine).
        k: items per query.
        exclude: (Nq,) gallery position of each query's own item, -1 for none.
        labels, positions: sorted labels the index returns and the gallery position of each (a
            stored index); ``None`` when the labels are the gallery positions.

    Returns:
        ``(D, I)``: (Nq, k) the index's distances (inner products, or squared L2) and gallery
        positions, -1 (and NaN) where the index returned fewer items.
    """
    similarity = parse_choice(Similarity, similarity, "similarity")
    nq = query.shape[0]
    extra = 0 if exclude is None else 1
    dist = np.full((nq, k), np.nan, dtype=np.float32)
    found = np.full((nq, k), -1, dtype=np.int64)
    for start in range(0, nq, _BLOCK_ROWS):
        d, i = index.search(index_vectors(query[start : start + _BLOCK_ROWS], similarity), k + extra)
        if labels is not None:
            i = _labels_to_positions(i, labels, positions)
        if exclude is not None:
            d, i = _drop_self(d, i, exclude[start : start + len(d)], k)
        i = np.where(i >= 0, i, -1)
        dist[start : start + len(d)] = np.where(i >= 0, d, np.nan)
        found[start : start + len(d)] = i
    return dist, found


def _labels_to_positions(i: np.ndarray, labels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(labels, i), len(labels) - 1)
    return np.where((i >= 0) & (labels[at] == i), positions[at], -1)


def _drop_self(d: np.ndarray, i: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own item (else its last item), keeping the order of the rest."""
    is_own = (i == own[:, None]) & (own[:, None] >= 0)
    drop = np.where(is_own.any(1), is_own.argmax(1), i.shape[1] - 1)
    keep = np.arange(i.shape[1])[None, :] != drop[:, None]
    return d[keep].reshape(len(d), -1)[:, :k], i[keep].reshape(len(i), -1)[:, :k]
