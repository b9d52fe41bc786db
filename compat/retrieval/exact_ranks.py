"""Exact ranks of each query's positives, counted gallery block by gallery block.

The rank of positive p of a query is ``1 + #{g : S_g > S_p} + #{g : S_g == S_p, g < p}`` over the
gallery without the left-out item, where ``S`` is the canonical float64 score
(:func:`compat.retrieval.knn.score_f64`) and ``g < p`` compares global gallery indices. It is a sum
over any partition of the gallery, so blocks, shards and ranks can each count their own items and
the totals are the same integers.

The backend's float32 score ``s`` of an item is within ``eps`` of ``S`` (the classical bound,
:func:`compat.retrieval.knn.error_bound`). A positive's threshold ``t`` is either its exact score
(``slack`` 0) or a float32 score of it (``slack`` its bound). An item with ``s > t + slack + eps``
is above the positive for sure, one with ``s < t - slack - eps`` below; the few inside that window
are scored again in float64 and compared exactly (ties by the lower global index). So ranks do not
depend on how the float32 scores were computed: backend, device, chunk sizes, shards, ranks.

Per query row the candidates (items above the lowest window) are put into equal-width bins of
their float32 score (binning is monotone, so a whole bin above a window's bin is above it); only
the items in bins that a window touches are looked at one by one. No row is sorted, and a few rows
are handled together in whole-array operations.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from compat.retrieval.knn import Similarity, as_f64, pair_f64

__all__ = ["Positives", "count_above"]

# Scores handled together (a few rows of one block): bounds the bins and masks to a few tens of MiB.
_GROUP_ENTRIES = 1 << 20
# Candidates per bin, on average, when a row's scores are binned.
_PER_BIN = 2


@dataclass(frozen=True)
class Positives:
    """The positives of a chunk of queries, grouped by query (CSR layout).

    Attributes:
        ptr: (r + 1,) query j's positives are entries ``ptr[j]:ptr[j + 1]``.
        index: (M,) global gallery index of each positive.
        score: (M,) exact float64 score ``S_p`` of each positive, or ``None``: then every positive
            lies in the block being counted and its float32 score is read from the score row.
    """

    ptr: np.ndarray
    index: np.ndarray
    score: np.ndarray | None = None

    @classmethod
    def build(cls, row: np.ndarray, index: np.ndarray, score: np.ndarray | None, n_queries: int) -> Positives:
        """From (query row, gallery index[, exact score]) triples in any order (gathered from ranks).

        A query's positives keep the order they were given in; nothing depends on it."""
        order = np.argsort(row, kind="stable")  # runs already in order (one per rank) merge in linear time
        ptr = np.searchsorted(row[order], np.arange(n_queries + 1), side="left").astype(np.int64)
        return cls(ptr, index[order].astype(np.int64), None if score is None else score[order].astype(np.float64))


def _below32(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y)


