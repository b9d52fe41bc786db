"""Reduced-precision candidate search (TF32, FP16, BF16 inputs, emulated on the CPU): the neighbours
stay those of float32, because the wider error bound sends near-ties at the cut to the exact search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compat.errors import CompatError
from compat.retrieval import RetrievalEvaluator, knn
from compat.retrieval.knn import Similarity, prepare, score_f64
from compat.retrieval.precision import Precision, extra_bound, reduced_scores


def _dense(n=3000, d=32, seed=0):
    """Many near neighbours: scores at the top of each row lie closer than FP16 / BF16 resolution."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((30, d))
    x = base[rng.integers(0, 30, n)] + 0.01 * rng.standard_normal((n, d))
    return x.astype(np.float32), rng.integers(0, 30, n)


@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_reduced_precision_search_returns_the_float32_neighbours(precision, similarity):
    if precision == "fp16" and similarity == "l2":
        pytest.skip("fp16 is for cosine only")
    g, _ = _dense()
    ex = np.arange(400)
    want = knn(g[:400], g, 10, similarity=similarity, backend="torch", device="cpu", exclude=ex)
    got = knn(g[:400], g, 10, similarity=similarity, backend="torch", device="cpu", exclude=ex, precision=precision,
              memory_budget=1 << 20)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("precision", [Precision.FP16, Precision.BF16, Precision.TF32])
def test_the_bound_holds_and_plain_reduced_topk_would_be_wrong(precision):
    g, _ = _dense()
    q = torch.from_numpy(prepare(g[:200], Similarity.COSINE))
    s = reduced_scores(q, torch.from_numpy(prepare(g, Similarity.COSINE)), False, precision).numpy()
    exact = score_f64(g[:200], g, Similarity.COSINE)
    bound = extra_bound(np.ones(200), 1.0, g.shape[1], False, precision) + 2.0 * (g.shape[1] + 2) * 2.0**-24
    assert np.all(np.abs(s - exact) <= bound[:, None])
    # Without the exact step, the reduced scores' own top-10 differs from the exact one on this data.
    assert np.any(np.argsort(-s, axis=1, kind="stable")[:, :10] != np.argsort(-exact, axis=1, kind="stable")[:, :10])


def test_evaluator_takes_the_precision_and_refuses_what_it_cannot_bound():
    g, labels = _dense(800)
    ids = np.arange(800)
    fp32 = RetrievalEvaluator(("cmc@1", "cmc@5"), backend="torch", device="cpu").evaluate_arrays(g, labels, ids, g, labels, ids)
    tf32 = RetrievalEvaluator(("cmc@1", "cmc@5"), backend="torch", device="cpu", search_precision="tf32").evaluate_arrays(
        g, labels, ids, g, labels, ids)
    assert tf32.values == fp32.values
    with pytest.raises(CompatError, match="torch backend"):
        RetrievalEvaluator(backend="faiss", device="cpu", search_precision="bf16")
    with pytest.raises(CompatError, match="cosine only"):
        RetrievalEvaluator(backend="torch", device="cpu", similarity="l2", search_precision="fp16")
