"""Query sampling (``query_sample``): the stratified, seeded draw, and a sampled cell is the cell of the
sampled queries, for leave-one-out and query-gallery; query-gallery refuses several ranks."""

from __future__ import annotations

import numpy as np
import pytest

from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.retrieval import RetrievalEvaluator
from compat.retrieval.sampling import sample_queries
from tests.reference import query_gallery_reference


def test_shares_by_largest_remainder_ties_to_the_larger_class():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)  # n = 5: exact shares 3, 1.5, 0.5
    rows = sample_queries(labels, np.arange(10), 5, seed=0)
    assert np.bincount(labels[rows], minlength=3).tolist() == [3, 2, 0]
    assert rows.tolist() == sorted(rows.tolist()) and len(set(rows.tolist())) == 5


def test_the_draw_follows_ids_and_seed_not_row_order():
    rng = np.random.default_rng(1)
    labels, ids = rng.integers(0, 4, 200), rng.permutation(200) * 7
    rows = sample_queries(labels, ids, 30, seed=3)
    perm = rng.permutation(200)
    moved = sample_queries(labels[perm], ids[perm], 30, seed=3)
    assert sorted(ids[rows].tolist()) == sorted(ids[perm][moved].tolist())
    assert sorted(ids[rows].tolist()) != sorted(ids[sample_queries(labels, ids, 30, seed=4)].tolist())
    assert sample_queries(labels, ids, 500, seed=3).tolist() == list(range(200))
    with pytest.raises(CompatError, match="query_sample"):
        sample_queries(labels, ids, 0, seed=3)


def _cell(seed: int):
    rng = np.random.default_rng(seed)
    n, d = 150, 6
    labels = rng.integers(0, 5, n)
    x = (rng.standard_normal((5, d))[labels] + rng.standard_normal((n, d))).astype(np.float32)
    return x, labels, np.arange(n) + 500


@pytest.mark.parametrize("protocol", ["loo", "query-gallery"])
def test_a_sampled_cell_is_the_cell_of_the_sampled_queries(protocol):
    x, labels, ids = _cell(2)
    q, q_labels, q_ids = (x[:60], labels[:60], ids[:60]) if protocol == "loo" else _cell(3)
    metrics = ("cmc@1", "cmc@5", "map", "map@r")
    sampled = RetrievalEvaluator(metrics, protocol=protocol, device="cpu", query_sample=20, seed=9).evaluate_arrays(
        q, q_labels, q_ids, x, labels, ids)
    rows = sample_queries(q_labels, q_ids, 20, seed=9)
    sub = RetrievalEvaluator(metrics, protocol=protocol, device="cpu").evaluate_arrays(
        q[rows], q_labels[rows], q_ids[rows], x, labels, ids)
    assert sampled.values == sub.values
    assert (sampled.n_queries, sampled.sampled_from) == (20, len(q))
    left_out = np.setdiff1d(np.arange(len(q)), rows)
    assert not sampled.counted[left_out].any() and sampled.counted[rows].tolist() == sub.counted.tolist()
    assert sampled.top1[rows].tolist() == sub.top1.tolist() and (sampled.top1[left_out] == -1).all()
    assert sampled.hit1[rows].tolist() == sub.hit1.tolist() and not sampled.hit1[left_out].any()
    for name, values in sub.per_query.items():
        assert sampled.per_query[name][rows].tolist() == values.tolist()


def test_query_gallery_refuses_several_ranks_and_pairs_refuse_a_sample():
    with pytest.raises(CompatError, match="query-gallery runs in one process, not over 2 torchrun ranks"):
        RetrievalEvaluator(protocol="query-gallery", device="cpu", dist=DistributedContext(0, 2, 0))
    with pytest.raises(CompatError, match="query_sample"):
        RetrievalEvaluator(protocol="pairs", device="cpu", query_sample=10)


def test_an_ignored_item_tied_with_a_positive_is_taken_off_its_rank():
    """Gallery items 1 and 3 are the same vector and the query's label; item 1 shares the query's group
    (ignored), so the positive 3 ranks as if 1 were not there, though 1 comes first among equals."""
    g = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    g_labels, g_groups = np.array([1, 0, 1, 0, 0]), np.array([0, 5, 0, 6, 0])
    q = np.array([[0.6, 0.8], [1, 0]], dtype=np.float32)
    q_labels, q_groups = np.array([0, 1]), np.array([5, 0])
    cell = (q, q_labels, np.arange(2), g, g_labels, np.arange(5) + 10)
    ev = RetrievalEvaluator(("cmc@1", "map", "map@r"), protocol="query-gallery", exclude="same-group", device="cpu")
    r = ev.evaluate(*(_fs(*cell[:3], q_groups), _fs(*cell[3:], g_groups)))
    ref, without, top1, _ = query_gallery_reference(*cell, ks=(1,), q_groups=q_groups, g_groups=g_groups,
                                                    same_group=True)
    # query 0: positives 3 (rank 1, item 1 ignored) and 4 (rank 3, after item 2): AP = (1/1 + 2/3) / 2
    assert r.per_query["map"][0] == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    assert r["map"] == pytest.approx(ref["map"], abs=1e-15) and r["map@r"] == pytest.approx(ref["map@r"], abs=1e-15)
    assert r.top1.tolist() == top1.tolist() and r.n_without_positive == without == 1


def _fs(x, labels, ids, groups):
    from compat.features import FeatureSet

    return FeatureSet(x, labels, ids, {}, "mem", groups)
