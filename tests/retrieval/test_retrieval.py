"""Exact kNN, metrics and protocols: hand-computed cases, a slow float64 reference, and identical
results across backends and chunk sizes."""

from __future__ import annotations

import numpy as np
import pytest

from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval import RetrievalEvaluator, knn, parse_metric
from compat.retrieval.metrics import average_precision, average_precision_at_r
from compat.retrieval.protocols import _best_threshold, kfold_threshold_accuracy, match_ids, sample_pairs
from tests.reference import loo_reference, score_matrix

BUDGETS = (1 << 20, 1 << 30)  # 1 MiB forces many small chunks and gallery blocks on the data below


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


def _clustered(n: int, d: int, classes: int, seed: int, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.int64)
    centres = rng.standard_normal((classes, d))
    feats = (centres[labels] + noise * rng.standard_normal((n, d))).astype(np.float32)
    return feats, labels


def _evaluate(query, q_labels, q_ids, gallery, g_labels, g_ids, **kwargs):
    metrics = kwargs.pop("metrics", ("cmc@1", "cmc@2", "map", "map@r"))
    ev = RetrievalEvaluator(metrics, device="cpu", **kwargs)
    return ev.evaluate_arrays(query, q_labels, q_ids, gallery, g_labels, g_ids)


# ---------------------------------------------------------------- hand-computed cases


