"""Exact k-nearest-neighbour search, streamed so that memory is bounded whatever the sizes.

Queries are processed in chunks and the gallery in blocks; no N_query x N_gallery matrix is ever
held. Two backends find candidates: ``torch`` (matmul + topk per block, CPU or CUDA) and ``faiss``
(``faiss.knn`` per block; GPU when faiss-gpu and a GPU are present). Candidates are then re-scored
in float64 on the CPU and ordered by (score, lower gallery index first). A query whose candidate
list cannot be proven to contain its true top-k (a near-tie at the cut, within the float32 error
bound of the backend) is searched again exactly in float64. So every backend, device and chunk size
returns the same neighbours for the same input.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

from compat.choices import parse_choice
from compat.device import resolve_device
from compat.errors import CompatError
from compat.progress import progress as progress_bar
from compat.retrieval.normalize import unit_rows
from compat.retrieval.precision import Precision, check_precision, extra_bound, reduced_scores
from compat.sharded import release

__all__ = [
    "Backend",
    "Precision",
    "Similarity",
    "as_f64",
    "error_bound",
    "knn",
    "pair_f64",
    "parse_memory_budget",
    "resolve_backend",
    "score_f64",
]

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = "1GiB"
# Extra candidates fetched beyond k, so that float32 near-ties at the cut rarely need a re-search
# (more with reduced-precision inputs, whose error bound is wider).
_EXTRA_CANDIDATES = 8
_EXTRA_CANDIDATES_REDUCED = 24
_UNIT_ROUNDOFF32 = 2.0**-24
_FAISS_QUERY_ROWS = 8192
_FAISS_BLAS_MIN = 128_000


class Similarity(str, Enum):
    """How two features are compared. Cosine ranks by inner product of L2-normalised features;
    L2 ranks by squared Euclidean distance (smaller first)."""

    COSINE = "cosine"
    L2 = "l2"


class Backend(str, Enum):
    AUTO = "auto"
    TORCH = "torch"
    FAISS = "faiss"


def parse_memory_budget(budget: int | str) -> int:
    """``"1GiB"``, ``"512MiB"``, ``"2GB"`` or a number of bytes -> bytes."""
    if isinstance(budget, int):
        value = budget
    else:
        text = str(budget).strip()
        units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
        lowered = text.lower()
        for suffix, mult in units.items():
            if lowered.endswith(suffix):
                try:
                    value = int(float(lowered[: -len(suffix)]) * mult)
                except ValueError:
                    value = -1
                break
        else:
            value = int(text) if text.isdigit() else -1
    if value < (1 << 20):
        raise CompatError(f"memory_budget: {budget!r} is not a size of at least 1MiB (e.g. '1GiB', '256MiB')")
    return value


def _faiss_available(device: str) -> bool:
    try:
        import faiss
    except ImportError:
        return False
    if device.startswith("cuda"):
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return True


def resolve_backend(backend: Backend | str, device: str) -> Backend:
    """Pick the backend. ``auto``: faiss on CPU, torch on CUDA (faiss-gpu only when asked for).

    On CPU the two measured on par inside :func:`knn` (torch 1.01x faiss, 4,096 queries x 50k x 512,
    2 cores, ``benchmarks/bench_backends.py``); faiss tiles its own scores (no score buffer)."""
    backend = parse_choice(Backend, backend, "backend")
    if backend is Backend.AUTO:
        return Backend.FAISS if device == "cpu" and _faiss_available(device) else Backend.TORCH
    if backend is Backend.FAISS and not _faiss_available(device):
        where = "faiss-gpu and a GPU" if device.startswith("cuda") else "faiss-cpu"
        raise CompatError(f"backend: 'faiss' needs {where} installed (pip install 'compat[cpu]' or 'compat[gpu]')")
    return backend


@dataclass(frozen=True)
class _Plan:
    query_rows: int
    gallery_rows: int


def _plan(n_query: int, n_gallery: int, dim: int, k: int, budget: int) -> _Plan:
    """Chunk sizes so that one query chunk x gallery block of scores (+ top-k workspace) fits."""
    # Per score: float32 value, plus room for topk's workspace and the candidate merge.
    bytes_per_score = 12
    gallery_rows = max(1, min(n_gallery, budget // 4 // max(1, dim * 4)))
    query_rows = max(1, min(n_query, (budget // 2) // (bytes_per_score * gallery_rows + 16 * (k + dim))))
    return _Plan(query_rows=query_rows, gallery_rows=gallery_rows)


def prepare(block: np.ndarray, similarity: Similarity) -> np.ndarray:
    """float32 copy ready for scoring: L2-normalised rows for cosine (any finite values:
    :func:`compat.retrieval.normalize.unit_rows`), unchanged for L2."""
    x = np.ascontiguousarray(block, dtype=np.float32)
    return unit_rows(x) if similarity is Similarity.COSINE else x


def as_f64(x: np.ndarray, similarity: Similarity) -> np.ndarray:
    """Rows of ``x`` (..., D) in float64 as :func:`score_f64` uses them: L2-normalised for cosine."""
    x64 = x.astype(np.float64)
    if similarity is Similarity.COSINE:
        x64 = x64 / np.maximum(np.linalg.norm(x64, axis=-1, keepdims=True), 1e-300)
    return x64


def pair_f64(q64: np.ndarray, g64: np.ndarray, similarity: Similarity) -> np.ndarray:
    """Canonical scores of broadcastable rows prepared by :func:`as_f64`: (..., D), (..., D) -> (...)."""
    if similarity is Similarity.COSINE:
        return np.einsum("...d,...d->...", q64, g64)
    diff = q64 - g64
    return -np.einsum("...d,...d->...", diff, diff)


def score_f64(q: np.ndarray, g: np.ndarray, similarity: Similarity) -> np.ndarray:
    """Canonical float64 scores, higher is better: cosine similarity or minus squared distance.

    Each (query, item) score is computed the same way whatever the batch around it, so equal
    features always score equal: the exact order of every search and ranking is defined by it.

    Args:
        q: (..., D) queries; g: (..., M, D) gallery rows for each query. Returns (..., M).
    """
    return pair_f64(as_f64(q, similarity)[..., None, :], as_f64(g, similarity), similarity)


def _gallery_blocks(gallery: np.ndarray, rows: int, similarity: Similarity) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, gallery.shape[0], rows):
        block = prepare(gallery[start : start + rows], similarity)
        release(gallery, start, start + rows)  # a memory-mapped gallery's pages leave the process
        yield start, block


class _PreparedGallery:
    """Gallery blocks ready for scoring, cached when they fit in a quarter of the budget."""

    def __init__(self, gallery: np.ndarray, rows: int, similarity: Similarity, budget: int):
        self.gallery, self.rows, self.similarity = gallery, rows, similarity
        self.cache: list[tuple[int, np.ndarray]] | None = None
        if gallery.shape[0] * gallery.shape[1] * 4 <= budget // 4:
            self.cache = list(_gallery_blocks(gallery, rows, similarity))
        self._max_norm: float | None = None
        self._on_device: dict[str, list] = {}

    def record_max_norm(self, value: float) -> None:
        """The largest norm, measured by a caller that read every block anyway (no second pass)."""
        self._max_norm = value

    @property
    def max_norm(self) -> float:
        """Largest gallery norm (after preparation), for the L2 error bound; computed on first use."""
        if self._max_norm is None:
            self._max_norm = max(float(np.sqrt(np.einsum("ij,ij->i", b, b).max())) * (1 + 1e-6) for _, b in self)
        return self._max_norm

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return iter(self.cache) if self.cache is not None else _gallery_blocks(self.gallery, self.rows, self.similarity)

    def on(self, device: str) -> Iterator[tuple[int, object]]:
        """The blocks as torch tensors on ``device``; a cached gallery is copied there once."""
        import torch

        if self.cache is None:
            return ((start, torch.from_numpy(b).to(device)) for start, b in self)
        if device not in self._on_device:
            self._on_device[device] = [(start, torch.from_numpy(b).to(device)) for start, b in self.cache]
        return iter(self._on_device[device])


def knn(
    query: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    similarity: Similarity | str = Similarity.COSINE,
    backend: Backend | str = Backend.AUTO,
    device: str = "cpu",
    exclude: np.ndarray | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
    precision: Precision | str = Precision.FP32,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k neighbours of each query in the gallery.

    Args:
        query: (Nq, D) features.
        gallery: (Ng, D) features; may be a memory map, it is read block by block.
        k: neighbours per query.
        similarity: ``cosine`` (default) or ``l2``.
        backend: ``auto``, ``torch`` or ``faiss``.
        device: ``cpu``, ``cuda`` or ``auto``.
        exclude: (Nq,) gallery index to leave out for each query (leave-one-out), -1 for none.
        memory_budget: bytes (or ``"1GiB"``) for the score blocks and candidate buffers.
        progress: a bar over the query chunks on a terminal (when there are several).
        precision: inputs of the torch backend's candidate scores: ``fp32``, or ``tf32`` / ``fp16`` /
            ``bf16`` (tensor cores on CUDA) with a wider error bound, so the result is the same
            (:mod:`compat.retrieval.precision`).

    Returns:
        ``(D, I)``: (Nq, k) float64 scores (cosine similarity, or squared L2 distance for ``l2``)
        and int64 gallery indices, best first, ties broken by lower gallery index; -1 / NaN pad
        rows when the gallery has fewer than k eligible items.
    """
    similarity = parse_choice(Similarity, similarity, "similarity")
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    budget = parse_memory_budget(memory_budget)
    precision = parse_choice(Precision, precision, "search_precision")
    check_precision(precision, similarity is Similarity.L2, backend is Backend.TORCH)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise CompatError(f"knn: query {query.shape} and gallery {gallery.shape} must be 2-D with the same D")
    if k < 1:
        raise CompatError(f"knn: k must be >= 1, got {k}")
    nq, ng = query.shape[0], gallery.shape[0]
    if exclude is None:
        exclude = np.full(nq, -1, dtype=np.int64)
    kk = min(ng, k + (_EXTRA_CANDIDATES if precision is Precision.FP32 else _EXTRA_CANDIDATES_REDUCED))
    plan = _plan(nq, ng, gallery.shape[1], kk + 1, budget)
    if backend is Backend.FAISS:
        # faiss tiles the scores itself; our chunk holds queries and candidates. faiss 1.15 takes its BLAS
        # path only when nq * d >= 128,000 (its other path was 4-5x slower here, 223 queries x 200k items).
        rows = max(-(-_FAISS_BLAS_MIN // gallery.shape[1]) + 1, budget // (8 * (gallery.shape[1] + 4 * kk)))
        plan = _Plan(query_rows=min(nq, _FAISS_QUERY_ROWS, rows), gallery_rows=plan.gallery_rows)
    prepared = _PreparedGallery(gallery, plan.gallery_rows, similarity, budget)
    if backend is Backend.TORCH:
        search = functools.partial(_torch_candidates, precision=precision)
    else:
        from compat.retrieval.faiss_search import faiss_candidates as search
    scores = np.full((nq, k), np.nan)
    indices = np.full((nq, k), -1, dtype=np.int64)
    chunks = range(0, nq, plan.query_rows)
    for start in progress_bar(chunks, desc="searching", enabled=progress and len(chunks) > 1):
        q = prepare(query[start : start + plan.query_rows], similarity)
        ex = np.asarray(exclude[start : start + len(q)], dtype=np.int64)
        cand_s, cand_i = search(q, prepared, kk, ex, similarity, device)
        s, i = _canonical_topk(query[start : start + len(q)], gallery, prepared, cand_s, cand_i, k, ex, similarity,
                               precision)
        scores[start : start + len(q)] = s
        indices[start : start + len(q)] = i
        release(gallery, 0, ng)  # the candidates' rows, read for re-scoring
    if similarity is Similarity.L2:
        scores = -scores
    return scores, indices


def _torch_candidates(
    q: np.ndarray, prepared: _PreparedGallery, kk: int, exclude: np.ndarray, similarity: Similarity, device: str,
    *, precision: Precision = Precision.FP32,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-kk by torch scores (higher better), merged over gallery blocks; a cached gallery stays on the device."""
    import torch

    qt = torch.from_numpy(q).to(device)
    ex = torch.from_numpy(exclude).to(device)
    best_s = torch.full((len(q), 0), -math.inf, device=device)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=device)
    for start, gt in prepared.on(device):
        if precision is Precision.FP32:
            s = score_block_torch(qt, gt, similarity)
        else:
            s = reduced_scores(qt, gt, similarity is Similarity.L2, precision)
        _mask_excluded(s, ex, start)
        take = min(kk, s.shape[1])
        top_s, top_i = torch.topk(s, take, dim=1)
        best_s, order = torch.topk(torch.cat([best_s, top_s], 1), min(kk, best_s.shape[1] + take), dim=1)
        best_i = torch.gather(torch.cat([best_i, top_i + start], 1), 1, order)
    return best_s.double().cpu().numpy(), best_i.cpu().numpy()


def score_block_torch(q, g, similarity: Similarity):  # (r, D), (b, D) tensors -> (r, b), higher better
    """float32 scores of a query chunk against a gallery block: cosine, or minus squared L2."""
    s = q @ g.T
    if similarity is Similarity.L2:
        s = 2 * s - (g * g).sum(1)[None, :] - (q * q).sum(1)[:, None]
    return s


def _mask_excluded(s, ex, start: int) -> None:
    """Set the left-out gallery item of each query (if inside this block) to -inf, in place."""
    import torch

    local = ex - start
    inside = (local >= 0) & (local < s.shape[1])
    if bool(inside.any()):
        rows = torch.nonzero(inside).squeeze(1)
        s[rows, local[rows]] = -math.inf


def _canonical_topk(
    q_raw: np.ndarray,
    gallery: np.ndarray,
    prepared: _PreparedGallery,
    cand_s: np.ndarray,
    cand_i: np.ndarray,
    k: int,
    exclude: np.ndarray,
    similarity: Similarity,
    precision: Precision = Precision.FP32,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidates in float64, order by (score desc, index asc), and re-search exactly the
    queries whose cut is within the backend's error bound of the best non-candidate."""
    nq, kk = cand_i.shape
    dim = gallery.shape[1]
    valid = np.isfinite(cand_s) & (cand_i >= 0)
    safe_i = np.where(valid, cand_i, 0)
    exact = np.empty((nq, kk))
    step = max(1, (64 << 20) // (8 * max(1, kk) * dim))  # float64 candidate vectors per sub-chunk
    for s in range(0, nq, step):
        rows = safe_i[s : s + step]
        items, back = np.unique(rows.ravel(), return_inverse=True)  # each item prepared once, not per query
        cand = as_f64(np.asarray(gallery[items]), similarity)[back].reshape(len(rows), kk, dim)
        exact[s : s + step] = pair_f64(as_f64(q_raw[s : s + step], similarity)[:, None, :], cand, similarity)
    exact = np.where(valid, exact, -np.inf)
    order = np.lexsort((safe_i, -exact), axis=1)[:, :k]
    top_s = np.full((nq, k), np.nan)
    top_i = np.full((nq, k), -1, dtype=np.int64)
    chosen_s = np.take_along_axis(exact, order, 1)
    found = np.isfinite(chosen_s)
    top_s[:, : order.shape[1]] = np.where(found, chosen_s, np.nan)
    top_i[:, : order.shape[1]] = np.where(found, np.take_along_axis(safe_i, order, 1), -1)

    n_eligible = gallery.shape[0] - (exclude >= 0)
    complete = valid.sum(1) >= n_eligible  # every eligible item is a candidate: nothing was cut
    bound = error_bound(q_raw, prepared.max_norm, dim, similarity)
    if precision is not Precision.FP32:
        qn = np.linalg.norm(q_raw.astype(np.float64), axis=1)
        bound = bound + extra_bound(qn, prepared.max_norm, dim, similarity is Similarity.L2, precision)
    last_backend = np.where(valid, cand_s, np.inf).min(1)
    kth = np.nan_to_num(top_s[:, k - 1], nan=-np.inf)
    redo = ~complete & ((valid.sum(1) < kk) | ~(kth > last_backend + bound))
    rows = np.flatnonzero(redo)
    if len(rows):
        top_s[rows], top_i[rows] = _exact_rows(q_raw[rows], gallery, k, exclude[rows], similarity)
        logger.debug("knn: %d of %d queries re-searched exactly (near-tie at the cut)", int(redo.sum()), nq)
    return top_s, top_i


def error_bound(q_raw: np.ndarray, max_norm: float, dim: int, similarity: Similarity) -> np.ndarray:
    """Worst-case float32 error of a backend score (classical dot-product bound, doubled)."""
    if similarity is Similarity.COSINE:
        return np.full(len(q_raw), 2.0 * (dim + 2) * _UNIT_ROUNDOFF32)
    qn = np.linalg.norm(q_raw.astype(np.float64), axis=1)
    return 4.0 * (dim + 2) * _UNIT_ROUNDOFF32 * (qn + max_norm) ** 2


def _exact_rows(
    q: np.ndarray, gallery: np.ndarray, k: int, exclude: np.ndarray, similarity: Similarity
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force float64 top-k for a few queries (the near-tie fallback), in bounded blocks."""
    ng = gallery.shape[0]
    out_s = np.full((len(q), k), np.nan)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    step = max(1, (64 << 20) // (8 * ng))
    for s in range(0, len(q), step):
        qs = q[s : s + step].astype(np.float64)
        g_rows = max(1, (64 << 20) // (8 * gallery.shape[1] * len(qs)))
        scores = np.concatenate(
            [score_f64(qs, np.asarray(gallery[b : b + g_rows])[None], similarity) for b in range(0, ng, g_rows)],
            axis=1,
        )
        ex = exclude[s : s + step]
        has_ex = np.flatnonzero(ex >= 0)
        scores[has_ex, ex[has_ex]] = -np.inf
        order = np.lexsort((np.broadcast_to(np.arange(ng), scores.shape), -scores), axis=1)[:, :k]
        best = np.take_along_axis(scores, order, 1)
        found = np.isfinite(best)
        out_s[s : s + step, : order.shape[1]] = np.where(found, best, np.nan)
        out_i[s : s + step, : order.shape[1]] = np.where(found, order, -1)
    return out_s, out_i
