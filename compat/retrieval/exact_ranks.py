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
their score (binning is monotone, so a whole bin above a window's bin is above it); only the items
in bins that a window touches are compared one by one. No row is sorted.

When the windows are crowded (a large gallery, many positives per query: the float32 windows then
hold many items each, and re-scoring them one pair at a time costs more than a matrix product), the
rows of that group are counted again on float64 scores from a matrix product (``S64``, within
:func:`_bound64` of ``S``, a window some 10^8 times narrower), with every positive's exact score as
its threshold: the same counts, for a cost close to a second matrix product.
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
# A group whose windows hold more items to re-score than this fraction of its scores is counted on
# float64 scores instead (measured: 0.4% of the scores re-scored one by one is faster, 5.5% slower).
_CROWDED = 1 / 64
# float64 values per slice of the gallery block in the float64 pass (scores and features): 32 MiB.
_SLICE_ENTRIES = 1 << 22
_UNIT_ROUNDOFF64 = 2.0**-53


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


def _below(x: np.ndarray, dtype: type) -> np.ndarray:
    """The largest value of ``dtype`` (float32 or float64) <= each float64 value."""
    if dtype is np.float64:
        return np.nextafter(x, -np.inf)
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y)


def _above(x: np.ndarray, dtype: type) -> np.ndarray:
    """The smallest value of ``dtype`` (float32 or float64) >= each float64 value."""
    if dtype is np.float64:
        return np.nextafter(x, np.inf)
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y)


def _bin_of(x: np.ndarray, low: np.ndarray, scale: np.ndarray, nb: int) -> np.ndarray:
    """Bins 1..nb of scores between ``low`` and the top (0: below ``low``); never decreasing with ``x``.

    The same operations in the scores' own dtype for the items and for the windows' ends, so an item
    and a bound that compare one way fall into bins that do not compare the other way."""
    t = (x - low) * scale
    np.clip(t, -1, nb - 1, out=t)
    return t.astype(np.int64) + 1


def _rows_counts(s: np.ndarray, ptr: np.ndarray, index: np.ndarray, threshold: np.ndarray, slack: np.ndarray,
                 eps: np.ndarray, start: int, q_raw: np.ndarray, block_raw: np.ndarray, exact_p: np.ndarray | None,
                 similarity: Similarity) -> np.ndarray | None:
    """Items of one block ranked above each positive of a few queries (see the module docstring).

    Args:
        s: (r, b) float32 or float64 scores of the block (higher better; left-out items at -inf).
        ptr: (r + 1,) row j's positives are entries ``ptr[j]:ptr[j + 1]`` of the per-positive arrays:
        index, threshold, slack: its global index, its score and the bound on
            ``|threshold - S_p|`` (0 when exact).
        eps: (r,) bound on ``|s - S|`` of each query in this block.
        start: global index of the block's first item; q_raw (r, D), block_raw (b, D): original features.
        exact_p: the positives' exact scores, or None when they are in this block (computed here).

    Returns:
        (M,) the counts, or None for float32 scores whose windows are crowded (``_CROWDED``).
    """
    (r, b), m, dtype = s.shape, len(index), s.dtype.type
    owner = np.repeat(np.arange(r), np.diff(ptr))
    half = slack + eps[owner]
    lo, hi = _below(threshold - half, dtype), _above(threshold + half, dtype)
    # Every row's candidates (scores from its lowest window up) in equal-width bins, one key per bin.
    has = np.flatnonzero(np.diff(ptr) > 0)
    low = np.full(r, np.inf, dtype=dtype)
    low[has] = np.minimum.reduceat(lo, ptr[has])
    span = s.max(axis=1) - low
    nb = max(1, b // _PER_BIN)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where((span > 0) & np.isfinite(span), nb / span, 1).astype(dtype)
    width = nb + 2  # keys of row j: j * width + bin
    key = _bin_of(s, low[:, None], scale[:, None], nb)
    key += (np.arange(r) * width)[:, None]
    key = key.ravel()
    per_bin = np.cumsum(np.bincount(key, minlength=r * width))
    key_lo = _bin_of(lo, low[owner], scale[owner], nb) + owner * width
    key_hi = _bin_of(hi, low[owner], scale[owner], nb) + owner * width
    counts = per_bin[owner * width + width - 1] - per_bin[key_hi]  # the bins above hi's bin
    # The items of the bins that some window touches, ordered by key.
    edges = np.bincount(key_lo, minlength=r * width + 1) - np.bincount(key_hi + 1, minlength=r * width + 1)
    near = np.flatnonzero((np.cumsum(edges) > 0)[key])
    order = np.argsort(key[near], kind="stable")
    near = near[order]
    keys, vals, cols = key[near], s.ravel()[near], near % b
    # Each positive against the near items of its window's bins: above hi, below lo, or to re-score.
    below = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=r * width))])  # near items with a lower key
    first = below[key_lo]
    span_n = below[key_hi + 1] - first
    total = int(span_n.sum())
    if not total:
        return counts
    who = np.repeat(np.arange(m), span_n)
    at = np.arange(total) - np.repeat(np.cumsum(span_n) - span_n, span_n) + np.repeat(first, span_n)
    v, g = vals[at], cols[at] + start
    above = v > hi[who]
    counts += np.bincount(who[above], minlength=m)
    inside = ~above & (v >= lo[who]) & (g != index[who])
    who, g = who[inside], g[inside]
    if len(g) > _CROWDED * s.size and dtype is np.float32:
        return None
    if len(g):
        q64 = as_f64(q_raw, similarity)
        if exact_p is None:  # the exact scores of the positives that have items to compare with
            exact_p = np.zeros(m)
            need = np.unique(who)
            exact_p[need] = pair_f64(q64[owner[need]], as_f64(block_raw[index[need] - start], similarity), similarity)
        items, back = np.unique(g - start, return_inverse=True)
        s_g = pair_f64(q64[owner[who]], as_f64(block_raw[items], similarity)[back], similarity)
        s_p = exact_p[who]
        above = (s_g > s_p) | ((s_g == s_p) & (g < index[who]))
        counts += np.bincount(who[above], minlength=m)
    return counts


