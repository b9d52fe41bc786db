"""GPU paths agree with the CPU results. Skipped without CUDA (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest

from compat.retrieval import RetrievalEvaluator, knn

pytestmark = pytest.mark.gpu


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")


def _data(n=3000, d=64, classes=50, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    feats = (rng.standard_normal((classes, d))[labels] + 1.5 * rng.standard_normal((n, d))).astype(np.float32)
    return feats, labels, np.arange(n)


@requires_cuda
@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_torch_cuda_knn_equals_cpu(similarity):
    g, _, _ = _data()
    ex = np.arange(500)
    cpu = knn(g[:500], g, 10, similarity=similarity, backend="torch", device="cpu", exclude=ex)
    gpu = knn(g[:500], g, 10, similarity=similarity, backend="torch", device="cuda", exclude=ex)
    np.testing.assert_array_equal(cpu[1], gpu[1])
    np.testing.assert_array_equal(cpu[0], gpu[0])


@requires_cuda
@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_cuda_evaluator_equals_cpu(similarity):
    g, labels, ids = _data()
    metrics = ("cmc@1", "cmc@5", "map", "map@r")
    cpu = RetrievalEvaluator(metrics, similarity=similarity, device="cpu").evaluate_arrays(
        g, labels, ids, g, labels, ids
    )
    gpu = RetrievalEvaluator(metrics, similarity=similarity, device="cuda", memory_budget="64MiB").evaluate_arrays(
        g, labels, ids, g, labels, ids
    )
    for m in ("cmc@1", "cmc@5"):
        assert gpu[m] == cpu[m]
    for m in ("map", "map@r"):  # float32 GPU matmul may flip near-ties differently from the CPU's
        assert gpu[m] == pytest.approx(cpu[m], abs=1e-5)


@requires_cuda
def test_faiss_gpu_knn_equals_cpu():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss-gpu is not installed")
    g, _, _ = _data()
    ex = np.arange(500)
    cpu = knn(g[:500], g, 10, backend="faiss", device="cpu", exclude=ex)
    gpu = knn(g[:500], g, 10, backend="faiss", device="cuda", exclude=ex)
    np.testing.assert_array_equal(cpu[1], gpu[1])


@requires_cuda
@pytest.mark.parametrize("exclude", ["none", "same-group"])
def test_cuda_query_gallery_equals_cpu(exclude):
    from compat.retrieval.qrels import Qrels

    g, labels, ids = _data()
    q, q_labels, _ = _data(n=700, seed=1)
    q_ids = np.arange(10_000, 10_700)
    rng = np.random.default_rng(2)
    groups, q_groups = rng.integers(0, 6, len(g)), rng.integers(0, 6, len(q))
    junk = Qrels.from_rows([(int(a), int(b), "junk") for a, b in zip(q_ids[::7], rng.integers(0, len(g), 100))]
                           + [(int(a), int(b), "positive") for a, b in zip(q_ids, rng.integers(0, len(g), 700))])
    metrics = ("cmc@1", "cmc@5", "map", "map@r")
    for qrels in (None, junk):
        results = [RetrievalEvaluator(metrics, protocol="query-gallery", exclude=exclude, qrels=qrels, device=device,
                                      memory_budget="64MiB").evaluate_arrays(q, q_labels, q_ids, g, labels, ids,
                                                                             query_groups=q_groups,
                                                                             gallery_groups=groups)
                   for device in ("cpu", "cuda")]
        cpu, gpu = results
        np.testing.assert_array_equal(cpu.top1, gpu.top1)
        for m in ("cmc@1", "cmc@5"):
            assert gpu[m] == cpu[m]
        for m in ("map", "map@r"):  # float32 GPU matmul may flip near-ties differently from the CPU's
            assert gpu[m] == pytest.approx(cpu[m], abs=1e-5)