def _above32(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each float64 value."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y)


def _ordered(x: np.ndarray) -> np.ndarray:
    """Order-preserving non-negative int64 keys (< 2**32) of float32 values (-0.0 counts as +0.0)."""
    bits = (x + np.float32(0)).view(np.int32)
    return (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64) + (1 << 31)


def _near_items(s: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin one row's candidates; returns (items above each hi's bin, hi's bin, near items, their bins).

    The candidates (scores at or above the lowest ``lo``) fall into equal-width bins between that
    ``lo`` and the row's best score, about ``_PER_BIN`` per bin; the bin of a value never decreases
    with it. A "near" item lies in a bin that some window ``[lo, hi]`` touches.
    """
    low = lo.min()
    cand = np.flatnonzero(s >= low)
    vals = s[cand]
    nb = max(1, len(vals) // _PER_BIN)
    span = np.float32(vals.max() - low) if len(vals) else np.float32(0)
    scale = np.float32(nb / span) if span > 0 else np.float32(0)

    def bin_of(x: np.ndarray) -> np.ndarray:
        return np.minimum(((x - low) * scale).astype(np.int64), nb - 1)

    b = bin_of(vals)
    above_bin = len(vals) - np.cumsum(np.bincount(b, minlength=nb))
    b_lo, b_hi = bin_of(lo), bin_of(hi)
    touched = np.cumsum(np.bincount(b_lo, minlength=nb + 1) - np.bincount(b_hi + 1, minlength=nb + 1)) > 0
    near = np.flatnonzero(touched[b])
    return above_bin[b_hi], b_hi, cand[near], b[near]


def _rows_counts(s: np.ndarray, ptr: np.ndarray, index: np.ndarray, threshold: np.ndarray, slack: np.ndarray,
                 eps: np.ndarray, start: int, q_raw: np.ndarray, block_raw: np.ndarray, exact_p: np.ndarray | None,
                 similarity: Similarity) -> np.ndarray:
    """Items of one block ranked above each positive of a few queries (see the module docstring).

    Args:
        s: (r, b) float32 scores of the block (higher better; left-out items at -inf).
        ptr: (r + 1,) row j's positives are entries ``ptr[j]:ptr[j + 1]`` of the per-positive arrays:
        index, threshold, slack: its global index, its score and the bound on
            ``|threshold - S_p|`` (0 when exact).
        eps: (r,) bound on ``|s - S|`` of each query in this block.
        start: global index of the block's first item; q_raw (r, D), block_raw (b, D): original features.
        exact_p: the positives' exact scores, or None when they are in this block (computed here).
    """
    m = len(index)
    owner = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    half = slack + eps[owner]
    lo, hi = _below32(threshold - half), _above32(threshold + half)
    counts = np.zeros(m, dtype=np.int64)
    b_hi = np.zeros(m, dtype=np.int64)
    near_r, near_c, near_b = [], [], []
    for j in range(len(ptr) - 1):
        a, e = ptr[j], ptr[j + 1]
        if e > a:
            counts[a:e], b_hi[a:e], cols, bins = _near_items(s[j], lo[a:e], hi[a:e])
            near_r.append(np.full(len(cols), j, dtype=np.int64)), near_c.append(cols), near_b.append(bins)
    if not near_r:
        return counts
    rows, cols, bins = np.concatenate(near_r), np.concatenate(near_c), np.concatenate(near_b)
    key_v = (rows << 32) | _ordered(s[rows, cols])
    order = np.argsort(key_v, kind="stable")
    key_v, cols = key_v[order], cols[order]
    key_b = (rows[order] << 32) | bins[order]  # sorted too: bins never decrease with the score
    row_key = owner << 32
    # above hi: the bins after hi's bin, plus the near items of hi's own bin that score higher than hi
    counts += np.searchsorted(key_b, row_key | b_hi, side="right") - np.searchsorted(key_v, row_key | _ordered(hi),
                                                                                     side="right")
    left = np.searchsorted(key_v, row_key | _ordered(lo), side="left")
    right = np.searchsorted(key_v, row_key | _ordered(hi), side="right")
    width = right - left
    total = int(width.sum())
    if total:
        who = np.repeat(np.arange(m), width)
        g = cols[np.arange(total) - np.repeat(np.cumsum(width) - width, width) + np.repeat(left, width)] + start
        keep = g != index[who]
        who, g = who[keep], g[keep]
        q64 = as_f64(q_raw, similarity)[owner[who]]
        wanted = g - start if exact_p is not None else np.concatenate([g - start, index[who] - start])
        items, back = np.unique(wanted, return_inverse=True)
        g64 = as_f64(block_raw[items], similarity)
        s_g = pair_f64(q64, g64[back[: len(g)]], similarity)
        s_p = exact_p[who] if exact_p is not None else pair_f64(q64, g64[back[len(g) :]], similarity)
        above = (s_g > s_p) | ((s_g == s_p) & (g < index[who]))
        counts += np.bincount(who[above], minlength=m)
    return counts


def count_above(
    scores: np.ndarray,
    positives: Positives,
    rows: range,
    eps: np.ndarray,
    start: int,
    q_raw: np.ndarray,
    block_raw: np.ndarray,
    similarity: Similarity,
    out: np.ndarray,
    *,
    threads: int = 2,
) -> None:
    """Add, for every positive of the queries ``rows``, the items of one gallery block ranked above it.

    Args:
        scores: (len(rows), b) float32 block scores of those queries, left-out items at -inf.
        positives: the positives of the whole query chunk (``rows`` index into it); without exact
            scores, the block must hold every positive (the whole gallery in one block).
        eps: (len(rows),) error bound of each query's float32 scores in this block.
        start: global gallery index of the block's first row.
        q_raw: (len(rows), D) the queries' original features; block_raw: (b, D) the block's.
        out: (M,) int64 counts of the chunk's positives, updated in place.
        threads: worker threads (NumPy releases the GIL in its array loops).
    """

    def work(part: range) -> None:
        ptr = positives.ptr[rows[part.start] : rows[part.stop - 1] + 2]
        a, e = ptr[0], ptr[-1]
        if e == a:
            return
        sub, sub_eps = scores[part.start : part.stop], eps[part.start : part.stop]
        index = positives.index[a:e]
        if positives.score is None:
            owner = np.repeat(np.arange(len(part)), np.diff(ptr))
            threshold, slack, exact = sub[owner, index - start].astype(np.float64), sub_eps[owner], None
        else:
            threshold, slack, exact = positives.score[a:e], np.zeros(e - a), positives.score[a:e]
        out[a:e] += _rows_counts(sub, ptr - a, index, threshold, slack, sub_eps, start, q_raw[part.start : part.stop],
                                 block_raw, exact, similarity)

    n = len(rows)
    group = max(1, _GROUP_ENTRIES // max(1, scores.shape[1]))
    parts = [range(s, min(n, s + group)) for s in range(0, n, group)]
    if threads <= 1 or len(parts) < 2:
        for part in parts:
            work(part)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, parts))