def test_loo_metrics_on_a_hand_computed_ranking():
    # Query = item 0 at 0 deg. The others rank 10 (B), 20 (A), 90 (A), 180 (B): positives at ranks 2, 3.
    gallery = _angles([0, 10, 20, 90, 180])
    labels = np.array([0, 1, 0, 0, 1])
    ids = np.arange(5)
    r = _evaluate(gallery[:1], labels[:1], ids[:1], gallery, labels, ids)
    assert r["cmc@1"] == 0.0
    assert r["cmc@2"] == 1.0
    assert r["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["map@r"] == pytest.approx((1 / 2) / 2)  # R = 2: only the positive at rank 2 counts
    assert (r.n_queries, r.n_without_positive) == (1, 0)


def test_cmc_excludes_self_by_id_not_by_position():
    # The query's own item sits at gallery position 3; ids, not positions, decide what is left out.
    gallery = _angles([50, 10, 20, 0])
    g_labels = np.array([1, 0, 1, 0])
    g_ids = np.array([7, 8, 9, 42])
    query = _angles([0])
    r = _evaluate(query, np.array([0]), np.array([42]), gallery, g_labels, g_ids)
    # Without itself: 10 (label 0, positive) is first.
    assert r["cmc@1"] == 1.0
    assert r["map"] == 1.0


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("positive_first", [True, False])
def test_exact_ties_break_towards_the_lower_gallery_index(backend, positive_first):
    # Items 1 and 2 are identical; item 3 is a further positive. Query = item 0.
    gallery = _angles([0, 30, 30, 60])
    labels = np.array([0, 0, 1, 0]) if positive_first else np.array([0, 1, 0, 0])
    ids = np.arange(4)
    r = _evaluate(gallery[:1], labels[:1], ids[:1], gallery, labels, ids, backend=backend)
    if positive_first:  # positives at ranks 1 and 3
        assert (r["cmc@1"], r["map"]) == (1.0, pytest.approx((1 + 2 / 3) / 2))
    else:  # positives at ranks 2 and 3
        assert (r["cmc@1"], r["map"]) == (0.0, pytest.approx((1 / 2 + 2 / 3) / 2))


def test_queries_without_positive_are_excluded_and_counted():
    gallery = _angles([0, 10, 20, 90])
    labels = np.array([0, 0, 1, 2])  # classes 1 and 2 are singletons: no positive once left out
    ids = np.arange(4)
    r = _evaluate(gallery, labels, ids, gallery, labels, ids)
    assert (r.n_queries, r.n_without_positive) == (4, 2)
    assert r["cmc@1"] == 1.0 and r["map"] == 1.0  # items 0 and 1 find each other first


def test_average_precision_from_ranks():
    assert average_precision(np.array([1, 2, 3])) == 1.0
    assert average_precision(np.array([4, 2])) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision_at_r(np.array([1, 3])) == pytest.approx(1 / 2)
    assert average_precision_at_r(np.array([2, 1, 3])) == 1.0


def test_metric_names_parse_and_reject():
    assert parse_metric("cmc@5").k == 5
    assert parse_metric("MAP").name == "map"
    assert parse_metric("map@r").name == "map@r"
    assert parse_metric("map@10").name == "map@10" and parse_metric("map@10").k == 10
    for bad in ("cmc@0", "cmc", "foo", "map@0", "map@x"):
        with pytest.raises(CompatError, match="metric"):
            parse_metric(bad)


def test_metric_must_fit_the_protocol():
    with pytest.raises(CompatError, match="not defined for protocol 'pairs'"):
        RetrievalEvaluator(("map",), protocol="pairs", device="cpu")
    with pytest.raises(CompatError, match="protocol"):
        RetrievalEvaluator(protocol="nope", device="cpu")
    with pytest.raises(CompatError, match="given twice"):
        RetrievalEvaluator(("map", "map"), device="cpu")


# ---------------------------------------------------------------- slow float64 reference


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_loo_matches_the_float64_reference(similarity, budget, backend):
    g, labels = _clustered(300, 12, 9, seed=3, noise=1.3)
    labels[5] = 99  # a query without positive
    g[10] = g[11]  # exact duplicates: ties
    ids = np.arange(300) * 7 + 1
    q = (g + 0.4 * np.random.default_rng(4).standard_normal(g.shape)).astype(np.float32)  # another "version"
    want, without = loo_reference(q, labels, ids, g, labels, ids, ks=(1, 5), similarity=similarity)
    r = _evaluate(q, labels, ids, g, labels, ids, metrics=("cmc@1", "cmc@5", "map", "map@r"), similarity=similarity,
                  backend=backend, memory_budget=budget)
    assert r.n_without_positive == without == 1
    for name, value in want.items():
        assert r[name] == pytest.approx(value, abs=1e-6), name


def test_a_wrong_tie_break_would_fail_the_reference():
    # The reference itself must be sensitive to ties, or the test above proves nothing about them.
    g = _angles([0, 30, 30])
    labels, ids = np.array([0, 1, 0]), np.arange(3)
    want, _ = loo_reference(g[:1], labels[:1], ids[:1], g, labels, ids, ks=(1,))
    assert want["cmc@1"] == 0.0 and want["map"] == pytest.approx(0.5)


# ---------------------------------------------------------------- identical across backends and chunks


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_knn_identical_across_backends_and_chunk_sizes(similarity):
    g, _ = _clustered(2500, 24, 30, seed=5)
    g[100:110] = g[200]  # a block of exact duplicates
    q = g[:400]
    exclude = np.arange(400)
    results = [
        knn(q, g, 7, similarity=similarity, backend=b, exclude=exclude, memory_budget=m, device="cpu")
        for b in ("torch", "faiss")
        for m in BUDGETS
    ]
    d0, i0 = results[0]
    for d, i in results[1:]:
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_array_equal(d, d0)
    # ... and equal to a float64 brute force with the same tie rule.
    s = score_matrix(q, g, similarity)
    s[np.arange(400), exclude] = -np.inf
    ref = np.array([np.lexsort((np.arange(len(g)), -row))[:7] for row in s])
    np.testing.assert_array_equal(i0, ref)
    assert (i0 != exclude[:, None]).all()


def test_knn_returns_distances_for_l2_and_similarities_for_cosine():
    g = np.array([[0, 0], [1, 0], [0, 3]], dtype=np.float32)
    d, i = knn(g[:1], g, 2, similarity="l2", exclude=np.array([0]), device="cpu")
    np.testing.assert_array_equal(i, [[1, 2]])
    np.testing.assert_allclose(d, [[1.0, 9.0]])
    d, i = knn(_angles([0]), _angles([90, 60]), 2, device="cpu")
    np.testing.assert_array_equal(i, [[1, 0]])
    np.testing.assert_allclose(d, [[0.5, 0.0]], atol=1e-7)


def test_knn_pads_when_the_gallery_is_smaller_than_k():
    g = _angles([0, 10, 20])
    d, i = knn(g, g, 5, exclude=np.arange(3), device="cpu", backend="faiss")
    assert (i[:, 2:] == -1).all() and np.isnan(d[:, 2:]).all()
    np.testing.assert_array_equal(i[:, :2], [[1, 2], [0, 2], [1, 0]])


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_metrics_identical_across_backends_and_chunk_sizes(similarity):
    g, labels = _clustered(1500, 16, 40, seed=8)
    ids = np.arange(1500)
    values = {
        (b, m): _evaluate(g, labels, ids, g, labels, ids, metrics=("cmc@1", "cmc@5", "map", "map@r"),
                          similarity=similarity, backend=b, memory_budget=m).values
        for b in ("torch", "faiss")
        for m in BUDGETS
    }
    first = next(iter(values.values()))
    assert all(v == first for v in values.values())
    # CMC alone takes the top-k path; it must agree with CMC computed next to mAP.
    cmc_only = _evaluate(g, labels, ids, g, labels, ids, metrics=("cmc@1", "cmc@5"), similarity=similarity).values
    assert cmc_only == {k: first[k] for k in ("cmc@1", "cmc@5")}


def test_evaluator_accepts_memory_mapped_directory_features(tmp_path):
    from compat.features import load_features, save_features

    g, labels = _clustered(500, 8, 5, seed=2)
    save_features(FeatureSet.from_arrays(g, labels), tmp_path / "g")
    fs = load_features(tmp_path / "g")
    assert isinstance(fs.features, np.memmap)
    ev = RetrievalEvaluator(device="cpu", memory_budget=1 << 20)
    in_memory = ev.evaluate(FeatureSet.from_arrays(g, labels), FeatureSet.from_arrays(g, labels))
    assert ev.evaluate(fs, fs).values == in_memory.values


def test_loo_refuses_a_query_absent_from_the_gallery():
    g = _angles([0, 10, 20])
    with pytest.raises(CompatError, match="query id 5 is absent"):
        _evaluate(g, np.zeros(3, np.int64), np.array([0, 1, 5]), g, np.zeros(3, np.int64), np.arange(3))


def test_cosine_refuses_an_all_zero_feature():
    g = _angles([0, 10, 20])
    g[1] = 0
    with pytest.raises(CompatError, match="row 1 is all zeros"):
        _evaluate(g, np.zeros(3, np.int64), np.arange(3), g, np.zeros(3, np.int64), np.arange(3))


def test_match_ids_works_for_string_ids_and_refuses_mixed_kinds():
    g_ids = np.array(["b", "a", "c"])
    np.testing.assert_array_equal(match_ids(np.array(["c", "a", "z"]), g_ids, required=False, where="x"), [2, 1, -1])
    with pytest.raises(CompatError, match="one kind"):
        match_ids(np.array([1]), g_ids, required=False, where="x")


# ---------------------------------------------------------------- template identification


def test_template_identification_hand_computed():
    # Class 0 templates: mean of 0 and 20 deg -> 10 deg; class 1: 90 deg. Queries are separate items.
    gallery = _angles([0, 20, 90])
    g_labels, g_ids = np.array([0, 0, 1]), np.array([10, 11, 12])
    query = _angles([5, 60, 80])
    q_labels, q_ids = np.array([0, 0, 1]), np.array([100, 101, 102])
    r = _evaluate(query, q_labels, q_ids, gallery, g_labels, g_ids, metrics=("cmc@1", "map"), protocol="template")
    # 5 -> class 0 (right); 60 -> class 1 (90 is nearer than 10; wrong, rank 2); 80 -> class 1 (right).
    assert r["cmc@1"] == pytest.approx(2 / 3)
    assert r["map"] == pytest.approx((1 + 1 / 2 + 1) / 3)


def test_template_leaves_the_query_out_of_its_own_class_template():
    # Item 0 (label 0) at 0 deg; the other class-0 item at 100 deg; class 1 at 45 deg.
    # With itself in the template, class 0's mean is at 50 deg and item 0 would be closer to class 1
    # anyway; the left-out template (100 deg) makes the wrong answer unambiguous. Item 2 is a singleton.
    gallery = _angles([0, 100, 45])
    labels, ids = np.array([0, 0, 1]), np.arange(3)
    r = _evaluate(gallery, labels, ids, gallery, labels, ids, metrics=("cmc@1",), protocol="template")
    assert r.n_without_positive == 1
    # Item 0: class 1 (45) beats its left-out template (100): wrong. Item 1 (100): its left-out
    # template is item 0 (0 deg, cos -0.17) vs class 1 (45 deg, cos 0.57): wrong.
    assert r["cmc@1"] == 0.0
    # Inclusive templates would have given item 1 its own class (mean at 50 deg vs 45 deg: cos 0.64 vs 0.57).


# ---------------------------------------------------------------- pair verification


def test_sample_pairs_is_seeded_and_well_formed():
    labels = np.repeat(np.arange(6), 5)
    a, b, same = sample_pairs(labels, 500, seed=3)
    a2, b2, _ = sample_pairs(labels, 500, seed=3)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert (a != b).all()
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert same.sum() == 500 and (~same).sum() == 500
    a3, _, _ = sample_pairs(labels, 500, seed=4)
    assert not np.array_equal(a, a3)


def test_sample_pairs_refuses_impossible_requests():
    with pytest.raises(CompatError, match="two classes"):
        sample_pairs(np.zeros(5, np.int64), 10, seed=0)
    with pytest.raises(CompatError, match="at least two items"):
        sample_pairs(np.arange(5), 10, seed=0)


def test_best_threshold_maximises_training_accuracy():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.35])
    same = np.array([False, False, False, True, True, True])
    th = _best_threshold(scores, same)
    assert 0.3 < th < 0.35
    assert kfold_threshold_accuracy(scores, same, folds=2, seed=0) <= 1.0


def test_pair_accuracy_of_separable_and_random_scores():
    rng = np.random.default_rng(0)
    same = np.repeat([True, False], 500)
    separable = np.where(same, 1.0, 0.0) + 0.01 * rng.random(1000)
    assert kfold_threshold_accuracy(separable, same, folds=10) == 1.0
    noise = rng.random(1000)
    assert 0.4 < kfold_threshold_accuracy(noise, same, folds=10) < 0.6


def test_pair_protocol_on_features_is_deterministic():
    g, labels = _clustered(400, 16, 8, seed=1)
    ids = np.arange(400)
    a = _evaluate(g, labels, ids, g, labels, ids, metrics=("acc",), protocol="pairs", pairs=300, seed=1)
    b = _evaluate(g, labels, ids, g, labels, ids, metrics=("acc",), protocol="pairs", pairs=300, seed=1)
    assert a.values == b.values and a.n_queries == 600
    assert 0.7 < a["acc"] <= 1.0
