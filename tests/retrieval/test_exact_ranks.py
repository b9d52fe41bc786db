"""Exact ranks by counting: equal, rank by rank, to sorting the float64 scores, whatever the blocks,
chunks, ranks and backends, on data made of exact duplicates and near-ties below float32 resolution."""

from __future__ import annotations

import numpy as np
import pytest

from compat.retrieval import RetrievalEvaluator, exact_ranks
from compat.retrieval.exact_ranks import Positives, count_above
from compat.retrieval.full_ranking import rank_chunks
from compat.retrieval.knn import Similarity, error_bound, prepare, score_block_torch, score_f64


def _near_ties(n=400, d=16, classes=6, seed=0):
    """Clustered features where many items differ from another by far less than float32 resolution."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = (rng.standard_normal((classes, d))[labels] + 0.8 * rng.standard_normal((n, d))).astype(np.float32)
    twins = rng.choice(n, n // 3, replace=False)
    x[twins] = x[rng.choice(n, len(twins))]
    col = rng.integers(0, d, len(twins))
    x[twins, col] = np.nextafter(x[twins, col], np.float32(np.inf))  # one coordinate one float32 step away
    x[5] = x[n - 20]  # exact duplicates, across any block boundary
    x[6] = x[7]
    return x, labels


def _brute_ranks(q, g, labels, q_labels, exclude, similarity):
    """1-based rank of every positive by sorting float64 scores, ties by lower index."""
    out = []
    for j in range(len(q)):
        s = score_f64(q[j], g, similarity)
        s[exclude[j]] = -np.inf
        order = np.lexsort((np.arange(len(g)), -s))
        rank = np.empty(len(g), dtype=np.int64)
        rank[order] = np.arange(1, len(g) + 1)
        pos = np.flatnonzero((labels == q_labels[j]) & (np.arange(len(g)) != exclude[j]))
        out.append(dict(zip(pos.tolist(), rank[pos].tolist(), strict=True)))
    return out


@pytest.mark.parametrize("similarity", [Similarity.COSINE, Similarity.L2])
@pytest.mark.parametrize("row_scores", [True, False])
@pytest.mark.parametrize("crowded", [np.inf, -1.0], ids=["float32-windows", "float64-pass"])
def test_count_above_equals_sorting_float64_scores(similarity, row_scores, crowded, monkeypatch):
    # float32 windows only, or every group counted again on float64 scores (as crowded galleries are)
    monkeypatch.setattr(exact_ranks, "_CROWDED", crowded)
    monkeypatch.setattr(exact_ranks, "_SLICE_ENTRIES", 50 * 40)  # several slices per block
    g, labels = _near_ties()
    q, q_labels, exclude = g[:50], labels[:50], np.arange(50)
    want = _brute_ranks(q, g, labels, q_labels, exclude, similarity)
    owner, index = [], []
    for j in range(50):
        pos = np.flatnonzero((labels == q_labels[j]) & (np.arange(len(g)) != j))
        owner.append(np.full(len(pos), j)), index.append(pos)
    owner, index = np.concatenate(owner), np.concatenate(index)
    exact = score_f64(q[owner], g[index][:, None, :], similarity)[:, 0] if not row_scores else None
    positives = Positives.build(owner, index, exact, 50)
    counts = np.zeros(len(positives.index), dtype=np.int64)
    import torch

    blocks = [(0, len(g))] if row_scores else [(0, 123), (123, 301), (301, len(g))]
    for a, b in blocks:
        s = score_block_torch(torch.from_numpy(prepare(q, similarity)), torch.from_numpy(prepare(g[a:b], similarity)),
                              similarity).numpy()
        local = exclude - a
        inside = (local >= 0) & (local < b - a)
        s[np.flatnonzero(inside), local[inside]] = -np.inf
        norm = float(np.linalg.norm(g[a:b].astype(np.float64), axis=1).max())
        eps = error_bound(q, norm, g.shape[1], similarity)
        count_above(s, positives, range(50), eps, a, q, g[a:b], similarity, counts, exclude=exclude, threads=2)
    got = [{} for _ in range(50)]
    for j in range(50):
        for e in range(positives.ptr[j], positives.ptr[j + 1]):
            got[j][int(positives.index[e])] = 1 + int(counts[e])
    assert got == want


def test_the_data_has_float32_ties_that_float64_orders():
    g, _ = _near_ties()
    s32 = prepare(g[:1], Similarity.COSINE) @ prepare(g, Similarity.COSINE).T
    s64 = score_f64(g[0], g, Similarity.COSINE)
    flips = [(a, b) for a in range(len(g)) for b in range(a) if (s32[0, a] > s32[0, b]) != (s64[a] > s64[b])]
    assert flips  # float32 scores alone would order some pairs differently from the exact scores


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_full_ranking_metrics_identical_across_chunks_blocks_and_backends(similarity):
    g, labels = _near_ties(n=900, d=12, classes=7, seed=3)
    ids = np.arange(len(g)) * 3 + 1
    results = [
        RetrievalEvaluator(("cmc@1", "cmc@3", "map", "map@r"), device="cpu", similarity=similarity, backend=b,
                           memory_budget=m).evaluate_arrays(g, labels, ids, g, labels, ids)
        for b in ("torch", "faiss") for m in (1 << 20, 3 << 20, 1 << 30)
    ]
    for r in results[1:]:
        assert r.values == results[0].values
        for name, values in r.per_query.items():
            np.testing.assert_array_equal(values, results[0].per_query[name])


def test_rank_chunks_reads_positive_scores_from_rows_or_takes_them_exact():
    g, labels = _near_ties(n=300, d=8, classes=4, seed=5)
    q, ex = g[:40], np.arange(40)

    def positives_of(rows, with_scores):
        owner = np.concatenate([np.full(int(np.sum(labels == labels[r])) - 1, j) for j, r in enumerate(rows)])
        index = np.concatenate([np.setdiff1d(np.flatnonzero(labels == labels[r]), [r]) for r in rows])
        score = score_f64(q[rows.start + owner], g[index][:, None, :], Similarity.COSINE)[:, 0] if with_scores else None
        return Positives.build(owner, index, score, len(rows))

    runs = [list(rank_chunks(q, g, 3, positives_of, similarity=Similarity.COSINE, device="cpu", exclude=ex,
                             memory_budget=budget, row_scores=rows)) for budget, rows in ((1 << 30, True),
                                                                                        (1 << 20, False))]
    a = np.concatenate([c.above for c in runs[0]])
    b = np.concatenate([c.above for c in runs[1]])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate([c.top_i for c in runs[0]]), np.concatenate([c.top_i for c in runs[1]]))


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_float64_pass_of_crowded_groups_gives_the_same_ranks(similarity, monkeypatch):
    """Groups counted again on float64 scores (as crowded galleries are) rank exactly as the float32
    windows do, whatever the blocks, slices and chunks: every per-query value is equal."""
    g, labels = _near_ties(n=700, d=12, classes=5, seed=4)
    ids = np.arange(len(g)) * 3 + 1

    def run(budget):
        ev = RetrievalEvaluator(("cmc@1", "map", "map@r"), device="cpu", similarity=similarity, memory_budget=budget)
        return ev.evaluate_arrays(g, labels, ids, g, labels, ids)

    monkeypatch.setattr(exact_ranks, "_CROWDED", np.inf)  # float32 windows only
    want = run(1 << 30)
    monkeypatch.setattr(exact_ranks, "_CROWDED", -1.0)
    monkeypatch.setattr(exact_ranks, "_SLICE_ENTRIES", 700 * 97)  # 8 slices of the gallery
    for budget in (1 << 20, 1 << 30):
        got = run(budget)
        assert got.values == want.values
        for name, values in got.per_query.items():
            np.testing.assert_array_equal(values, want.per_query[name])
