"""The index layer: truncated AP and recall by hand, Flat = exact search, IVF = faiss called directly,
stored indexes (id maps, ids files, read-only), and one-line errors for every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from compat.errors import CompatError
from compat.retrieval import knn
from compat.retrieval.index import IndexSpec, build_index, search, training_rows
from compat.retrieval.index_file import load_index
from compat.retrieval.metrics import parse_metrics, recall_at_k, topk_values

faiss = pytest.importorskip("faiss")


def _blobs(n=600, d=16, classes=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    feats = (rng.normal(size=(classes, d))[labels] + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
    return feats, labels


# --------------------------------------------------------------------------------------------------
# map@K and recall@k
# --------------------------------------------------------------------------------------------------


def test_truncated_average_precision_by_hand():
    labels = np.array([0, 1, 0, 1, 1, 0])  # gallery positions 0..5
    lists = np.array([[0, 1, 2, 3, 4],     # query of class 0, R = 3: hits at 1 and 3
                      [3, 0, 1, -1, -1],   # class 1, R = 3: hits at 1 and 3, two empty slots
                      [5, 4, 3, 1, -1],    # class 0, R = 1: the hit at rank 1
                      [1, 0, 2, 5, 4]])    # class 0, R = 20 (more than K): hits at 2, 3, 4
    q_labels = np.array([0, 1, 0, 0])
    n_pos = np.array([3, 3, 1, 20])
    got = topk_values(lists, labels, q_labels, n_pos, parse_metrics(("map@5", "map@2", "cmc@1")))
    # AP@K = (1 / min(R, K)) * sum over hits within K of (hits so far / rank)
    expected_5 = [(1 / 1 + 2 / 3) / 3, (1 / 1 + 2 / 3) / 3, 1.0, (1 / 2 + 2 / 3 + 3 / 4) / 5]
    expected_2 = [(1 / 1) / 2, (1 / 1) / 2, 1.0, (1 / 2) / 2]
    np.testing.assert_allclose(got["map@5"], expected_5)
    np.testing.assert_allclose(got["map@2"], expected_2)
    np.testing.assert_array_equal(got["cmc@1"], [1, 1, 1, 0])


def test_truncated_average_precision_matches_a_slow_loop():
    rng = np.random.default_rng(3)
    lists = rng.integers(-1, 50, size=(200, 12))
    g_labels, q_labels = rng.integers(0, 4, 50), rng.integers(0, 4, 200)
    n_pos = rng.integers(0, 15, 200)
    got = topk_values(lists, g_labels, q_labels, n_pos, parse_metrics(("map@10",)))["map@10"]
    for row, value in zip(range(200), got, strict=True):
        hits, total = 0, 0.0
        for rank, g in enumerate(lists[row, :10], start=1):
            if g >= 0 and g_labels[g] == q_labels[row]:
                hits += 1
                total += hits / rank
        assert value == pytest.approx(total / max(1, min(n_pos[row], 10)))


def test_recall_counts_the_exact_top_k_found_in_any_order():
    found = np.array([[3, 1, 7], [5, -1, -1], [1, 2, 3]])
    exact = np.array([[1, 3, 4], [5, 6, -1], [-1, -1, -1]])
    got = recall_at_k(found, exact)
    np.testing.assert_allclose(got[:2], [2 / 3, 1 / 2])
    assert np.isnan(got[2])


# --------------------------------------------------------------------------------------------------
# Built indexes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_flat_index_returns_the_exact_neighbours(similarity):
    feats, _ = _blobs()
    index = build_index(feats, IndexSpec(factory="Flat"), similarity=similarity)
    own = np.arange(len(feats))
    _, found = index.search(feats, 7, exclude=own)
    _, exact = knn(feats, feats, 7, similarity=similarity, exclude=own)
    np.testing.assert_array_equal(found, exact)


def test_ivf_equals_faiss_called_directly_with_the_same_sample_and_seed():
    feats, _ = _blobs(n=2000, d=16)
    spec = IndexSpec(factory="IVF16,Flat", nprobe=3, train_size=700, seed=5)
    _, ours = build_index(feats, spec, similarity="l2").search(feats[:300], 5, exclude=np.arange(300))

    direct = faiss.index_factory(16, "IVF16,Flat", faiss.METRIC_L2)
    faiss.extract_index_ivf(direct).cp.seed = 5
    sample = np.sort(np.random.default_rng(5).choice(2000, 700, replace=False))
    direct.train(feats[sample])
    direct.add(feats)
    direct.nprobe = 3
    _, raw = direct.search(feats[:300], 6)
    expected = np.array([[g for g in row if g != q][:5] for q, row in enumerate(raw)])
    np.testing.assert_array_equal(ours, expected)


def test_training_sample_is_seeded_and_sorted():
    a, b = training_rows(100, 10, 1), training_rows(100, 10, 1)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) > 0) and not np.array_equal(a, training_rows(100, 10, 2))
    np.testing.assert_array_equal(training_rows(5, 10, 0), np.arange(5))


def test_leave_one_out_drops_the_own_item_else_the_last():
    class Fixed:  # an index returning fixed lists
        def search(self, x, k):
            i = np.array([[4, 2, 9], [1, 3, 0]])[:, :k]
            return np.arange(i.size, dtype=np.float32).reshape(i.shape), i

    d, i = search(Fixed(), np.ones((2, 3), np.float32), 2, similarity="l2", exclude=np.array([2, 7]))
    np.testing.assert_array_equal(i, [[4, 9], [1, 3]])
    np.testing.assert_array_equal(d, [[0, 2], [3, 4]])


def test_unknown_factory_and_too_few_training_vectors_are_one_line_errors():
    feats, _ = _blobs(n=300)
    with pytest.raises(CompatError, match=r"'IVF8,Nope'.*cannot build it") as err:
        build_index(feats, IndexSpec(factory="IVF8,Nope"))
    assert "\n" not in str(err.value)
    with pytest.raises(CompatError, match=r"training on 100 vectors failed.*clusters") as err:
        build_index(feats, IndexSpec(factory="IVF256,Flat", train_size=100))
    assert "\n" not in str(err.value)
    with pytest.raises(CompatError, match="no parameter nprobe"):
        build_index(feats, IndexSpec(factory="HNSW8", nprobe=4))


# --------------------------------------------------------------------------------------------------
# Stored indexes
# --------------------------------------------------------------------------------------------------


def _stored(tmp_path, feats, *, ids=None, metric=None, factory="IVF8,Flat"):
    x = feats.copy()
    faiss.normalize_L2(x)
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT if metric is None else metric)
    index.train(x)
    if ids is not None:
        index = faiss.IndexIDMap(index)
        index.add_with_ids(x, ids)
    else:
        index.add(x)
    path = tmp_path / "prod.index"
    faiss.write_index(index, str(path))
    return path


def test_stored_index_with_an_id_map_is_searched_as_it_is(tmp_path):
    feats, _ = _blobs(n=500)
    gallery_ids = np.arange(500) * 7 + 3
    order = np.random.default_rng(0).permutation(500)  # stored in another order than the gallery set
    path = _stored(tmp_path, feats[order], ids=gallery_ids[order])
    before = path.read_bytes()
    stored = load_index(path, gallery_ids, 16, spec=IndexSpec(nprobe=8))
    _, found = stored.search(feats[:50], 5, exclude=np.arange(50))
    _, exact = knn(feats[:50], feats, 5, exclude=np.arange(50))
    np.testing.assert_array_equal(found, exact)  # nprobe 8 of 8 lists: exhaustive, in gallery positions
    assert path.read_bytes() == before


def test_stored_index_without_id_map_takes_an_ids_file(tmp_path):
    feats, _ = _blobs(n=200)
    ids = np.array([f"item-{i}" for i in range(200)])
    path = _stored(tmp_path, feats[::-1].copy(), factory="Flat")
    np.save(tmp_path / "ids.npy", ids[::-1])
    stored = load_index(path, ids, 16, ids_path=tmp_path / "ids.npy")
    _, found = stored.search(feats[:20], 3, exclude=np.arange(20))
    np.testing.assert_array_equal(found, knn(feats[:20], feats, 3, exclude=np.arange(20))[1])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("dim", "holds 8-d vectors but the gallery's features are 16-d"),
        ("metric", "uses the L2 metric but similarity cosine needs inner product"),
        ("count", "holds 199 vectors but the gallery has 200 items"),
        ("ids", "3 of the index's 200 ids are not gallery ids"),
        ("twice", "holds some gallery item more than once"),
        ("not-an-index", "not a faiss index"),
    ],
)
def test_stored_index_that_does_not_fit_the_gallery_is_refused(tmp_path, case, message):
    feats, _ = _blobs(n=200)
    ids = np.arange(200)
    if case == "dim":
        path = _stored(tmp_path, feats[:, :8].copy(), factory="Flat")
    elif case == "metric":
        path = _stored(tmp_path, feats, metric=faiss.METRIC_L2, factory="Flat")
    elif case == "count":
        path = _stored(tmp_path, feats[:199], factory="Flat")
    elif case == "ids":
        path = _stored(tmp_path, feats, ids=np.r_[ids[:197], [1000, 1001, 1002]], factory="Flat")
    elif case == "twice":
        path = _stored(tmp_path, feats, ids=np.r_[ids[:199], [0]], factory="Flat")
    else:
        path = tmp_path / "prod.index"
        path.write_bytes(b"not an index")
    with pytest.raises(CompatError, match=message) as err:
        load_index(path, ids, 16)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.gpu
def test_index_built_on_the_gpu_returns_the_cpu_neighbours():
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("needs faiss-gpu and a GPU")
    feats, _ = _blobs(n=3000, d=32)
    own = np.arange(500)
    cpu = build_index(feats, IndexSpec(factory="Flat")).search(feats[:500], 10, exclude=own)[1]
    gpu_index = build_index(feats, IndexSpec(factory="IVF16,Flat", nprobe=16), device="cuda")
    assert "Gpu" in type(gpu_index.index).__name__
    gpu = gpu_index.search(feats[:500], 10, exclude=own)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu, gpu, strict=True)]) > 0.99
