"""The query-gallery protocol (docs/metrics.md, "Protocols"): separate query and gallery sets.

Queries need not be gallery items and nothing is removed by id. A query's positives are the gallery
items with its label, or, with a relevance file (:mod:`compat.retrieval.qrels`), the items listed as
positive for it. Some items are *ignored*, neither positive nor negative: they are removed from the
query's ranking before any rank is counted:

- with ``exclude=same-group``, the items that would be positives and share the query's group (the
  same identity seen by the same camera, as in the Market-1501 and DukeMTMC-reID protocols);
- with a relevance file, the items listed as junk for the query (revisited Oxford / Paris).

Metrics as for leave-one-out: CMC@k from the exact top-k (float64 re-scored, ties to the lower
gallery index), mAP and mAP@R from exact ranks (:mod:`compat.retrieval.exact_ranks`: the items
above each positive are counted over the whole gallery, then its query's ignored items above it,
compared on the same canonical scores, are taken off); queries without a positive are skipped and
counted. The top-k search asks for k + (number of ignored items) neighbours, in a few buckets of
queries, and drops the ignored ones, so the top-k is exact whatever is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from compat.errors import CompatError
from compat.retrieval.exact_ranks import Positives
from compat.retrieval.full_ranking import rank_chunks
from compat.retrieval.knn import Similarity, knn, score_f64
from compat.retrieval.metrics import Metric, MetricKind, RetrievalResult
from compat.retrieval.protocols import _class_members, _cmc_hits, _result, first_positive
from compat.retrieval.qrels import Qrels, resolve_ids
from compat.retrieval.sharding import precisions_from_ranks

__all__ = ["Exclude", "Judgements", "SparseRows", "judge", "query_gallery"]

# Queries searched together at least (see _buckets).
_MIN_BUCKET = 256
# Float64 features gathered at a time while scoring (query, item) pairs exactly.
_PAIR_BYTES = 64 << 20


class Exclude(str, Enum):
    """Which gallery items a query ignores (neither positive nor negative)."""

    NONE = "none"
    SAME_GROUP = "same-group"


@dataclass(frozen=True)
class SparseRows:
    """Per query, a sorted array of gallery indices (compressed rows: ``indptr`` (Nq + 1,), ``indices``)."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, n_rows: int) -> SparseRows:
        order = np.lexsort((cols, rows))
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), cols[order].astype(np.int64))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r] : self.indptr[r + 1]]

    def pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, col)`` of every entry of the given rows (ascending)."""
        starts, counts = self.indptr[rows], self.counts[rows]
        total = int(counts.sum())
        owner = np.repeat(np.arange(len(rows)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows[owner], self.indices[np.repeat(starts, counts) + offsets]

    def contains(self, rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
        """Whether ``cols[a, b]`` is an entry of row ``rows[a]`` (``cols`` (r, k); -1 is never one)."""
        r, c = self.pairs(np.unique(rows))
        if len(r) == 0:
            return np.zeros(cols.shape, dtype=bool)
        keys = r * n_cols + c  # ascending: rows ascending, columns sorted within a row
        wanted = rows[:, None] * n_cols + np.maximum(cols, 0)
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return (cols >= 0) & (keys[pos] == wanted)


@dataclass(frozen=True)
class Judgements:
    """Who is relevant to whom in one cell.

    Attributes:
        n_pos: (Nq,) positives of each query once ignored items are removed.
        ignored: per query, the gallery items removed from its ranking.
        positives: per query, its positives (relevance file); ``None``: the same label, minus ignored items.
    """

    n_pos: np.ndarray
    ignored: SparseRows
    positives: SparseRows | None


def judge(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    exclude: Exclude = Exclude.NONE,
    qrels: Qrels | None = None,
    where: str = "query-gallery",
) -> Judgements:
    """Positives and ignored items of every query of a cell (rows of a relevance file whose ids are
    absent from this cell's sets are left out)."""
    nq = len(query_labels)
    same_group = exclude is Exclude.SAME_GROUP
    if same_group and (query_groups is None or gallery_groups is None):
        raise CompatError(f"{where}: --exclude same-group needs a 'groups' array in the query and gallery features")
    if qrels is None:
        return _judge_by_label(query_labels, gallery_labels, query_groups if same_group else None, gallery_groups)
    qi, gi = resolve_ids(qrels, "query", query_ids), resolve_ids(qrels, "gallery", gallery_ids)
    keep = (qi >= 0) & (gi >= 0)
    pos = keep & qrels.positive
    pq, pg = qi[pos], gi[pos]
    junk = keep & ~qrels.positive
    iq, ig = qi[junk], gi[junk]
    if same_group:
        drop = query_groups[pq] == gallery_groups[pg]
        iq, ig = np.concatenate([iq, pq[drop]]), np.concatenate([ig, pg[drop]])
        pq, pg = pq[~drop], pg[~drop]
    positives = SparseRows.from_pairs(pq, pg, nq)
    return Judgements(positives.counts, SparseRows.from_pairs(iq, ig, nq), positives)


def _judge_by_label(q_labels, g_labels, q_groups, g_groups) -> Judgements:
    classes, counts = np.unique(g_labels, return_counts=True)
    at = np.minimum(np.searchsorted(classes, q_labels), len(classes) - 1)
    n_pos = np.where(classes[at] == q_labels, counts[at], 0).astype(np.int64)
    nq = len(q_labels)
    if q_groups is None:
        return Judgements(n_pos, SparseRows(np.zeros(nq + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)), None)
    # (label, group) -> one integer key, ranks within the values both sets use
    labels = np.unique(np.concatenate([q_labels, g_labels]))
    groups = np.unique(np.concatenate([q_groups, g_groups]))
    def key(lab, grp):
        return np.searchsorted(labels, lab) * len(groups) + np.searchsorted(groups, grp)
    g_key, q_key = key(g_labels, g_groups), key(q_labels, q_groups)
    order = np.argsort(g_key, kind="stable")
    sorted_keys = g_key[order]
    start = np.searchsorted(sorted_keys, q_key, side="left")
    size = np.searchsorted(sorted_keys, q_key, side="right") - start
    owner = np.repeat(np.arange(nq), size)
    offsets = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
    ignored = SparseRows.from_pairs(owner, order[np.repeat(start, size) + offsets], nq)
    return Judgements(n_pos - size, ignored, None)


def query_gallery(
    query: np.ndarray,
    query_labels: np.ndarray,
    query_ids: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_ids: np.ndarray,
    metrics: tuple[Metric, ...],
    *,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    exclude: Exclude = Exclude.NONE,
    qrels: Qrels | None = None,
    similarity: Similarity = Similarity.COSINE,
    backend: str = "auto",
    device: str = "cpu",
    memory_budget: int = 1 << 30,
    threads: int = 2,
    where: str = "query-gallery",
    progress: bool = False,
) -> RetrievalResult:
    """Query-gallery retrieval: separate sets, label or relevance-file positives, ignored items removed.

    Args:
        query, gallery: (Nq, D), (Ng, D) features.
        query_labels, gallery_labels: (Nq,), (Ng,) int64.
        query_ids, gallery_ids: item ids (matched against a relevance file).
        metrics: any of cmc@k, map, map@r.
        query_groups, gallery_groups: (Nq,), (Ng,) int64 groups, for ``exclude=same-group``.
        exclude: ``none`` or ``same-group``.
        qrels: a relevance file replacing label relevance.

    Returns:
        Averages over the queries with at least one positive; per-query values, and each query's
        top-1 gallery index and whether it is a positive.
    """
    judged = judge(query_labels, gallery_labels, query_ids=query_ids, gallery_ids=gallery_ids,
                   query_groups=query_groups, gallery_groups=gallery_groups, exclude=exclude, qrels=qrels, where=where)
    has_pos = judged.n_pos > 0
    kmax = max((m.k for m in metrics if m.kind is MetricKind.CMC), default=1)
    search = {"similarity": similarity, "device": device, "memory_budget": memory_budget, "progress": progress}
    per_query: dict[str, np.ndarray] = {m.name: np.zeros(len(query)) for m in metrics}
    top1 = np.full(len(query), -1, dtype=np.int64)
    hit1 = np.zeros(len(query), dtype=bool)

    def record(rows: np.ndarray, top: np.ndarray) -> None:
        first = _first_hit(top, rows, judged, gallery_labels, query_labels, len(gallery))
        for name, hits in _cmc_hits(first, metrics).items():
            per_query[name][rows] = hits
        top1[rows], hit1[rows] = top[:, 0], first == 1

    if not any(m.needs_full_ranking for m in metrics):
        for rows, extra in _buckets(judged.ignored.counts):
            chunk = query if len(rows) == len(query) else query[rows]
            _, idx = knn(chunk, gallery, kmax + extra, backend=backend, **search)
            record(rows, _drop_ignored(idx, rows, judged.ignored, kmax, len(gallery)))
        return _result(per_query, has_pos, metrics, top1=top1, hit1=hit1)
    sets = (query, query_labels, query_groups, gallery, gallery_labels, gallery_groups)
    _rank_fully(sets, judged, exclude, kmax, per_query, record, similarity=similarity, device=device,
                memory_budget=memory_budget, threads=threads, progress=progress)
    return _result(per_query, has_pos, metrics, top1=top1, hit1=hit1)


def _rank_fully(sets: tuple, judged: Judgements, exclude: Exclude, kmax: int, per_query: dict[str, np.ndarray],
                record, *, similarity: Similarity, device: str, memory_budget: int, threads: int,
                progress: bool) -> None:
    """The exact top-k (to ``record``) and AP / AP@R (into ``per_query``) of every query, from exact
    ranks counted over the whole gallery minus the query's ignored items ranked above each positive."""
    query, query_labels, query_groups, gallery, gallery_labels, gallery_groups = sets
    has_pos = judged.n_pos > 0
    members = _class_members(gallery_labels) if judged.positives is None else {}

    def positives_of(rows: range, with_scores: bool) -> Positives:
        owner, index = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for j, r in enumerate(rows):
            if has_pos[r]:
                p = _positives(r, judged, members, query_labels, query_groups, gallery_groups, exclude)
                owner.append(np.full(len(p), j, dtype=np.int64))
                index.append(p)
        o, i = np.concatenate(owner), np.concatenate(index)
        score = _pair_scores(query, gallery, rows.start + o, i, similarity) if with_scores else None
        return Positives.build(o, i, score, len(rows))

    extra = int(judged.ignored.counts.max(initial=0))
    mean_pos = float(judged.n_pos.mean()) if len(query) else 1.0
    for chunk in rank_chunks(query, gallery, kmax + extra, positives_of, similarity=similarity, device=device,
                             exclude=np.full(len(query), -1, dtype=np.int64), memory_budget=memory_budget,
                             positives_per_query=mean_pos, threads=threads, progress=progress):
        rows = np.arange(chunk.start, chunk.start + len(chunk.top_i))
        record(rows, _drop_ignored(chunk.top_i, rows, judged.ignored, kmax, len(gallery)))
        above = chunk.above - _ignored_above(chunk.positives, range(rows[0], rows[-1] + 1), judged.ignored, query,
                                             gallery, similarity)
        ap, ap_r = precisions_from_ranks(chunk.positives, 1 + above)
        for name, values in (("map", ap), ("map@r", ap_r)):
            if name in per_query:
                per_query[name][rows] = values


def _pair_scores(query, gallery, q_rows: np.ndarray, g_index: np.ndarray, similarity: Similarity) -> np.ndarray:
    """Canonical float64 scores of the (query row, gallery index) pairs, a bounded number at a time."""
    out = np.empty(len(g_index))
    step = max(1, _PAIR_BYTES // (8 * query.shape[1]))
    for s in range(0, len(g_index), step):
        q, g = np.asarray(query[q_rows[s : s + step]]), np.asarray(gallery[g_index[s : s + step]])
        out[s : s + step] = score_f64(q, g[:, None, :], similarity)[:, 0]
    return out


def _ignored_above(positives: Positives, rows: range, ignored: SparseRows, query, gallery,
                   similarity: Similarity) -> np.ndarray:
    """For every positive of a chunk of queries ``rows``, its query's ignored items ranked above it: the
    exact comparison the counts made (higher canonical score, ties to the lower gallery index)."""
    out = np.zeros(len(positives.index), dtype=np.int64)
    q_rows = np.arange(rows.start, rows.stop)
    i_row, i_index = ignored.pairs(q_rows[ignored.counts[q_rows] > 0])
    if len(i_row) == 0 or len(positives.index) == 0:
        return out
    sizes = np.diff(positives.ptr)
    p_score = positives.score
    if p_score is None:
        p_owner = np.repeat(np.arange(len(sizes)), sizes)
        p_score = _pair_scores(query, gallery, rows.start + p_owner, positives.index, similarity)
    i_score = _pair_scores(query, gallery, i_row, i_index, similarity)
    bounds = np.searchsorted(i_row, np.arange(rows.start, rows.stop + 1))  # i_row ascending
    for j in np.flatnonzero((np.diff(bounds) > 0) & (sizes > 0)):
        a, b = positives.ptr[j], positives.ptr[j + 1]
        si, ii = i_score[bounds[j] : bounds[j + 1]], i_index[bounds[j] : bounds[j + 1]]
        sp, ip = p_score[a:b, None], positives.index[a:b, None]
        out[a:b] = ((si > sp) | ((si == sp) & (ii < ip))).sum(1)
    return out


def _buckets(ignored: np.ndarray):
    """Queries grouped by the extra neighbours they need, ``(rows, extra)``: the power of two at or above
    each query's number of ignored items (0 for none), so that the exact re-scoring of the top-k, whose
    cost grows with k, stays close to what a query needs. A group of fewer than ``_MIN_BUCKET`` queries
    joins the next larger one (a search of a few queries costs almost as much as one of many)."""
    extra = np.where(ignored > 0, 2 ** np.ceil(np.log2(np.maximum(ignored, 1))), 0).astype(np.int64)
    values = np.unique(extra)
    pending = np.zeros(0, dtype=np.int64)
    for n, value in enumerate(values):
        rows = np.concatenate([pending, np.flatnonzero(extra == value)])
        if len(rows) < _MIN_BUCKET and n < len(values) - 1:
            pending = rows
            continue
        pending = np.zeros(0, dtype=np.int64)
        yield np.sort(rows), int(value)


def _drop_ignored(idx: np.ndarray, rows: np.ndarray, ignored: SparseRows, k: int, n_gallery: int) -> np.ndarray:
    """The first ``k`` neighbours of each row of ``idx`` that are not ignored by its query (-1 pads)."""
    if not ignored.counts[rows].any():
        return idx[:, :k]
    out = ignored.contains(rows, idx, n_gallery)
    order = np.argsort(out, axis=1, kind="stable")[:, :k]  # kept first, in rank order
    top = np.take_along_axis(idx, order, 1)
    return np.where(np.take_along_axis(out, order, 1), -1, top)


def _first_hit(top: np.ndarray, rows: np.ndarray, judged: Judgements, g_labels: np.ndarray, q_labels: np.ndarray,
               n_gallery: int) -> np.ndarray:
    """1-based rank of the first positive in each row of ``top``; inf when none."""
    if judged.positives is None:
        return first_positive(top, g_labels, q_labels[rows])
    hit = judged.positives.contains(rows, top, n_gallery)
    return np.where(hit.any(1), hit.argmax(1) + 1, np.inf)


def _positives(r: int, judged: Judgements, members: dict[int, np.ndarray], q_labels: np.ndarray,
               q_groups: np.ndarray | None, g_groups: np.ndarray | None, exclude: Exclude) -> np.ndarray:
    if judged.positives is not None:
        return judged.positives.row(r)
    same = members[int(q_labels[r])]
    if exclude is Exclude.SAME_GROUP:
        return same[g_groups[same] != q_groups[r]]
    return same
