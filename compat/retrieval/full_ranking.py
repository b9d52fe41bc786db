"""Full-ranking retrieval (mAP, mAP@R): the exact top-k and every positive's exact rank, in one pass.

The gallery is read block by block once per chunk of queries, and the chunk is as large as its
state allows (each query's top-k candidates and its positives' counts), so a gallery much larger
than memory is read once for all queries when they fit. For each (query sub-chunk, gallery block)
the backend's float32 scores give (1) candidates for the top-k, re-scored in float64 at the end
(:func:`compat.retrieval.knn.knn`'s guarantee) and (2) for every positive, the block's items ranked
above it (:func:`compat.retrieval.exact_ranks.count_above`, exact).

``gallery`` may be one rank's part of a larger gallery: ``offset`` is the global index of its first
row, counts and top-k indices are global, and a caller sums the counts and merges the top-k over
the parts (:mod:`compat.retrieval.sharding`). Positives are given by the caller, with their exact
scores computed by whichever part holds them; when the whole gallery is one block in one process,
their float32 scores are read from the score rows instead (the counts are exact either way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from compat.progress import progress as progress_bar
from compat.retrieval.exact_ranks import Positives, count_above
from compat.retrieval.knn import (
    _EXTRA_CANDIDATES,
    Similarity,
    _canonical_topk,
    _mask_excluded,
    _plan,
    _PreparedGallery,
    error_bound,
    prepare,
    score_block_torch,
)
from compat.sharded import release

__all__ = ["RankedChunk", "rank_chunks"]

# Bytes of state per positive (index, score, count) and per query (candidates, bounds, features).
_POSITIVE_BYTES = 24


@dataclass(frozen=True)
class RankedChunk:
    """One chunk of queries ``start:start + len(top_i)`` searched against the (local) gallery.

    Attributes:
        top_s, top_i: (r, k) exact top-k over the gallery given, scores higher-better, global
            indices (-1 and NaN pad).
        positives: the chunk's positives as given by the caller.
        above: (M,) int64 items of the gallery given ranked above each positive.
    """

    start: int
    top_s: np.ndarray
    top_i: np.ndarray
    positives: Positives
    above: np.ndarray


def _chunk_rows(nq: int, dim: int, kk: int, positives_per_query: float, budget: int) -> int:
    per_query = 16 * kk + 8 * dim + _POSITIVE_BYTES * max(1.0, positives_per_query)
    return max(1, min(nq, int(budget // 4 // per_query)))


def rank_chunks(
    query: np.ndarray,
    gallery: np.ndarray,
    k: int,
    positives_of: Callable[[range, bool], Positives],
    *,
    similarity: Similarity,
    device: str,
    exclude: np.ndarray,
    memory_budget: int,
    offset: int = 0,
    positives_per_query: float = 1.0,
    threads: int = 2,
    progress: bool = False,
    row_scores: bool = True,
) -> Iterator[RankedChunk]:
    """Exact top-k and positive counts for chunks of queries.

    Args:
        query: (Nq, D) features; gallery: (Ng, D), a part of the gallery starting at global ``offset``.
        k: neighbours per query.
        positives_of: the positives of query rows ``range`` (global indices), with their exact scores
            when asked (``positives_of(rows, True)``).
        exclude: (Nq,) global index of each query's left-out item, -1 for none.
        memory_budget: bytes for the score block, the cached gallery and the chunk's state.
        positives_per_query: expected positives per query, to size chunks.
        threads: CPU threads for the counting.
        row_scores: allow reading positives' scores from the score rows when the gallery is one
            block (not when other parts of the gallery are counted elsewhere).
    """
    nq, ng, dim = query.shape[0], gallery.shape[0], query.shape[1]
    kk = min(max(ng, 1), k + _EXTRA_CANDIDATES)
    plan = _plan(nq, max(ng, 1), dim, kk, memory_budget)
    prepared = _PreparedGallery(gallery, plan.gallery_rows, similarity, memory_budget) if ng else None
    sub_rows = max(1, min(nq, memory_budget // 4 // (12 * max(1, min(ng, plan.gallery_rows)))))
    # The chunks depend on the queries only, so that every rank of a split gallery takes the same ones.
    rows = _chunk_rows(nq, dim, k + _EXTRA_CANDIDATES, positives_per_query, memory_budget)
    exact_scores = not (row_scores and 0 < ng <= plan.gallery_rows)
    chunks = range(0, nq, rows)
    for start in progress_bar(chunks, desc="ranking", enabled=progress and len(chunks) > 1):
        stop = min(nq, start + rows)
        positives = positives_of(range(start, stop), exact_scores)
        q_raw = np.asarray(query[start:stop])
        ex = np.asarray(exclude[start:stop], dtype=np.int64)
        above = np.zeros(len(positives.index), dtype=np.int64)
        if prepared is None:
            yield RankedChunk(start, np.full((stop - start, k), np.nan), np.full((stop - start, k), -1, np.int64),
                              positives, above)
            continue
        local_ex = np.where((ex >= offset) & (ex < offset + ng), ex - offset, -1)
        state = _Search(q_raw, local_ex, kk, similarity, device, sub_rows)
        max_norm = 0.0
        for b_start, block in prepared:
            raw = np.asarray(gallery[b_start : b_start + len(block)])
            norm = float(np.sqrt(np.einsum("ij,ij->i", block, block).max())) * (1 + 1e-6)
            max_norm = max(max_norm, norm)
            for sub in state.sub_chunks():
                s = state.scores(sub, block, b_start)
                eps = error_bound(q_raw[sub.start : sub.stop], norm, dim, similarity)
                count_above(s, positives, sub, eps, offset + b_start, q_raw[sub.start : sub.stop], raw, similarity,
                            above, exclude=ex[sub.start : sub.stop], threads=threads)
            release(gallery, b_start, b_start + len(block))
        if similarity is Similarity.L2 and prepared.cache is None:
            prepared.record_max_norm(max_norm)
        top_s, top_i = _canonical_topk(q_raw, gallery, prepared, *state.candidates(), k, local_ex, similarity)
        release(gallery, 0, ng)
        yield RankedChunk(start, top_s, np.where(top_i >= 0, top_i + offset, -1), positives, above)


class _Search:
    """The running float32 top-kk candidates of a chunk of queries, and its score blocks."""

    def __init__(self, q_raw: np.ndarray, exclude: np.ndarray, kk: int, similarity: Similarity, device: str,
                 sub_rows: int):
        import torch

        self.torch, self.kk, self.similarity, self.device, self.sub_rows = torch, kk, similarity, device, sub_rows
        self.q = torch.from_numpy(prepare(q_raw, similarity)).to(device)
        self.exclude = torch.from_numpy(exclude).to(device)
        n = len(q_raw)
        self.best_s = torch.full((n, kk), -np.inf, device=device)
        self.best_i = torch.full((n, kk), -1, dtype=torch.int64, device=device)

    def sub_chunks(self) -> Iterator[range]:
        n = self.q.shape[0]
        for s in range(0, n, self.sub_rows):
            yield range(s, min(n, s + self.sub_rows))

    def scores(self, sub: range, block: np.ndarray, b_start: int) -> np.ndarray:
        """(len(sub), b) float32 scores of the block (left-out items at -inf); the candidates are updated."""
        torch = self.torch
        g = torch.from_numpy(block).to(self.device)
        s = score_block_torch(self.q[sub.start : sub.stop], g, self.similarity)
        _mask_excluded(s, self.exclude[sub.start : sub.stop], b_start)
        take = min(self.kk, s.shape[1])
        top_s, top_i = torch.topk(s, take, dim=1)
        cur_s, cur_i = self.best_s[sub.start : sub.stop], self.best_i[sub.start : sub.stop]
        merged_s = torch.cat([cur_s, top_s], 1)
        merged_i = torch.cat([cur_i, top_i + b_start], 1)
        keep, order = torch.topk(merged_s, self.kk, dim=1)
        self.best_s[sub.start : sub.stop] = keep
        self.best_i[sub.start : sub.stop] = torch.gather(merged_i, 1, order)
        return s.cpu().numpy()

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        return self.best_s.double().cpu().numpy(), self.best_i.cpu().numpy()
