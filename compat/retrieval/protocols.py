"""The three evaluation protocols (docs/metrics.md, "Protocols"), as functions over arrays.

- :func:`leave_one_out`: every query searches the gallery with itself removed by item id;
  CMC@k, mAP over the full ranking, mAP@R.
- :func:`template_identification`: gallery features averaged per class (re-normalised for cosine);
  each query ranks the class templates. A query whose id is in the gallery is left out of its own
  class's template. CMC@k (top-1 = identification accuracy) and mAP (= mean reciprocal rank).
- :func:`pair_verification`: seeded positive and negative pairs, the first item embedded by the
  query model and the second by the gallery model; accuracy with k-fold threshold selection.
"""

from __future__ import annotations

import numpy as np

from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.retrieval.knn import Similarity, prepare
from compat.retrieval.metrics import (
    Metric,
    MetricKind,
    RetrievalResult,
    topk_values,
)
from compat.retrieval.precision import Precision
from compat.retrieval.sharding import full_ranking, ranked_topk

__all__ = [
    "first_positive",
    "kfold_threshold_accuracy",
    "leave_one_out",
    "match_ids",
    "pair_verification",
    "sample_pairs",
    "template_identification",
]


def match_ids(query_ids: np.ndarray, gallery_ids: np.ndarray, *, required: bool, where: str) -> np.ndarray:
    """Gallery index of each query id, -1 when absent.

    Raises:
        CompatError: ``required`` and some query id is not in the gallery (leave-one-out).
    """
    if query_ids.dtype.kind != gallery_ids.dtype.kind:
        raise CompatError(
            f"{where}: query ids are {query_ids.dtype} but gallery ids are {gallery_ids.dtype}; "
            "ids must be of one kind (integers or strings) to match items across versions"
        )
    order = np.argsort(gallery_ids, kind="stable")
    pos = np.searchsorted(gallery_ids, query_ids, sorter=order)
    pos = np.minimum(pos, len(order) - 1)
    idx = order[pos]
    found = gallery_ids[idx] == query_ids
    if required and not found.all():
        missing = query_ids[np.flatnonzero(~found)[0]].item()
        raise CompatError(
            f"{where}: query id {missing!r} is absent from the gallery; leave-one-out needs every "
            "query to be a gallery item (same ids in every version)"
        )
    return np.where(found, idx, -1).astype(np.int64)


def _class_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    return {int(c): order[s:e] for c, s, e in zip(classes, starts, bounds, strict=True)}


def _cmc_hits(first_rank: np.ndarray, metrics: tuple[Metric, ...]) -> dict[str, np.ndarray]:
    return {m.name: (first_rank <= m.k).astype(np.float64) for m in metrics if m.kind is MetricKind.CMC}


def _result(per_query: dict[str, np.ndarray], has_pos: np.ndarray, metrics: tuple[Metric, ...], *,
            top1: np.ndarray | None = None, hit1: np.ndarray | None = None) -> RetrievalResult:
    """The cell's means over the queries with a positive; ``None`` (undefined, not 0) when there are none."""
    n_eval = int(has_pos.sum())
    values = {m.name: (float(per_query[m.name][has_pos].mean()) if n_eval else None) for m in metrics}
    return RetrievalResult(
        values=values,
        n_queries=len(has_pos),
        n_without_positive=len(has_pos) - n_eval,
        per_query={m.name: per_query[m.name] for m in metrics},
        counted=has_pos,
        top1=top1,
        hit1=None if hit1 is None else hit1 & has_pos,
    )


def leave_one_out(
    query: np.ndarray,
    query_labels: np.ndarray,
    query_ids: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_ids: np.ndarray,
    metrics: tuple[Metric, ...],
    *,
    similarity: Similarity = Similarity.COSINE,
    backend: str = "auto",
    device: str = "cpu",
    memory_budget: int = 1 << 30,
    threads: int = 2,
    where: str = "leave-one-out",
    progress: bool = False,
    dist: DistributedContext | None = None,
    precision: Precision = Precision.FP32,
) -> RetrievalResult:
    """Leave-one-out retrieval: each query's own item (by id) is removed from the gallery.

    Args:
        query, gallery: (Nq, D), (Ng, D) features (the gallery may be memory-mapped or sharded).
        query_labels, gallery_labels: (Nq,), (Ng,) int64.
        query_ids, gallery_ids: item ids; every query id must be in the gallery.
        metrics: any of cmc@k, map, map@r, map@k.
        progress: a bar over the query chunks on a terminal.
        dist: under torchrun, every rank searches its part of the gallery and the ranks' exact
            results are merged (:mod:`compat.retrieval.sharding`); every rank returns the result.

    Returns:
        Averages over the queries that have at least one positive; the others are counted.
    """
    dist = dist or DistributedContext.single()
    exclude = match_ids(query_ids, gallery_ids, required=True, where=where)
    members = _class_members(gallery_labels)
    counts = {c: len(m) for c, m in members.items()}
    n_pos = np.array([counts.get(int(c), 0) for c in query_labels], dtype=np.int64)
    n_pos -= (gallery_labels[exclude] == query_labels).astype(np.int64)
    has_pos = n_pos > 0
    kmax = max((m.k for m in metrics if m.from_top_k), default=1)
    per_query: dict[str, np.ndarray] = {m.name: np.zeros(len(query)) for m in metrics}
    search = {"similarity": similarity, "device": device, "memory_budget": memory_budget, "progress": progress}
    if any(m.needs_full_ranking for m in metrics):
        idx = full_ranking(query, query_labels, gallery, members, exclude, per_query, kmax, dist=dist, threads=threads, **search)
    else:
        idx = ranked_topk(query, gallery, kmax, exclude=exclude, dist=dist, backend=backend, precision=precision,
                          **search)
    first = first_positive(idx, gallery_labels, query_labels)
    per_query.update(topk_values(idx, gallery_labels, query_labels, n_pos, metrics))
    return _result(per_query, has_pos, metrics, top1=idx[:, 0].copy(), hit1=first == 1)


