"""With faiss-gpu and several GPUs, one process splits each gallery block over all of them
(``--backend faiss --device cuda``). Checked here on CPU with a stand-in for faiss-gpu's entry points
that runs ``faiss.knn`` per call and records which GPU got which rows: the neighbours are those of
the CPU search, every GPU gets a part of every block, and ``cuda:N`` keeps to GPU N."""

from __future__ import annotations

import importlib
import threading

import faiss
import numpy as np
import pytest
import torch

from compat.retrieval.knn import knn

faiss_search = importlib.import_module("compat.retrieval.faiss_search")


@pytest.fixture
def fake_gpus(monkeypatch):
    calls = []
    lock = threading.Lock()

    def knn_gpu(res, q, block, k, metric, device):
        assert isinstance(res, FakeResources)
        with lock:
            calls.append((device, len(block)))
        return faiss.knn(q, block, k, metric=metric)

    class FakeResources:
        pass

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 3)
    monkeypatch.setattr(faiss, "knn_gpu", knn_gpu, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(faiss_search, "_GPU_RESOURCES", {})
    return calls


def _data(n=1000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[7] = x[500]  # an exact tie across the GPUs' parts
    return x


@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_gallery_blocks_split_over_every_gpu_give_the_cpu_neighbours(fake_gpus, similarity):
    g = _data()
    q, ex = g[:64], np.arange(64)
    want = knn(q, g, 5, device="cpu", backend="faiss", similarity=similarity, exclude=ex)
    got = knn(q, g, 5, device="cuda", backend="faiss", similarity=similarity, exclude=ex, memory_budget=1 << 20)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert {device for device, _ in fake_gpus} == {0, 1, 2}
    assert sum(rows for _, rows in fake_gpus) == len(g)


def test_one_named_gpu_takes_the_whole_block(fake_gpus):
    g = _data()
    knn(g[:10], g, 3, device="cuda:2", backend="faiss")
    assert fake_gpus == [(2, len(g))]
