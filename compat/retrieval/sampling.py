"""Query sampling: a seeded sample of the queries, stratified by label, for galleries where every
query would cost too much (``--query-sample N``).

Each class gets its share of the N queries in proportion to its size (largest remainders, ties to
the larger class, then the lower label); inside a class the queries are drawn without replacement.
The draw depends on the (id, label) pairs and the seed only, never on the row order, so the
versions of a chain, which share their ids, are evaluated on the same queries and the gate can
pair them. How the sample changes the reported numbers and the gate's intervals is in
docs/metrics.md ("Query sampling").
"""

from __future__ import annotations

import numpy as np

from compat.errors import CompatError

__all__ = ["sample_queries"]


def _shares(sizes: np.ndarray, n: int) -> np.ndarray:
    """Largest-remainder allocation of ``n`` over classes of ``sizes`` (each at most its size)."""
    exact = sizes * (n / sizes.sum())
    share = np.floor(exact).astype(np.int64)
    left = n - int(share.sum())
    order = np.lexsort((np.arange(len(sizes)), -sizes, -(exact - share)))
    share[order[:left]] += 1
    return np.minimum(share, sizes)


def sample_queries(labels: np.ndarray, ids: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Row indices (ascending) of a stratified sample of ``n`` queries; all rows when ``n`` >= their number.

    Args:
        labels: (N,) class of each query; ids: (N,) unique ids.
        n: queries to keep.
        seed: the draw's seed.
    """
    if n < 1:
        raise CompatError(f"query_sample: expected a positive number of queries, got {n}")
    total = len(labels)
    if n >= total:
        return np.arange(total)
    by_id = np.argsort(ids, kind="stable")
    lab = labels[by_id]
    _, sizes = np.unique(lab, return_counts=True)
    shares = _shares(sizes, n)
    rng = np.random.default_rng(seed)
    order = np.argsort(lab, kind="stable")  # rows sorted by id within each class
    chosen = []
    for start, size, take in zip(np.cumsum(sizes) - sizes, sizes, shares, strict=True):
        if take:
            pick = rng.choice(int(size), size=int(take), replace=False)
            chosen.append(order[start + pick])
    return np.sort(by_id[np.concatenate(chosen)])