def _bound64(q_norm: np.ndarray, gallery_norm: float, dim: int, similarity: Similarity) -> np.ndarray:
    """Bound on ``|S64 - S|`` per query (:func:`_scores64` against the canonical score), doubled;
    ``q_norm`` and ``gallery_norm`` (the largest gallery row's) are the raw features' norms (L2 only)."""
    if similarity is Similarity.COSINE:
        return np.full(len(q_norm), 8.0 * (dim + 2) * _UNIT_ROUNDOFF64)
    return 4.0 * (dim + 3) * _UNIT_ROUNDOFF64 * (q_norm + gallery_norm) ** 2


def _scores64(q64: np.ndarray, block: np.ndarray, sq: np.ndarray, similarity: Similarity) -> np.ndarray:
    """(r, b) float64 scores from one matrix product: ``q64`` from :func:`as_f64`, ``block`` the raw
    rows in float64, ``sq`` their squared norms."""
    s = q64 @ block.T
    if similarity is Similarity.COSINE:
        s *= 1.0 / np.maximum(np.sqrt(sq), 1e-300)
    else:
        s *= 2.0
        s -= np.einsum("ij,ij->i", q64, q64)[:, None]
        s -= sq
    return s


def _count_float64(parts: list[range], positives: Positives, rows: range, exclude: np.ndarray | None, start: int,
                   q_raw: np.ndarray, block_raw: np.ndarray, similarity: Similarity, out: np.ndarray,
                   pool: ThreadPoolExecutor | None) -> None:
    """Count the positives of the crowded groups ``parts`` again, on float64 scores of the block,
    slice by slice: one matrix product per slice for all their rows, then the counting per group."""
    b, dim = block_raw.shape
    local = np.concatenate([np.arange(p.start, p.stop) for p in parts])
    q64 = as_f64(q_raw[local], similarity)
    q_norm = np.linalg.norm(q_raw[local].astype(np.float64), axis=1)
    step = max(1, min(b, _SLICE_ENTRIES // max(dim, len(local))))
    # Regrouped for the slices: runs of adjacent rows, at most _GROUP_ENTRIES scores per group.
    runs = np.split(local, np.flatnonzero(np.diff(local) != 1) + 1)
    size = max(1, _GROUP_ENTRIES // step)
    groups = [range(int(r[i]), int(r[min(len(r), i + size) - 1]) + 1) for r in runs for i in range(0, len(r), size)]
    jobs, first = [], 0
    for part in groups:
        a, e = positives.ptr[rows[part.start]], positives.ptr[rows[part.stop - 1] + 1]
        ptr = positives.ptr[rows[part.start] : rows[part.stop - 1] + 2] - a
        view = slice(first, first + len(part))
        first += len(part)
        if positives.score is None:  # every positive lies in this block
            owner = np.repeat(np.arange(len(part)), np.diff(ptr))
            exact = pair_f64(q64[view][owner], as_f64(block_raw[positives.index[a:e] - start], similarity), similarity)
        else:
            exact = positives.score[a:e]
        jobs.append((part, view, a, e, ptr, exact))
    ex = None if exclude is None else exclude[local] - start
    for c0 in range(0, b, step):
        raw = block_raw[c0 : c0 + step]
        x64 = raw.astype(np.float64)
        sq = np.einsum("ij,ij->i", x64, x64)
        s64 = _scores64(q64, x64, sq, similarity)
        if ex is not None:
            hit = np.flatnonzero((ex >= c0) & (ex < c0 + len(raw)))
            s64[hit, ex[hit] - c0] = -np.inf
        gallery_norm = float(np.sqrt(sq.max())) if len(sq) else 0.0

        def work(job, c0=c0, raw=raw, s64=s64, gallery_norm=gallery_norm) -> None:
            part, view, a, e, ptr, exact = job
            eps = _bound64(q_norm[view], gallery_norm, dim, similarity)
            out[a:e] += _rows_counts(s64[view], ptr, positives.index[a:e], exact, np.zeros(e - a), eps, start + c0,
                                     q_raw[part.start : part.stop], raw, exact, similarity)

        if pool is None:
            for job in jobs:
                work(job)
        else:
            list(pool.map(work, jobs))


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
    exclude: np.ndarray | None = None,
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
        exclude: (len(rows),) global gallery index of each query's left-out item, -1 for none (the
            items at -inf in ``scores``); None when no query leaves one out.
        threads: worker threads (NumPy releases the GIL in its array loops).
    """

    crowded_seen = []  # once a group is crowded, the next ones of this block go to the float64 pass at once

    def work(part: range) -> range | None:
        ptr = positives.ptr[rows[part.start] : rows[part.stop - 1] + 2]
        a, e = ptr[0], ptr[-1]
        if e == a:
            return None
        if crowded_seen:
            return part
        sub, sub_eps = scores[part.start : part.stop], eps[part.start : part.stop]
        index = positives.index[a:e]
        if positives.score is None:
            owner = np.repeat(np.arange(len(part)), np.diff(ptr))
            threshold, slack, exact = sub[owner, index - start].astype(np.float64), sub_eps[owner], None
        else:
            threshold, slack, exact = positives.score[a:e], np.zeros(e - a), positives.score[a:e]
        counts = _rows_counts(sub, ptr - a, index, threshold, slack, sub_eps, start, q_raw[part.start : part.stop],
                              block_raw, exact, similarity)
        if counts is None:
            crowded_seen.append(part)
            return part
        out[a:e] += counts
        return None

    n = len(rows)
    group = max(1, _GROUP_ENTRIES // max(1, scores.shape[1]))
    parts = [range(s, min(n, s + group)) for s in range(0, n, group)]
    if threads <= 1 or len(parts) < 2:
        crowded = [p for p in map(work, parts) if p is not None]
        if crowded:
            _count_float64(crowded, positives, rows, exclude, start, q_raw, block_raw, similarity, out, None)
        return
    with ThreadPoolExecutor(threads) as pool:
        crowded = [p for p in pool.map(work, parts) if p is not None]
        if crowded:
            _count_float64(crowded, positives, rows, exclude, start, q_raw, block_raw, similarity, out, pool)
