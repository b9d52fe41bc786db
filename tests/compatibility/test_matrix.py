"""The compatibility matrix and its summaries, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from compat.compatibility import (
    Cell,
    DimPolicy,
    Version,
    apply_dim_policy,
    ecc_matrix,
    evaluate_chain,
    summarize,
    update_gain,
)
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval import RetrievalEvaluator

N = None


def test_summary_of_a_three_version_chain_by_hand():
    m = [[0.50, N, N], [0.60, 0.70, N], [0.40, 0.75, 0.80]]
    s = summarize(m)
    # Pairs: (1,0) 0.60 > 0.50 yes; (2,0) 0.40 > 0.50 no; (2,1) 0.75 > 0.70 yes.
    assert s.ecc == [[N, N, N], [True, N, N], [False, True, N]]
    assert s.ac == pytest.approx(2 / 3)
    assert s.am == pytest.approx((0.5 + 0.6 + 0.7 + 0.4 + 0.75 + 0.8) / 6)
    assert s.bc == pytest.approx(((0.40 - 0.50) + (0.75 - 0.70)) / 2)
    assert s.fc == pytest.approx(((0.60 - 0.70) + (0.75 - 0.80)) / 2)
    assert s.update_gain == pytest.approx((0.75 - 0.70) / (0.80 - 0.70))


def test_ties_fail_the_criterion_unless_asked_otherwise():
    m = [[0.5, N], [0.5, 0.9]]
    assert summarize(m).ac == 0.0
    assert summarize(m, strict=False).ac == 1.0
    assert ecc_matrix(m) == [[N, N], [False, N]]


def test_zero_cells_are_kept_in_the_mean():
    m = [[0.0, N], [0.0, 0.9]]
    assert summarize(m).am == pytest.approx(0.3)


def test_update_gain_uses_the_independent_model_and_is_null_when_undefined():
    m = [[0.5, N], [0.6, 0.7]]
    assert summarize(m, reference_self=0.9).update_gain == pytest.approx(0.1 / 0.4)
    assert summarize([[0.5, N], [0.6, 0.5]]).update_gain is None
    assert update_gain(0.6, 0.5, 0.5) is None


def test_a_single_version_has_no_pairs():
    s = summarize([[0.7]])
    assert (s.ac, s.bc, s.fc, s.update_gain) == (None, None, None, None)
    assert s.am == 0.7 and s.ecc == [[None]]


def test_dimension_policy():
    q = np.ones((2, 3), np.float32)
    g = np.full((4, 5), 2, np.float32)
    with pytest.raises(CompatError, match="feature sizes differ"):
        apply_dim_policy(q, g, DimPolicy.ERROR)
    tq, tg = apply_dim_policy(q, g, DimPolicy.TRUNCATE)
    assert tq.shape == (2, 3) and tg.shape == (4, 3) and (tg == 2).all()
    pq, pg = apply_dim_policy(q, g, DimPolicy.PAD)
    assert pq.shape == (2, 5) and (pq[:, 3:] == 0).all() and (pq[:, :3] == 1).all()
    assert pg is g


def _versions(seed: int = 0, n: int = 300, d: int = 16, classes: int = 10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d))
    offsets = rng.standard_normal((n, d))
    old = centres[labels] + 1.2 * offsets + 0.8 * rng.standard_normal((n, d))
    new = centres[labels] + 1.2 * offsets + 0.2 * rng.standard_normal((n, d))
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ids = np.arange(n) + 1000
    return (
        FeatureSet.from_arrays(old, labels, ids),
        FeatureSet.from_arrays(new, labels, ids),
        FeatureSet.from_arrays(new @ rotation, labels, ids),
        rotation,
    )


def test_chain_cells_equal_single_evaluations():
    old, new, rotated, _ = _versions()
    ev = RetrievalEvaluator(("cmc@1", "map"), device="cpu")
    report = evaluate_chain([Version("v1", old), Version("v2", new), Version("v3", rotated)], ev)
    fs = {"v1": old, "v2": new, "v3": rotated}
    for i, qn in enumerate(report.versions):
        for j, gn in enumerate(report.versions):
            for m in ("cmc@1", "map"):
                if j > i:
                    assert report.matrices[m][i][j] is None
                else:
                    assert report.matrices[m][i][j] == ev.evaluate(fs[qn], fs[gn])[m]
    assert report.summary["cmc@1"].ecc[1][0] is True  # the compatible new model
    assert report.summary["cmc@1"].ecc[2][0] is False  # the rotated, independent one
    doc = report.to_json()
    assert list(doc) == ["versions", "protocol", "metrics", "summary", "queries", "ranks", "query_sample", "flips",
                         "classes", "warnings"]
    assert (doc["ranks"], doc["query_sample"]) == (1, None)
    n = len(old.labels)
    assert doc["queries"][1] == [{"n": n, "without_positive": 0}, {"n": n, "without_positive": 0}, None]
    assert doc["versions"] == ["v1", "v2", "v3"] and doc["protocol"] == "loo"
    assert set(doc["summary"]["map"]) == {"ac", "am", "bc", "fc", "ecc", "update_gain"}


def test_transform_hook_sees_every_cell_and_can_undo_a_rotation():
    old, new, rotated, rotation = _versions()
    seen: list[Cell] = []

    def undo(cell: Cell, q: np.ndarray, g: np.ndarray):
        seen.append(cell)
        if cell.query_version == "v2" and cell.gallery_version == "v1":
            return (q @ rotation.T).astype(np.float32), g
        return q, g

    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    plain = evaluate_chain([Version("v1", old), Version("v2", rotated)], ev)
    fixed = evaluate_chain([Version("v1", old), Version("v2", rotated)], ev, transform=undo)
    assert [(c.i, c.j) for c in seen] == [(0, 0), (1, 0), (1, 1)]
    assert plain.cell("cmc@1", "v2", "v1") < 0.5 * fixed.cell("cmc@1", "v2", "v1")
    assert fixed.cell("cmc@1", "v2", "v1") == ev.evaluate(new, old)["cmc@1"]


def test_truncate_compares_the_first_coordinates_of_a_longer_new_feature():
    old, new, _, _ = _versions()
    extra = np.random.default_rng(9).standard_normal((new.n, 8)).astype(np.float32)
    longer = FeatureSet.from_arrays(np.concatenate([new.features, extra], 1), new.labels, new.ids)
    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    with pytest.raises(CompatError, match=r"cell v2 on v1 \(<memory> on <memory>\): feature sizes differ"):
        evaluate_chain([Version("v1", old), Version("v2", longer)], ev)
    report = evaluate_chain([Version("v1", old), Version("v2", longer)], ev, dim_policy="truncate")
    assert report.cell("cmc@1", "v2", "v1") == ev.evaluate(new, old)["cmc@1"]
    assert report.cell("cmc@1", "v2", "v2") == ev.evaluate(longer, longer)["cmc@1"]  # own gallery: whole feature


def test_independent_model_sets_the_update_gain():
    old, new, rotated, _ = _versions()
    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    report = evaluate_chain([Version("v1", old), Version("v2", new)], ev, independent=rotated)
    m = report.matrices["cmc@1"]
    best = ev.evaluate(rotated, rotated)["cmc@1"]
    assert report.summary["cmc@1"].update_gain == pytest.approx((m[1][0] - m[0][0]) / (best - m[0][0]))


def test_chain_refuses_duplicate_names_and_empty_chains():
    old, new, _, _ = _versions()
    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    with pytest.raises(CompatError, match="given twice"):
        evaluate_chain([Version("v1", old), Version("v1", new)], ev)
    with pytest.raises(CompatError, match="at least one version"):
        evaluate_chain([], ev)
    with pytest.raises(CompatError, match="dim_policy"):
        evaluate_chain([Version("v1", old)], ev, dim_policy="squash")


def test_separate_query_sets_are_used_for_the_query_side():
    old, new, _, _ = _versions()
    sub = FeatureSet.from_arrays(new.features[:50], new.labels[:50], new.ids[:50])
    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    report = evaluate_chain([Version("v1", old), Version("v2", new, query=sub)], ev)
    assert report.queries[1][0].n_queries == 50
    assert report.cell("cmc@1", "v2", "v1") == ev.evaluate(sub, old)["cmc@1"]
