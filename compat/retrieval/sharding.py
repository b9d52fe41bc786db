"""Leave-one-out retrieval over a gallery split between torch.distributed ranks, exactly.

Every rank holds the queries, the gallery's labels and ids, and searches its own contiguous rows of
the gallery (:func:`partition_rows`: whole shards when the gallery is a sharded set with at least as
many shards as ranks, else equal row ranges). What each rank computes is exact on its part:

- the top-k of its rows (float64 re-scored, ties by the lower global index); the global top-k is the
  best k of the ranks' lists ordered by (score, global index): :func:`merge_topk`;
- for every positive of every query, the number of its rows ranked above that positive
  (:mod:`compat.retrieval.exact_ranks`); a rank is 1 plus the sum of these counts over the ranks.
  The positives' exact scores are computed by the rank that holds them and shared first.

Sums of integers and a merge by a total order do not depend on how the gallery was split, so one
process and any number of ranks give the same neighbours, ranks and metrics, bit for bit. In one
process (``dist`` single) the same code runs with no communication.
"""

from __future__ import annotations

import numpy as np

from compat.distributed import DistributedContext
from compat.retrieval.exact_ranks import Positives
from compat.retrieval.full_ranking import rank_chunks
from compat.retrieval.knn import Similarity, knn, score_f64
from compat.retrieval.precision import Precision
from compat.sharded import ShardedArray, partition_rows, release

__all__ = ["full_ranking", "local_part", "merge_topk", "precisions_from_ranks", "ranked_topk"]

# Float64 positive features gathered at a time while scoring positives.
_GATHER_BYTES = 64 << 20


def local_part(gallery, dist: DistributedContext) -> tuple[int, object]:
    """This rank's (global offset, rows) of ``gallery``: a view, nothing is read."""
    n = gallery.shape[0]
    if not dist.enabled:
        return 0, gallery
    sharded = isinstance(gallery, ShardedArray) and len(gallery.parts) >= dist.world_size
    offsets = partition_rows(n, dist.world_size, gallery.offsets if sharded else None)
    start, stop = int(offsets[dist.rank]), int(offsets[dist.rank + 1])
    view = gallery.row_range(start, stop) if isinstance(gallery, ShardedArray) else gallery[start:stop]
    return start, view