def first_positive(idx: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """1-based position of the first same-label neighbour in each row of ``idx``; inf if none."""
    hit = (idx >= 0) & (gallery_labels[np.maximum(idx, 0)] == query_labels[:, None])
    first = np.where(hit.any(1), hit.argmax(1) + 1, np.inf)
    return first


def template_identification(
    query: np.ndarray,
    query_labels: np.ndarray,
    query_ids: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_ids: np.ndarray,
    metrics: tuple[Metric, ...],
    *,
    similarity: Similarity = Similarity.COSINE,
    memory_budget: int = 1 << 30,
    where: str = "template",
) -> RetrievalResult:
    """1:N identification against per-class templates (iamcl2r).

    A template is the mean of a class's gallery features (normalised first and re-normalised after,
    for cosine). A query that is itself a gallery item is compared with its own class's template
    computed without it; a query whose class has no other gallery item has no positive.
    Ties between templates go to the lower class label.
    """
    self_idx = match_ids(query_ids, gallery_ids, required=False, where=where)
    classes = np.unique(gallery_labels)
    rows = max(1, min(len(gallery), memory_budget // (16 * gallery.shape[1])))
    sums = np.zeros((len(classes), gallery.shape[1]))
    class_of = np.searchsorted(classes, gallery_labels)
    for s in range(0, len(gallery), rows):
        np.add.at(sums, class_of[s : s + rows], prepare(gallery[s : s + rows], similarity).astype(np.float64))
    counts = np.bincount(class_of, minlength=len(classes)).astype(np.float64)
    templates = _finish_templates(sums / counts[:, None], similarity)
    q_class = np.searchsorted(classes, query_labels)
    known = (q_class < len(classes)) & (classes[np.minimum(q_class, len(classes) - 1)] == query_labels)
    per_query = {m.name: np.zeros(len(query)) for m in metrics}
    top1 = np.full(len(query), -1, dtype=np.int64)
    has_pos = known.copy()
    q_rows = max(1, min(len(query), memory_budget // (8 * (len(classes) + 2 * query.shape[1]))))
    for s in range(0, len(query), q_rows):
        q = prepare(query[s : s + q_rows], similarity).astype(np.float64)
        scores = _template_scores(q, templates, similarity)
        r = np.arange(s, s + len(q))
        own = np.flatnonzero(known[r] & (self_idx[r] >= 0))
        for o in own:  # leave the query's own gallery item out of its class template
            c, g = q_class[r[o]], self_idx[r[o]]
            if counts[c] <= 1:
                has_pos[r[o]] = False
                continue
            g_feat = prepare(gallery[g : g + 1], similarity).astype(np.float64)[0]
            t = _finish_templates(((sums[c] - g_feat) / (counts[c] - 1))[None, :], similarity)
            scores[o, c] = _template_scores(q[o : o + 1], t, similarity)[0, 0]
        qc = np.minimum(q_class[r], len(classes) - 1)
        pos = scores[np.arange(len(q)), qc][:, None]
        better = (scores > pos).sum(1) + ((scores == pos) & (np.arange(len(classes))[None, :] < qc[:, None])).sum(1)
        rank = (better + 1).astype(np.float64)
        for m in metrics:
            per_query[m.name][r] = (rank <= m.k) if m.kind is MetricKind.CMC else 1.0 / rank
        top1[r] = np.argmax(scores, axis=1)  # the first maximum: ties to the lower class label
    hit1 = (top1 == np.minimum(q_class, len(classes) - 1)) & known
    return _result(per_query, has_pos, metrics, top1=top1, hit1=hit1)


def _finish_templates(means: np.ndarray, similarity: Similarity) -> np.ndarray:
    if similarity is Similarity.COSINE:
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-300)
    return means


def _template_scores(q: np.ndarray, templates: np.ndarray, similarity: Similarity) -> np.ndarray:
    if similarity is Similarity.COSINE:
        return q @ templates.T
    return -(np.sum(q * q, 1)[:, None] - 2 * q @ templates.T + np.sum(templates * templates, 1)[None, :])


def sample_pairs(
    labels: np.ndarray, n_pairs: int, *, seed: int, where: str = "pairs"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_pairs`` positive and ``n_pairs`` negative pairs of item positions, drawn with ``seed``.

    A positive pair takes a uniformly drawn item from a class with at least two items and another
    item of the same class; a negative pair takes a uniformly drawn item and one of another class.

    Returns:
        ``(a, b, same)``: (2 n_pairs,) positions and a boolean mask of positive pairs.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    classes, starts, sizes = np.unique(sorted_labels, return_index=True, return_counts=True)
    if len(classes) < 2:
        raise CompatError(f"{where}: pair verification needs at least two classes, found {len(classes)}")
    if sizes.max() < 2:
        raise CompatError(f"{where}: pair verification needs a class with at least two items")
    cls_of = np.searchsorted(classes, sorted_labels)
    eligible = np.flatnonzero(sizes[cls_of] >= 2)
    a_pos = rng.choice(eligible, n_pairs)
    c = cls_of[a_pos]
    offset = rng.integers(1, sizes[c])
    b_pos = starts[c] + (a_pos - starts[c] + offset) % sizes[c]
    a_neg = rng.integers(0, len(labels), n_pairs)
    c = cls_of[a_neg]
    other = rng.integers(0, len(labels) - sizes[c])
    b_neg = np.where(other < starts[c], other, other + sizes[c])
    a = order[np.concatenate([a_pos, a_neg])]
    b = order[np.concatenate([b_pos, b_neg])]
    same = np.concatenate([np.ones(n_pairs, bool), np.zeros(n_pairs, bool)])
    return a, b, same


def kfold_threshold_accuracy(scores: np.ndarray, same: np.ndarray, *, folds: int = 10, seed: int = 0) -> float:
    """Verification accuracy: for each fold, the threshold that maximises accuracy on the other
    folds (a pair is called 'same' when its score is above it) is scored on the fold; the mean."""
    if not 2 <= folds <= len(scores):
        raise CompatError(f"folds: expected 2 <= folds <= {len(scores)} (the number of pairs), got {folds}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(scores))
    parts = np.array_split(perm, folds)
    accs = []
    for f, test in enumerate(parts):
        train = np.concatenate([p for g, p in enumerate(parts) if g != f])
        th = _best_threshold(scores[train], same[train])
        accs.append(np.mean((scores[test] > th) == same[test]))
    return float(np.mean(accs))


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order]
    # Cut c calls the c lowest scores 'different': correct = negatives below + positives above.
    neg_below = np.concatenate([[0], np.cumsum(~y)])
    pos_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = neg_below + pos_above
    distinct = np.concatenate([[True], s[1:] > s[:-1], [True]])  # only cut between different scores
    correct = np.where(distinct, correct, -1)
    c = int(np.argmax(correct))
    if c == 0:
        return float(s[0] - 1.0)
    if c == len(s):
        return float(s[-1] + 1.0)
    return float((s[c - 1] + s[c]) / 2)


def pair_verification(
    query: np.ndarray,
    query_labels: np.ndarray,
    query_ids: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_ids: np.ndarray,
    metrics: tuple[Metric, ...],
    *,
    similarity: Similarity = Similarity.COSINE,
    n_pairs: int = 3000,
    folds: int = 10,
    seed: int = 0,
    where: str = "pairs",
) -> RetrievalResult:
    """Pair verification over the items present in both sets (matched by id).

    Pairs are drawn from the gallery items sorted by id, so the same seed gives the same pairs in
    every cell of a chain whose versions share their ids.
    """
    common = np.intersect1d(query_ids, gallery_ids)
    if len(common) < 2:
        raise CompatError(f"{where}: pair verification needs items present in both query and gallery sets (by id)")
    gi = match_ids(common, gallery_ids, required=True, where=where)
    qi = match_ids(common, query_ids, required=True, where=where)
    a, b, same = sample_pairs(gallery_labels[gi], n_pairs, seed=seed, where=where)
    q64 = prepare(query[qi[a]], similarity).astype(np.float64)
    g64 = prepare(gallery[gi[b]], similarity).astype(np.float64)
    if similarity is Similarity.COSINE:
        scores = np.sum(q64 * g64, 1)
    else:
        scores = -np.sum((q64 - g64) ** 2, 1)
    acc = kfold_threshold_accuracy(scores, same, folds=folds, seed=seed)
    values = {m.name: acc for m in metrics}
    return RetrievalResult(values=values, n_queries=len(same), n_without_positive=0)
