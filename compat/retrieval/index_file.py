"""Stored faiss indexes: opened read-only, checked against the gallery they claim to index.

A production index is evaluated as it is: :func:`load_index` reads the file memory-mapped where
faiss can, checks its feature size, metric and number of vectors against the gallery set, and maps
the labels it returns to the gallery's items (the ids of an ``IndexIDMap``, or an ids file for an
index without one). Any mismatch is a one-line :class:`CompatError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.retrieval.index import (
    GalleryIndex,
    IndexSpec,
    describe_index,
    faiss_message,
    faiss_metric,
    set_search_parameters,
    to_device,
)
from compat.retrieval.knn import Similarity

__all__ = ["check_index", "index_labels", "load_index", "map_labels", "read_index_file"]


def read_index_file(path: str | Path, *, where: str | None = None) -> Any:
    """Open a stored faiss index read-only, memory-mapped where faiss can.

    ``faiss.read_index(path, IO_FLAG_MMAP | IO_FLAG_READ_ONLY)`` maps the inverted lists and flat
    codes of the index types that support it; a type that does not is read into memory (still
    read-only: nothing is ever written back).

    Raises:
        CompatError: the file is missing or not a faiss index.
    """
    import faiss

    p = Path(path)
    where = where or str(p)
    if not p.is_file():
        raise CompatError(f"{where}: no such index file")
    try:
        return faiss.read_index(str(p), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        try:
            return faiss.read_index(str(p), faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as exc:
            raise CompatError(f"{where}: not a faiss index ({faiss_message(exc)})") from None


def check_index(index: Any, *, dim: int, n: int, similarity: Similarity, where: str) -> None:
    """A stored index fits a gallery: same feature size, the similarity's metric, one vector per item.

    Raises:
        CompatError: naming the index file and what differs.
    """
    import faiss

    if index.d != dim:
        raise CompatError(f"{where}: the index holds {index.d}-d vectors but the gallery's features are {dim}-d")
    expected = faiss_metric(similarity)
    if index.metric_type != expected:
        names = {faiss.METRIC_INNER_PRODUCT: "inner product", faiss.METRIC_L2: "L2"}
        raise CompatError(
            f"{where}: the index uses the {names.get(index.metric_type, index.metric_type)} metric but similarity "
            f"{similarity.value} needs {names[expected]}"
        )
    if index.ntotal != n:
        raise CompatError(f"{where}: the index holds {index.ntotal} vectors but the gallery has {n} items")


def index_labels(index: Any) -> np.ndarray | None:
    """The ids an ``IndexIDMap`` stores (int64, in insertion order), or ``None`` without an id map."""
    import faiss

    index = faiss.downcast_index(index)
    if type(index).__name__.startswith("IndexIDMap"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return None


def map_labels(
    labels: np.ndarray, label_ids: np.ndarray, gallery_ids: np.ndarray, *, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index labels and the gallery position of each.

    Args:
        labels: (ntotal,) the labels the index returns.
        label_ids: (ntotal,) the gallery id each label stands for (the labels themselves for an id
            map; an ``--index-ids`` file's entries otherwise).
        gallery_ids: (N,) the gallery set's ids.

    Raises:
        CompatError: an id that is not a gallery id, or two labels for one item.
    """
    from compat.retrieval.protocols import match_ids

    if label_ids.dtype.kind != gallery_ids.dtype.kind:
        raise CompatError(f"{where}: the index's ids are {label_ids.dtype} but the gallery's are {gallery_ids.dtype}")
    positions = match_ids(label_ids, gallery_ids, required=False, where=where)
    if (positions < 0).any():
        missing = int((positions < 0).sum())
        first = label_ids[np.flatnonzero(positions < 0)[0]].item()
        raise CompatError(f"{where}: {missing} of the index's {len(label_ids)} ids are not gallery ids "
                          f"(first: {first!r})")
    if len(np.unique(positions)) != len(positions):
        raise CompatError(f"{where}: the index holds some gallery item more than once")
    order = np.argsort(labels, kind="stable")
    return labels[order], positions[order]


def load_index(
    path: str | Path,
    gallery_ids: np.ndarray,
    dim: int,
    *,
    similarity: Similarity | str = Similarity.COSINE,
    ids_path: str | Path | None = None,
    spec: IndexSpec | None = None,
    device: str = "cpu",
) -> GalleryIndex:
    """A stored index over a gallery set, searched as it is.

    Its labels must be the gallery's ids: those of an ``IndexIDMap``, or, for an index without an
    id map, the positions 0..ntotal-1 translated by ``ids_path`` (a ``.npy`` array of ntotal gallery
    ids, in the order the vectors were added) or taken as ids themselves.

    Args:
        path: the faiss index file (opened read-only, memory-mapped where faiss can).
        gallery_ids, dim: the gallery set's ids and feature size.
        spec: ``nprobe`` / ``ef_search`` to search with (the file's own settings otherwise).

    Raises:
        CompatError: not an index, another size or metric, another number of vectors, or ids
            that do not map one-to-one to the gallery's.
    """
    where = f"index file {path}"
    similarity = parse_choice(Similarity, similarity, "similarity")
    index = read_index_file(path, where=where)
    check_index(index, dim=dim, n=len(gallery_ids), similarity=similarity, where=where)
    stored = index_labels(index)
    if stored is not None and ids_path is not None:
        raise CompatError(f"{where}: the index has its own ids (an IndexIDMap); drop its --index-ids file")
    labels = stored if stored is not None else np.arange(index.ntotal, dtype=np.int64)
    label_ids = labels if ids_path is None else _read_ids(ids_path, index.ntotal)
    labels, positions = map_labels(labels, label_ids, gallery_ids, where=where)
    index = to_device(index, device, where=where)
    if spec is not None:
        set_search_parameters(index, spec, where=where)
    return GalleryIndex(index, describe_index(index), similarity, labels, positions)


def _read_ids(path: str | Path, n: int) -> np.ndarray:
    """An ``--index-ids`` file: a ``.npy`` array of ``n`` integer or string ids."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompatError(f"index ids {path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iuU" or len(ids) != n:
        raise CompatError(f"index ids {path}: expected {n} integer or string ids in a 1-d array, "
                          f"got shape {ids.shape} of {ids.dtype}")
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids
