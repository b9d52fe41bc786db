"""The query-gallery protocol: a hand-computed case with junk, same-group items and a query without a
positive; an independent slow reference on random data (groups, relevance files, cosine and L2, every
backend, small and large memory budgets); the top-1 that flips compare."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from compat.errors import CompatError
from compat.retrieval import RetrievalEvaluator
from compat.retrieval.knn import Similarity
from compat.retrieval.metrics import parse_metrics
from compat.retrieval.qrels import Qrels
from compat.retrieval.query_gallery import Exclude, SparseRows, query_gallery
from tests.reference import loo_reference, query_gallery_reference, score_matrix

METRICS = ("cmc@1", "cmc@2", "cmc@5", "map", "map@r")


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


def _qg(query, q_labels, q_ids, gallery, g_labels, g_ids, *, metrics=METRICS, q_groups=None, g_groups=None,
        **kwargs):
    ev = RetrievalEvaluator(metrics, protocol="query-gallery", device="cpu", **kwargs)
    return ev.evaluate_arrays(query, q_labels, q_ids, gallery, g_labels, g_ids, query_groups=q_groups,
                              gallery_groups=g_groups)


# ---------------------------------------------------------------- hand-computed


def test_tiny_case_with_same_group_items_and_a_query_without_positive():
    # Gallery at 10, 20, ..., 60 degrees; labels A B A A B A; cameras 0 1 1 0 0 1.
    gallery = _angles([10, 20, 30, 40, 50, 60])
    g_labels = np.array([0, 1, 0, 0, 1, 0])
    g_cams = np.array([0, 1, 1, 0, 0, 1])
    g_ids = np.array([100, 101, 102, 103, 104, 105])
    # Query 0 (label A, camera 0) at 0 deg: ranking 10 20 30 40 50 60.
    # Query 1 (label C: no gallery item) at 58 deg.
    # Query 2 (label B, camera 1) at 22 deg: ranking 20 30 10 40 50 60.
    query = _angles([0, 58, 22])
    q_labels = np.array([0, 2, 1])
    q_cams = np.array([0, 0, 1])
    q_ids = np.array([7, 8, 9])  # not gallery items: nothing is removed by id
    plain = _qg(query, q_labels, q_ids, gallery, g_labels, g_ids)
    # query 0: positives at ranks 1, 3, 4, 6 -> AP = (1 + 2/3 + 3/4 + 4/6) / 4; AP@R (R = 4) = (1 + 2/3 + 3/4) / 4
    # query 2: positives (B) at ranks 1 (20 deg) and 5 (50 deg) -> AP = (1 + 2/5) / 2, AP@R = 1/2
    assert (plain.n_queries, plain.n_without_positive) == (3, 1)
    assert plain["cmc@1"] == 1.0
    assert plain["map"] == pytest.approx(((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4 + (1 + 2 / 5) / 2) / 2)
    assert plain["map@r"] == pytest.approx(((1 + 2 / 3 + 3 / 4) / 4 + 1 / 2) / 2)
    assert plain.top1.tolist() == [0, 5, 1]
    assert plain.hit1.tolist() == [True, False, True]  # query 1 has no positive: never a hit

    # same-group: query 0 (camera 0) ignores A items of camera 0 (10 and 40 deg); query 2 (camera 1)
    # ignores B items of camera 1 (20 deg).
    reid = _qg(query, q_labels, q_ids, gallery, g_labels, g_ids, q_groups=q_cams, g_groups=g_cams,
               exclude="same-group")
    # query 0 ranks 20(B) 30(A) 50(B) 60(A): positives at 2 and 4 -> AP (1/2 + 2/4) / 2 = 0.5, AP@R (1/2) / 2
    # query 2 ranks 30(A) 10(A) 40(A) 50(B) 60(A): its one positive at rank 4 -> AP 1/4, cmc@2 0, cmc@5 1
    assert (reid.n_queries, reid.n_without_positive) == (3, 1)
    assert (reid["cmc@1"], reid["cmc@2"], reid["cmc@5"]) == (0.0, 0.5, 1.0)
    assert reid["map"] == pytest.approx((0.5 + 0.25) / 2)
    assert reid["map@r"] == pytest.approx((0.25 + 0.0) / 2)
    assert reid.top1.tolist() == [1, 5, 2]


def test_tiny_case_with_a_relevance_file_and_junk():
    gallery = _angles([10, 20, 30, 40, 50, 60])
    labels = np.zeros(6, dtype=np.int64)  # labels are ignored once a relevance file is given
    g_ids = np.array(["a", "b", "c", "d", "e", "f"])
    query = _angles([0, 33])
    q_ids = np.array(["q1", "q2"])
    qrels = Qrels.from_rows([("q1", "c", "positive"), ("q1", "a", "junk"), ("q1", "e", "positive"),
                             ("q1", "b", "junk"), ("q2", "f", "junk")])
    r = _qg(query, np.zeros(2, np.int64), q_ids, gallery, labels, g_ids, qrels=qrels)
    # q1: a and b removed; ranking c(+) d e(+) f: positives at ranks 1 and 3. q2 has only junk: skipped.
    assert (r.n_queries, r.n_without_positive) == (2, 1)
    assert r["cmc@1"] == 1.0
    assert r["map"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["map@r"] == pytest.approx(1 / 2)
    assert r.top1.tolist() == [2, 2]  # q2 (33 deg): f is junk, c (30 deg) is first
    assert r.hit1.tolist() == [True, False]


def test_junk_that_is_also_a_same_group_positive_and_many_junk_items():
    # One query, 200 gallery items on a half circle; 100 of the closest are junk: the top-k search must
    # look past them (more than the one-search limit, so the queries are searched in buckets).
    gallery = _angles(list(np.linspace(1, 179, 200)))
    g_ids = np.arange(200)
    query = _angles([0, 179.5])
    rows = [(0, g, "junk") for g in range(100)] + [(0, 150, "positive"), (0, 120, "positive"), (1, 100, "positive")]
    qrels = Qrels.from_rows(rows)
    r = _qg(query, np.zeros(2, np.int64), np.arange(2), gallery, np.zeros(200, np.int64), g_ids, qrels=qrels)
    assert r.top1.tolist() == [100, 199]
    # query 0: the 100 junk items gone, item 100 is first: positives 120 and 150 at ranks 21 and 51.
    # query 1 (past the last item) ranks 199, 198, ...: its positive, item 100, at rank 100.
    assert r["cmc@5"] == 0.0
    assert r["map"] == pytest.approx(((1 / 21 + 2 / 51) / 2 + 1 / 100) / 2, rel=1e-12)


def test_options_need_their_protocol_and_groups():
    with pytest.raises(CompatError, match="--exclude: needs the query-gallery protocol"):
        RetrievalEvaluator(protocol="loo", exclude="same-group")
    with pytest.raises(CompatError, match="--qrels: needs the query-gallery protocol"):
        RetrievalEvaluator(protocol="template", qrels=Qrels.from_rows([("a", "b", "positive")]))
    x = _angles([0, 10])
    with pytest.raises(CompatError, match="same-group needs a 'groups' array"):
        _qg(x, np.zeros(2, np.int64), np.arange(2), x, np.zeros(2, np.int64), np.arange(2), exclude="same-group")


def test_sparse_rows_membership():
    rows = SparseRows.from_pairs(np.array([2, 0, 2, 2]), np.array([5, 1, 0, 3]), 4)
    assert rows.counts.tolist() == [1, 0, 3, 0]
    assert rows.row(2).tolist() == [0, 3, 5]
    got = rows.contains(np.array([2, 1, 0]), np.array([[5, 4, -1], [1, 1, 1], [1, 0, -1]]), 10)
    assert got.tolist() == [[True, False, False], [False, False, False], [True, False, False]]


# ---------------------------------------------------------------- slow reference


def _random_cell(seed: int):
    rng = np.random.default_rng(seed)
    ng, nq, d = 120, 36, 6
    g = rng.standard_normal((ng, d)).astype(np.float32)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    g[7] = g[3]  # an exact tie in the gallery
    g_labels, q_labels = rng.integers(0, 5, ng), rng.integers(0, 6, nq)  # label 5: no gallery item
    g_ids, q_ids = np.arange(1000, 1000 + ng), np.arange(nq)
    g_groups, q_groups = rng.integers(0, 3, ng), rng.integers(0, 3, nq)
    rows = []
    for a in range(nq):
        for b in rng.choice(ng, int(rng.integers(0, 14)), replace=False):
            rows.append((int(q_ids[a]), int(g_ids[b]), "positive" if rng.random() < 0.4 else "junk"))
    return (q, q_labels, q_ids, g, g_labels, g_ids), q_groups, g_groups, rows


@pytest.mark.parametrize("mode", ["labels", "same-group", "qrels", "qrels+same-group"])
@pytest.mark.parametrize("similarity", ["cosine", "l2"])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_query_gallery_matches_slow_reference(mode, similarity, backend):
    cell, q_groups, g_groups, rows = _random_cell(3)
    same_group, use_qrels = "same-group" in mode, "qrels" in mode
    ref, without, top1, hit1 = query_gallery_reference(
        *cell, ks=(1, 2, 5), similarity=similarity, q_groups=q_groups, g_groups=g_groups, same_group=same_group,
        qrels=rows if use_qrels else None)
    assert 0 < without < len(cell[0])  # the case has queries with and without positives
    options = {"similarity": similarity, "backend": backend, "exclude": "same-group" if same_group else "none",
               "qrels": Qrels.from_rows(rows) if use_qrels else None, "q_groups": q_groups, "g_groups": g_groups}
    results = [_qg(*cell, metrics=metrics, memory_budget=budget, **options)
               for budget in (1 << 20, 1 << 30) for metrics in (METRICS[:3], METRICS)]  # top-k only, full ranking
    if backend == "torch":  # the full ranking is the same for both backends: chunked once
        # a budget of 4 KiB ranks one or two queries per chunk (below what the evaluator accepts: the function)
        q_groups, g_groups = options.pop("q_groups"), options.pop("g_groups")
        options |= {"similarity": Similarity(similarity), "exclude": Exclude(options["exclude"])}
        results.append(query_gallery(*cell, parse_metrics(METRICS), query_groups=q_groups, gallery_groups=g_groups,
                                     memory_budget=4096, **options))
    for r in results:
        assert r.n_without_positive == without
        for m in r.values:
            assert r[m] == pytest.approx(ref[m], abs=1e-12), m
        assert r.top1.tolist() == top1.tolist()
        assert r.hit1.tolist() == hit1.tolist()


def test_loo_top1_is_the_cmc_first_result_without_the_query_itself():
    cell, *_ = _random_cell(5)
    _, _, _, g, g_labels, g_ids = cell
    r = RetrievalEvaluator(("cmc@1", "map"), device="cpu").evaluate_arrays(g, g_labels, g_ids, g, g_labels, g_ids)
    scores = score_matrix(g, g)
    np.fill_diagonal(scores, -np.inf)
    expected = [min(range(len(g)), key=lambda j, i=i: (-scores[i, j], j)) for i in range(len(g))]
    assert r.top1.tolist() == expected
    assert r.hit1.tolist() == ((g_labels[expected] == g_labels) & r.counted).tolist()
    assert r["cmc@1"] == pytest.approx(loo_reference(g, g_labels, g_ids, g, g_labels, g_ids)[0]["cmc@1"])


def test_template_top1_is_the_class_of_the_best_template():
    cell, *_ = _random_cell(6)
    q, q_labels, q_ids, g, g_labels, g_ids = cell
    r = RetrievalEvaluator(("cmc@1",), protocol="template", device="cpu").evaluate_arrays(
        q, q_labels, q_ids, g, g_labels, g_ids)
    assert np.array_equal(r.hit1, r.per_query["cmc@1"].astype(bool) & r.counted)
    assert np.array_equal(np.unique(g_labels)[r.top1][r.hit1], q_labels[r.hit1])


@pytest.mark.parametrize("mode", ["same-group", "qrels"])
def test_top_k_searched_in_buckets_by_number_of_ignored_items(monkeypatch, mode):
    qg_module = importlib.import_module("compat.retrieval.query_gallery")  # the package exports a function so named
    monkeypatch.setattr(qg_module, "_MIN_BUCKET", 1)  # every bucket searched on its own, however small
    cell, q_groups, g_groups, rows = _random_cell(8)
    options = {"exclude": "same-group"} if mode == "same-group" else {"qrels": Qrels.from_rows(rows)}
    ignored = qg_module.judge(cell[1], cell[4], query_ids=cell[2], gallery_ids=cell[5], query_groups=q_groups,
                              gallery_groups=g_groups, exclude=Exclude(options.get("exclude", "none")),
                              qrels=options.get("qrels")).ignored.counts
    assert len(list(qg_module._buckets(ignored))) >= 3
    ref, without, top1, _ = query_gallery_reference(*cell, ks=(1, 2, 5), q_groups=q_groups, g_groups=g_groups,
                                                    same_group=mode == "same-group",
                                                    qrels=rows if mode == "qrels" else None)
    r = _qg(*cell, metrics=METRICS[:3], q_groups=q_groups, g_groups=g_groups, **options)
    assert [r[m] for m in METRICS[:3]] == pytest.approx([ref[m] for m in METRICS[:3]], abs=1e-12)
    assert r.top1.tolist() == top1.tolist() and r.n_without_positive == without
