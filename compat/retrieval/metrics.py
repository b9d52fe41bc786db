"""Retrieval metrics: names, per-query values and their averages.

Every ranking metric is a function of the 1-based ranks of a query's positives in the ranked
gallery (the query itself left out):

- ``cmc@k``: 1 when the first positive is within rank k;
- ``map``: average precision over the entire ranking, ``mean_j j / rank_j``;
- ``map@r``: mAP at R (R = number of positives), ``(1/R) sum_{j: rank_j <= R} j / rank_j``;
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
]


class MetricKind(str, Enum):
    CMC = "cmc"
    MAP = "map"
    MAP_AT_R = "map@r"
    ACC = "acc"


@dataclass(frozen=True)
class Metric:
    kind: MetricKind
    k: int | None = None

    @property
    def name(self) -> str:
        return f"cmc@{self.k}" if self.kind is MetricKind.CMC else self.kind.value

    @property
    def needs_full_ranking(self) -> bool:
        return self.kind in (MetricKind.MAP, MetricKind.MAP_AT_R)


_CMC = re.compile(r"^(?:cmc|top)@?(\d+)$")


def parse_metric(name: str) -> Metric:
    """``"cmc@5"`` -> Metric(CMC, 5); ``"map"``, ``"map@r"``, ``"acc"``."""
    text = name.strip().lower()
    match = _CMC.match(text)
    if match and int(match.group(1)) >= 1:
        return Metric(MetricKind.CMC, int(match.group(1)))
    for kind in (MetricKind.MAP, MetricKind.MAP_AT_R, MetricKind.ACC):
        if text == kind.value:
            return Metric(kind)
    raise CompatError(f"metric: unknown metric {name!r}; expected cmc@K (K >= 1), map, map@r or acc")


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
    """One evaluation cell: metric name -> value in [0, 1], and how many queries counted.

    ``per_query`` and ``counted`` (ranking protocols only; ``None`` for pair verification) hold the
    values behind the averages, in the order of the queries given: metric name -> (Nq,) float64
    per-query value (CMC hit 0/1, AP, AP@R or reciprocal rank), and the (Nq,) boolean mask of the
    queries with a positive, over which ``values`` are the means. They let a caller pair two cells
    query by query (the gate's bootstrap intervals).

    With query sampling, ``n_queries`` is the sample's size and ``sampled_from`` the number of
    queries it was drawn from; the per-query arrays keep every query's row, and the queries left
    out of the sample are not ``counted``.
    """

    values: dict[str, float]
    n_queries: int
    n_without_positive: int
    per_query: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    counted: np.ndarray | None = field(default=None, compare=False, repr=False)
    sampled_from: int | None = None

    def __getitem__(self, metric: str) -> float:
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
