"""Retrieval metrics: names, per-query values and their averages.

Every ranking metric is a function of the 1-based ranks of a query's positives in the ranked
gallery (the query itself left out):

- ``cmc@k``: 1 when the first positive is within rank k;
- ``map``: average precision over the entire ranking, ``mean_j j / rank_j``;
- ``map@r``: mAP at R (R = number of positives), ``(1/R) sum_{j: rank_j <= R} j / rank_j``;
- ``map@K``: truncated AP over the top K only, ``(1/min(R, K)) sum_{j: rank_j <= K} j / rank_j``
  (what a search that returns K items can measure; not the full-ranking mAP);
- ``acc``: pair-verification accuracy (the ``pairs`` protocol only).

Queries with no positive in the gallery are excluded from every average and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from compat.errors import CompatError

__all__ = [
    "Metric",
    "MetricKind",
    "RetrievalResult",
    "average_precision",
    "average_precision_at_r",
    "parse_metric",
    "parse_metrics",
    "recall_at_k",
    "topk_values",
]


class MetricKind(str, Enum):
    CMC = "cmc"
    MAP = "map"
    MAP_AT_R = "map@r"
    MAP_AT_K = "map@k"
    ACC = "acc"


@dataclass(frozen=True)
class Metric:
    kind: MetricKind
    k: int | None = None

    @property
    def name(self) -> str:
        if self.kind is MetricKind.CMC:
            return f"cmc@{self.k}"
        return f"map@{self.k}" if self.kind is MetricKind.MAP_AT_K else self.kind.value

    @property
    def needs_full_ranking(self) -> bool:
        return self.kind in (MetricKind.MAP, MetricKind.MAP_AT_R)

    @property
    def from_top_k(self) -> bool:
        """Defined by the first ``k`` items a search returns (``cmc@K``, ``map@K``)."""
        return self.kind in (MetricKind.CMC, MetricKind.MAP_AT_K)


_CMC = re.compile(r"^(?:cmc|top)@?(\d+)$")
_MAP_AT_K = re.compile(r"^map@(\d+)$")


def parse_metric(name: str) -> Metric:
    """``"cmc@5"`` -> Metric(CMC, 5); ``"map"``, ``"map@r"``, ``"acc"``."""
    text = name.strip().lower()
    match = _CMC.match(text)
    if match and int(match.group(1)) >= 1:
        return Metric(MetricKind.CMC, int(match.group(1)))
    match = _MAP_AT_K.match(text)
    if match and int(match.group(1)) >= 1:
        return Metric(MetricKind.MAP_AT_K, int(match.group(1)))
    for kind in (MetricKind.MAP, MetricKind.MAP_AT_R, MetricKind.ACC):
        if text == kind.value:
            return Metric(kind)
    raise CompatError(f"metric: unknown metric {name!r}; expected cmc@K, map, map@r, map@K (K >= 1) or acc")


def parse_metrics(names: tuple[str, ...] | list[str]) -> tuple[Metric, ...]:
    metrics = tuple(parse_metric(n) for n in names)
    seen: set[str] = set()
    for m in metrics:
        if m.name in seen:
            raise CompatError(f"metric: {m.name!r} is given twice")
        seen.add(m.name)
    if not metrics:
        raise CompatError("metric: at least one metric is needed")
    return metrics


@dataclass(frozen=True)
class RetrievalResult:
    """One evaluation cell: metric name -> value in [0, 1] (``None`` when no query had a positive: the
    cell is undefined, not 0), and how many queries counted.

    ``per_query`` and ``counted`` (ranking protocols only; ``None`` for pair verification) hold the
    values behind the averages, in the order of the queries given: metric name -> (Nq,) float64
    per-query value (CMC hit 0/1, AP, AP@R or reciprocal rank), and the (Nq,) boolean mask of the
    queries with a positive, over which ``values`` are the means. They let a caller pair two cells
    query by query (the gate's bootstrap intervals).

    With query sampling, ``n_queries`` is the sample's size and ``sampled_from`` the number of
    queries it was drawn from; the per-query arrays keep every query's row, and the queries left
    out of the sample are not ``counted``.

    ``top1`` and ``hit1`` (ranking protocols only) are each query's first result, as the CMC ranks it
    (ties to the lower gallery index): its gallery index (-1 when nothing could be retrieved; for
    ``template``, the index of the class in the sorted gallery labels) and whether it is a positive.
    They are what flips compare (:mod:`compat.compatibility.flips`).
    """

    values: dict[str, float | None]
    n_queries: int
    n_without_positive: int
    per_query: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    counted: np.ndarray | None = field(default=None, compare=False, repr=False)
    sampled_from: int | None = None
    top1: np.ndarray | None = field(default=None, compare=False, repr=False)
    hit1: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, metric: str) -> float | None:
        return self.values[metric]


def average_precision(ranks: np.ndarray) -> float:
    """AP of one query from the 1-based ranks of all its positives (any order)."""
    r = np.sort(np.asarray(ranks, dtype=np.float64))
    return float(np.mean(np.arange(1, len(r) + 1) / r))


def average_precision_at_r(ranks: np.ndarray) -> float:
    """AP@R of one query, R = number of positives."""
    r = np.sort(np.asarray(ranks, dtype=np.float64))
    big_r = len(r)
    j = np.arange(1, big_r + 1)
    return float(np.sum(np.where(r <= big_r, j / r, 0.0)) / big_r)


def topk_values(
    neighbours: np.ndarray,
    gallery_labels: np.ndarray,
    query_labels: np.ndarray,
    n_positives: np.ndarray,
    metrics: tuple[Metric, ...],
) -> dict[str, np.ndarray]:
    """Per-query values of the metrics a returned list defines (``cmc@K``, ``map@K``).

    Args:
        neighbours: (Nq, L) gallery positions, best first, -1 for an empty slot; L >= every K.
        gallery_labels, query_labels: (Ng,), (Nq,).
        n_positives: (Nq,) positives of each query in the whole gallery (R); ``map@K`` divides by
            min(R, K), so a list with every possible positive on top scores 1.

    Returns:
        metric name -> (Nq,) float64; other metrics are left out.
    """
    hit = (neighbours >= 0) & (gallery_labels[np.maximum(neighbours, 0)] == query_labels[:, None])
    out: dict[str, np.ndarray] = {}
    for m in metrics:
        if m.kind is MetricKind.CMC:
            out[m.name] = hit[:, : m.k].any(1).astype(np.float64)
        elif m.kind is MetricKind.MAP_AT_K:
            h = hit[:, : m.k].astype(np.float64)
            precision = np.cumsum(h, 1) / np.arange(1, h.shape[1] + 1)
            denom = np.maximum(np.minimum(n_positives, m.k), 1)
            out[m.name] = (precision * h).sum(1) / denom
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per query, the share of its exact top-k that a search returned (any order).

    Args:
        found: (Nq, k) gallery positions returned by an approximate search, -1 for empty slots.
        exact: (Nq, k) the exact top-k positions, -1 where the gallery has fewer items.

    Returns:
        (Nq,) float64 in [0, 1]; NaN for a query whose exact list is empty.
    """
    valid = exact >= 0
    rows = max(1, (1 << 24) // max(1, exact.shape[1] * found.shape[1]))  # bounds the (rows, k, k) comparison
    common = np.concatenate([
        ((exact[s : s + rows, :, None] == found[s : s + rows, None, :]) & valid[s : s + rows, :, None]).any(2).sum(1)
        for s in range(0, len(exact), rows)
    ] or [np.zeros(0, dtype=np.int64)])
    n = valid.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, common / np.maximum(n, 1), np.nan)
