"""The faiss backend's candidate search: ``faiss.knn`` per gallery block on the CPU, ``faiss.knn_gpu``
with faiss-gpu (``cuda:N`` one GPU; plain ``cuda`` every GPU faiss sees, each block split over them).

The candidates are float32; :func:`compat.retrieval.knn.knn` re-scores them in float64.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from compat.retrieval.knn import Similarity

if TYPE_CHECKING:
    from compat.retrieval.knn import _PreparedGallery

__all__ = ["faiss_candidates", "faiss_gpus"]


def faiss_candidates(
    q: np.ndarray, prepared: _PreparedGallery, kk: int, exclude: np.ndarray, similarity: Similarity, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-kk through ``faiss.knn`` per gallery block (one extra to drop the excluded item)."""
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT if similarity is Similarity.COSINE else faiss.METRIC_L2
    best_s = np.full((len(q), 0), -np.inf)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    gpus = faiss_gpus(device)
    for start, block in prepared:
        take = min(kk + 1, len(block))
        if gpus:
            d, i = _knn_on_gpus(gpus, q, block, take, metric)
        else:
            d, i = faiss.knn(q, block, take, metric=metric)
        s = d.astype(np.float64) if similarity is Similarity.COSINE else -d.astype(np.float64)
        i = i.astype(np.int64) + start
        s[i == exclude[:, None]] = -np.inf
        s[i < start] = -np.inf  # faiss pads with -1 when a block has fewer than `take` items
        merged_s = np.concatenate([best_s, s], 1)
        merged_i = np.concatenate([best_i, i], 1)
        order = np.argsort(-merged_s, axis=1, kind="stable")[:, :kk]
        best_s = np.take_along_axis(merged_s, order, 1)
        best_i = np.take_along_axis(merged_i, order, 1)
    return best_s, best_i


_GPU_RESOURCES: dict[int, object] = {}


def faiss_gpus(device: str) -> list[tuple[int, object]]:
    """The GPUs faiss searches on, with one resource object each (made on first use): ``cuda:N`` is
    GPU N, plain ``cuda`` every GPU faiss sees (the gallery block is split over them); none on CPU."""
    if not device.startswith("cuda"):
        return []
    import faiss

    ids = [int(device.split(":", 1)[1])] if ":" in device else list(range(max(1, faiss.get_num_gpus())))
    for n in ids:
        if n not in _GPU_RESOURCES:
            _GPU_RESOURCES[n] = faiss.StandardGpuResources()
    return [(n, _GPU_RESOURCES[n]) for n in ids]


def _knn_on_gpus(gpus: list[tuple[int, object]], q: np.ndarray, block: np.ndarray, take: int,
                 metric) -> tuple[np.ndarray, np.ndarray]:
    """``faiss.knn_gpu`` of one gallery block split in row ranges over several GPUs, one thread each
    (faiss releases the GIL); returns every part's lists side by side, indices into the block."""
    import faiss

    bounds = np.linspace(0, len(block), len(gpus) + 1).astype(int)
    parts = [(gpu, a, b) for gpu, a, b in zip(gpus, bounds[:-1], bounds[1:], strict=True) if b > a]

    def one(part):
        (n, res), a, b = part
        d, i = faiss.knn_gpu(res, q, block[a:b], min(take, b - a), metric=metric, device=n)
        return d, np.where(i >= 0, i.astype(np.int64) + a, -1)

    if len(parts) == 1:
        return one(parts[0])
    with ThreadPoolExecutor(len(parts)) as pool:
        found = list(pool.map(one, parts))
    return np.concatenate([d for d, _ in found], 1), np.concatenate([i for _, i in found], 1)
