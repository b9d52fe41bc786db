"""Exact ranks of each query's positives in its full ranked gallery, one chunk of queries at a time.

The rank of positive p for a query with scores s (higher first, ties broken by lower gallery index,
the left-out item at -inf) is ``1 + #{g : s_g > s_p} + #{g : s_g == s_p, g < p}``. We never sort a
whole row with its indices: we count, for every positive's score, how many scores lie above it,
over the items at or above the lowest positive only. Exact ties (duplicate features) fall back to
an explicit index comparison for that query.

Two implementations give identical ranks: NumPy per row (CPU: SIMD sort of the candidates, two
threads) and torch batched (CUDA: one sort + searchsorted for the chunk).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["positive_ranks_numpy", "positive_ranks_torch"]


def _ranks_row(row: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """1-based ranks (ascending) of ``positives`` (gallery indices) in score row ``row`` (N,)."""
    scores = row[positives]
    order = np.argsort(scores, kind="stable")
    t = scores[order]  # ascending, so the searches below walk the candidates once
    cand = row[row >= t[0]]
    cand.sort()
    right = np.searchsorted(cand, t, side="right")
    ranks = (len(cand) - right + 1).astype(np.int64)  # descending
    # t[k] itself sits at cand[right - 1]; another item with exactly its score sits just below.
    tied = np.flatnonzero(cand[np.maximum(right - 2, 0)] == t)
    tied = tied[right[tied] >= 2]
    if len(tied) == 0:
        return ranks[::-1].copy()
    for k in tied:
        ranks[k] += int(np.count_nonzero(row[: positives[order[k]]] == t[k]))
    ranks.sort()
    return ranks


def positive_ranks_numpy(scores: np.ndarray, positives: list[np.ndarray], *, threads: int = 2) -> list[np.ndarray]:
    """Ranks for a chunk on the CPU.

    Args:
        scores: (r, N) float32 scores, higher first; left-out items already at -inf.
        positives: r arrays of gallery indices (non-empty), the positives of each query.
        threads: worker threads (NumPy's sort and search release the GIL).

    Returns:
        r int64 arrays of 1-based ranks, ascending.
    """
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(positives)

    def work(rows: range) -> None:
        for r in rows:
            out[r] = _ranks_row(scores[r], positives[r])

    n = len(positives)
    if threads <= 1 or n < 2 * threads:
        work(range(n))
        return out
    step = -(-n // threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [range(s, min(n, s + step)) for s in range(0, n, step)]))
    return out


def positive_ranks_torch(scores, positives: list[np.ndarray]) -> list[np.ndarray]:
    """Ranks for a chunk with torch on the scores' device (used on CUDA).

    Args:
        scores: (r, N) float32 tensor, higher first; left-out items already at -inf.
        positives: r arrays of gallery indices (non-empty).
    """
    import torch

    r, n = scores.shape
    device = scores.device
    lengths = torch.tensor([len(p) for p in positives], device=device)
    width = int(lengths.max())
    padded = np.zeros((r, width), dtype=np.int64)
    for row, p in enumerate(positives):
        padded[row, : len(p)] = p
    pos = torch.from_numpy(padded).to(device)
    valid = torch.arange(width, device=device)[None, :] < lengths[:, None]
    t = torch.gather(scores, 1, pos)
    ordered = torch.sort(scores, dim=1).values
    right = torch.searchsorted(ordered, t, right=True)
    left = torch.searchsorted(ordered, t, right=False)
    ranks = n - right + 1
    tied = set(torch.nonzero((((right - left) > 1) & valid).any(1)).flatten().cpu().numpy().tolist())
    ranks_np = ranks.cpu().numpy()
    out = []
    for row, p in enumerate(positives):
        if row in tied:
            out.append(_ranks_row(scores[row].cpu().numpy(), p))
        else:
            out.append(np.sort(ranks_np[row, : len(p)]))
    return out
