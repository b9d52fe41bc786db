"""Slow, obviously-correct float64 references for the retrieval metrics (test helpers only)."""

from __future__ import annotations

import numpy as np


def score_matrix(query: np.ndarray, gallery: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    q = query.astype(np.float64)
    g = gallery.astype(np.float64)
    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return q @ g.T
    return -np.array([[np.sum((a - b) ** 2) for b in g] for a in q])


def _append_values(rel: list[bool], ks, cmc: dict, aps: list, aprs: list) -> None:
    """CMC@k, AP and AP@R of one ranked list of relevance flags (at least one True), appended."""
    n_pos = sum(rel)
    first = rel.index(True) + 1
    for k in ks:
        cmc[k].append(1.0 if first <= k else 0.0)
    hits, precisions, prec_r = 0, [], 0.0
    for rank, r in enumerate(rel, start=1):
        if r:
            hits += 1
            precisions.append(hits / rank)
            if rank <= n_pos:
                prec_r += hits / rank
    aps.append(np.mean(precisions))
    aprs.append(prec_r / n_pos)


def loo_reference(query, q_labels, q_ids, gallery, g_labels, g_ids, ks=(1, 5), similarity="cosine"):
    """Per-metric averages by ranking every query's whole gallery explicitly, one query at a time."""
    scores = score_matrix(query, gallery, similarity)
    cmc = {k: [] for k in ks}
    aps, aprs = [], []
    without = 0
    for qi in range(len(query)):
        keep = [g for g in range(len(gallery)) if g_ids[g] != q_ids[qi]]
        # Sort by score descending, then by gallery index ascending.
        ranked = sorted(keep, key=lambda g: (-scores[qi, g], g))
        rel = [g_labels[g] == q_labels[qi] for g in ranked]
        if not any(rel):
            without += 1
            continue
        _append_values(rel, ks, cmc, aps, aprs)
    out = {f"cmc@{k}": float(np.mean(v)) for k, v in cmc.items()}
    out["map"] = float(np.mean(aps))
    out["map@r"] = float(np.mean(aprs))
    return out, without


def query_gallery_reference(query, q_labels, q_ids, gallery, g_labels, g_ids, *, ks=(1, 5), similarity="cosine",
                            q_groups=None, g_groups=None, same_group=False, qrels=None):
    """The query-gallery protocol by ranking each query's whole gallery explicitly.

    ``qrels``: ``(query_id, gallery_id, "positive" | "junk")`` rows, or None for label relevance.
    Returns the per-metric averages, the number of queries without a positive, and each query's top-1
    gallery index (-1 when everything is ignored) and whether it is a positive.
    """
    scores = score_matrix(query, gallery, similarity)
    table = {}
    for qid, gid, rel in qrels or ():
        table[(str(qid), str(gid))] = rel
    cmc = {k: [] for k in ks}
    aps, aprs, top1, hit1 = [], [], [], []
    without = 0
    for qi in range(len(query)):
        def relevance(g, qi=qi):
            if qrels is None:
                rel = "positive" if g_labels[g] == q_labels[qi] else None
            else:
                rel = table.get((str(q_ids[qi]), str(g_ids[g])))
            if rel == "positive" and same_group and g_groups[g] == q_groups[qi]:
                return "junk"
            return rel
        kept = [g for g in range(len(gallery)) if relevance(g) != "junk"]
        ranked = sorted(kept, key=lambda g: (-scores[qi, g], g))
        rel = [relevance(g) == "positive" for g in ranked]
        top1.append(ranked[0] if ranked else -1)
        hit1.append(bool(rel[0]) if rel else False)
        if not any(rel):
            without += 1
            hit1[-1] = False
            continue
        _append_values(rel, ks, cmc, aps, aprs)
    out = {f"cmc@{k}": float(np.mean(v)) if v else 0.0 for k, v in cmc.items()}
    out["map"] = float(np.mean(aps)) if aps else 0.0
    out["map@r"] = float(np.mean(aprs)) if aprs else 0.0
    return out, without, np.array(top1), np.array(hit1)
