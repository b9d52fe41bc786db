"""Seeded paired percentile bootstrap over queries.

Every gate statistic is a function of the means of a few per-query columns (a CMC hit or an AP per
query, for each evaluation cell involved), with one row per query shared by all columns: pairing
the cells query by query. A resample draws N rows with replacement; the statistic of the resample
is the statistic of its column means; the interval is the pair of percentiles of the resampled
statistics (numpy's linear interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from compat.errors import CompatError

__all__ = ["DEFAULT_RESAMPLES", "Interval", "bootstrap_ci", "min_resamples", "resample_indices"]

DEFAULT_RESAMPLES = 2000
# Resamples expected beyond each end of a percentile interval, at the least (see min_resamples).
_TAIL_RESAMPLES = 2.5
# Rows of resampled indices drawn per batch: bounds memory at about 8 MiB of indices per batch.
_BATCH_ELEMENTS = 1 << 20

# (B, K) column means of B resamples -> (B,) statistic; NaN where the statistic is undefined.
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval.

    ``value`` is NaN when the statistic is undefined on the full sample; ``low`` is -inf (``high``
    +inf) when undefined resamples reach that percentile: undefined resamples count as the worst
    case on both sides, so they can only widen the interval.
    """

    value: float
    low: float
    high: float
    confidence: float
    n: int
    n_resamples: int


def min_resamples(confidence: float) -> int:
    """The fewest resamples the gate accepts for intervals of level ``confidence``: 100 at 95%.

    A percentile interval's ends are order statistics of the resampled values. With B resamples,
    B (1 - confidence) / 2 of them lie beyond each end; below 2.5 the ends are the few most extreme
    draws, and a verdict then turns on the seed rather than on the data. So B >= 5 / (1 - confidence):
    100 at 95%, 500 at 99%.
    """
    return math.ceil(round(2 * _TAIL_RESAMPLES / (1.0 - confidence), 6))


def resample_indices(n: int, n_resamples: int, *, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's row indices: batches of (b, n) int64 draws from ``[0, n)``, ``n_resamples``
    rows in all, from ``numpy.random.default_rng(seed)``. The batches depend on ``n`` only, so a
    given (n, n_resamples, seed) always gives the same resamples."""
    rng = np.random.default_rng(seed)
    batch = max(1, _BATCH_ELEMENTS // max(n, 1))
    for start in range(0, n_resamples, batch):
        yield rng.integers(0, n, size=(min(batch, n_resamples - start), n))


def _percentile(sorted_stats: np.ndarray, q: float) -> float:
    """numpy's linear-interpolation percentile of an ascending array that may start with -inf and
    end with +inf (without the NaN that ``inf - inf`` would give)."""
    h = q * (len(sorted_stats) - 1)
    lo, hi = math.floor(h), math.ceil(h)
    a, b = float(sorted_stats[lo]), float(sorted_stats[hi])
    if not (math.isfinite(a) and math.isfinite(b)):
        return a if not math.isfinite(a) else b
    return a + (h - lo) * (b - a)


def _resampled_means(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(b, K) column means of the resamples ``idx`` (b, n), one column at a time to bound memory."""
    return np.stack([x[:, k][idx].mean(axis=1) for k in range(x.shape[1])], axis=1)


def bootstrap_ci(
    columns: np.ndarray,
    statistic: Statistic,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired percentile bootstrap of ``statistic`` over the rows (queries) of ``columns``.

    Args:
        columns: (N, K) per-query values; row r of every column belongs to the same query.
        statistic: maps (B, K) column means to (B,) values, NaN where undefined.
        n_resamples: B, the number of resamples.
        confidence: the interval's level, e.g. 0.95 for the 2.5th and 97.5th percentiles.
        seed: seed of the resampling (:func:`resample_indices`).

    Returns:
        The statistic of the full sample and its interval.
    """
    x = np.asarray(columns, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise CompatError(f"bootstrap: expected (N, K) per-query values with N >= 1, got shape {x.shape}")
    if n_resamples < 1:
        raise CompatError(f"n_resamples: expected at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise CompatError(f"confidence: expected a level in (0, 1), got {confidence}")
    n = x.shape[0]
    value = float(statistic(x.mean(axis=0, keepdims=True))[0])
    stats = np.concatenate([statistic(_resampled_means(x, idx)) for idx in resample_indices(n, n_resamples, seed=seed)])
    undefined = np.isnan(stats)
    low_side = np.sort(np.where(undefined, -np.inf, stats))
    high_side = np.sort(np.where(undefined, np.inf, stats))
    alpha = 1.0 - confidence
    return Interval(
        value=value,
        low=_percentile(low_side, alpha / 2),
        high=_percentile(high_side, 1 - alpha / 2),
        confidence=confidence,
        n=n,
        n_resamples=n_resamples,
    )