def merge_topk(scores: list[np.ndarray], indices: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several exact top-k lists per query, by (score desc, global index asc); NaN / -1 pad."""
    s = np.concatenate(scores, axis=1)
    i = np.concatenate(indices, axis=1)
    missing = np.isnan(s) | (i < 0)
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, i), np.where(missing, np.inf, -s)), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def _gathered_topk(dist: DistributedContext, s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if not dist.enabled:
        return s, i
    return merge_topk(dist.all_gather(s), dist.all_gather(i), k)


def ranked_topk(query, gallery, k: int, *, exclude: np.ndarray, dist: DistributedContext, similarity: Similarity,
                backend: str, device: str, memory_budget: int, progress: bool,
                precision: Precision = Precision.FP32) -> np.ndarray:
    """(Nq, k) global indices of the exact top-k over the whole gallery (CMC without full ranking)."""
    offset, part = local_part(gallery, dist)
    n = part.shape[0]
    local_ex = np.where((exclude >= offset) & (exclude < offset + n), exclude - offset, -1)
    if n:
        s, i = knn(query, part, k, similarity=similarity, backend=backend, device=device, exclude=local_ex,
                   memory_budget=memory_budget, progress=progress, precision=precision)
        s = -s if similarity is Similarity.L2 else s
        i = np.where(i >= 0, i + offset, -1)
    else:
        s, i = np.full((len(query), k), np.nan), np.full((len(query), k), -1, dtype=np.int64)
    return _gathered_topk(dist, s, i, k)[1]


def _local_positives(rows: range, query, query_labels: np.ndarray, exclude: np.ndarray, members: dict[int, np.ndarray],
                     part, offset: int, similarity: Similarity,
                     with_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(query row, global index, exact score or None) of the positives this rank holds, for query rows ``rows``."""
    n = part.shape[0]
    owner, index = [], []
    for j, r in enumerate(rows):
        m = members.get(int(query_labels[r]))
        if m is None:
            continue
        m = m[np.searchsorted(m, offset) : np.searchsorted(m, offset + n)]
        m = m[m != exclude[r]]
        owner.append(np.full(len(m), j, dtype=np.int64))
        index.append(m)
    owner_a = np.concatenate(owner) if owner else np.empty(0, np.int64)
    index_a = np.concatenate(index) if index else np.empty(0, np.int64)
    if not with_scores:
        return owner_a, index_a, None
    score = np.empty(len(index_a))
    step = max(1, _GATHER_BYTES // (8 * query.shape[1]))
    q = np.asarray(query[rows.start : rows.stop])
    for s in range(0, len(index_a), step):
        feats = np.asarray(part[index_a[s : s + step] - offset])
        score[s : s + step] = score_f64(q[owner_a[s : s + step]], feats[:, None, :], similarity)[:, 0]
    release(part, 0, n)
    return owner_a, index_a, score


def full_ranking(query, query_labels: np.ndarray, gallery, members: dict[int, np.ndarray], exclude: np.ndarray,
                 per_query: dict[str, np.ndarray], kmax: int, *,
                 dist: DistributedContext, similarity: Similarity, device: str, memory_budget: int, threads: int,
                 progress: bool) -> np.ndarray:
    """Fill ``per_query`` (AP, AP@R) for every query from exact ranks; return the (Nq, kmax) global
    indices of the exact top-kmax over the whole gallery."""
    offset, part = local_part(gallery, dist)
    top = np.full((len(query), kmax), -1, dtype=np.int64)

    def positives_of(rows: range, with_scores: bool) -> Positives:
        owner, index, score = _local_positives(rows, query, query_labels, exclude, members, part, offset, similarity,
                                               with_scores)
        if dist.enabled:
            owner, index, score = (np.concatenate(dist.all_gather(x)) for x in (owner, index, score))
        return Positives.build(owner, index, score, len(rows))

    mean_positives = float(np.mean([len(members.get(int(c), ())) for c in query_labels])) if len(query) else 1.0
    for chunk in rank_chunks(query, part, kmax, positives_of, similarity=similarity, device=device, exclude=exclude,
                             memory_budget=memory_budget, offset=offset, positives_per_query=mean_positives,
                             threads=threads, progress=progress and dist.is_main, row_scores=not dist.enabled):
        rows = np.arange(chunk.start, chunk.start + len(chunk.top_i))
        top[rows] = _gathered_topk(dist, chunk.top_s, chunk.top_i, kmax)[1]
        ranks = 1 + dist.all_reduce_sum(chunk.above)
        ap, ap_r = precisions_from_ranks(chunk.positives, ranks)
        if "map" in per_query:
            per_query["map"][rows] = ap
        if "map@r" in per_query:
            per_query["map@r"][rows] = ap_r
    return top


def precisions_from_ranks(positives: Positives, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: AP (mean over positives of j / rank_j) and AP@R (only ranks <= R count); 0 without positives."""
    ptr = positives.ptr
    sizes = np.diff(ptr)
    owner = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    r = (np.sort((owner << 40) | ranks) & ((1 << 40) - 1)).astype(np.float64)  # ranks ascending within each query
    j = np.arange(1, len(r) + 1) - np.repeat(ptr[:-1], sizes)
    precision = j / r
    within = np.where(r <= np.repeat(sizes, sizes), precision, 0.0)
    ap, ap_r = np.zeros(len(sizes)), np.zeros(len(sizes))
    live = sizes > 0
    if live.any():
        starts = ptr[:-1][live]
        ap[live] = np.add.reduceat(precision, starts) / sizes[live]
        ap_r[live] = np.add.reduceat(within, starts) / sizes[live]
    return ap, ap_r
