"""Partial backfilling: re-extract part of the gallery with the new model, in a chosen order.

The gallery starts as the stored old features (upgraded by ``F`` when there is one) and item by
item gets the new model's features instead (mapped by ``B`` when there is an adapter). The
backfill curve is the retrieval metric ``M(beta)`` of the new queries against the gallery with a
fraction ``beta`` of its items re-extracted; its area ``integral_0^1 M(beta) dbeta`` (trapezoid
rule over the grid) summarises an ordering: higher is better.

Orderings (which items to re-extract first) are in :mod:`compat.adapters.orderings`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compat.adapters.config import Ordering
from compat.adapters.orderings import backfill_order, parse_ordering
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.progress import progress as progress_bar
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.retrieval.metrics import RetrievalResult

__all__ = [
    "BackfillCurve",
    "Ordering",
    "backfill_curve",
    "backfill_order",
    "backfill_sweep",
    "beta_grid",
    "matched_rows",
    "mix_gallery",
    "parse_ordering",
    "trapezoid_area",
]


def beta_grid(points: int = 11) -> np.ndarray:
    """``points`` evenly spaced fractions from 0 to 1 (both included)."""
    if points < 2:
        raise CompatError(f"backfill grid: need at least 2 points (0 and 1), got {points}")
    return np.linspace(0.0, 1.0, points)


def mix_gallery(before: np.ndarray, after: np.ndarray, backfilled: np.ndarray) -> np.ndarray:
    """A mixed gallery: rows ``backfilled`` (indices or a boolean mask) from ``after``, the rest from ``before``.

    Args:
        before: (N, d) features as stored (old, or old upgraded by F).
        after: (N, d) re-extracted features of the same items, same row order.
        backfilled: which rows have been re-extracted.
    """
    if before.shape != after.shape:
        raise CompatError(f"mixed gallery: stored {before.shape} and re-extracted {after.shape} features differ in shape")
    out = np.array(before, dtype=np.float32, copy=True)
    out[backfilled] = after[backfilled]
    return out


def trapezoid_area(betas: Sequence[float], values: Sequence[float | None]) -> float | None:
    """``integral M(beta) dbeta`` by the trapezoid rule; ``None`` when a point is undefined."""
    if any(v is None for v in values):
        return None
    b, v = np.asarray(betas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return float(np.sum((b[1:] - b[:-1]) * (v[1:] + v[:-1]) / 2.0))


@dataclass(frozen=True)
class BackfillCurve:
    """``M(beta)`` of one ordering, for every metric of the evaluator.

    Attributes:
        ordering: its name.
        betas: the grid, from 0 to 1.
        values: metric -> M at each beta.
        area: metric -> trapezoid area under the curve.
    """

    ordering: str
    betas: tuple[float, ...]
    values: dict[str, list[float]]
    area: dict[str, float]

    def to_json(self) -> dict:
        return {"curve": self.values, "area": self.area}


def matched_rows(old: FeatureSet, new: FeatureSet, where: str) -> np.ndarray:
    """Rows of ``new`` holding each item of ``old`` (by id): backfilling needs them all."""
    order = np.argsort(new.ids, kind="stable")
    pos = np.searchsorted(new.ids[order], old.ids)
    pos = np.minimum(pos, len(order) - 1)
    rows = order[pos]
    missing = np.flatnonzero(new.ids[rows] != old.ids)
    if len(missing):
        raise CompatError(f"{where}: the new features ({new.source}) lack gallery item "
                          f"{old.ids[missing[0]].item()!r} of {old.source}; backfilling needs every item")
    return rows


# beta -> the rows of the gallery re-extracted at that fraction (indices or a boolean mask).
Backfilled = Callable[[float], np.ndarray]


def backfill_sweep(
    evaluator: RetrievalEvaluator,
    *,
    queries: np.ndarray,
    query_labels: np.ndarray,
    query_ids: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_ids: np.ndarray,
    backfilled: Backfilled,
    betas: Sequence[float],
    desc: str = "backfill",
    known: Callable[[float], dict[str, float] | None] = lambda beta: None,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
) -> list[RetrievalResult | dict[str, float]]:
    """The queries against the gallery with ``backfilled(beta)`` re-extracted, at every ``beta``.

    Args:
        evaluator: the configured evaluator.
        queries, query_labels, query_ids: (Nq, d), (Nq,), (Nq,): the new model's queries.
        before, after: (N, d) gallery features before and after re-extraction, same row order.
        gallery_labels, gallery_ids: (N,).
        backfilled: which rows are re-extracted at a fraction.
        betas: fractions in [0, 1].
        desc: names the sweep in messages and the progress bar.
        known: the metrics at a fraction when already measured (else None: evaluated).
        query_groups, gallery_groups: (Nq,), (N,) groups, for the query-gallery protocol's exclusion.

    Returns:
        Per beta, the cell (a :class:`RetrievalResult` with per-query values) or the known metrics.
    """
    out: list[RetrievalResult | dict[str, float]] = []
    for beta in progress_bar(betas, desc=desc, enabled=evaluator.progress):
        if not 0.0 <= beta <= 1.0:
            raise CompatError(f"backfill grid: fractions must lie in [0, 1], got {beta}")
        values = known(float(beta))
        if values is None:
            gallery = mix_gallery(before, after, backfilled(float(beta)))
            values = evaluator.evaluate_arrays(queries, query_labels, query_ids, gallery, gallery_labels, gallery_ids,
                                               where=f"{desc} beta={beta:.2f}", query_groups=query_groups,
                                               gallery_groups=gallery_groups)
        out.append(values)
    return out


def backfill_curve(
    evaluator: RetrievalEvaluator,
    *,
    queries: np.ndarray,
    query_labels: np.ndarray,
    query_ids: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_ids: np.ndarray,
    order: np.ndarray,
    ordering: str,
    betas: Sequence[float],
    ends: tuple[dict[str, float], dict[str, float]] | None = None,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
) -> BackfillCurve:
    """Evaluate the queries against the gallery backfilled in ``order`` at every ``beta``.

    At ``beta`` the first ``round(beta * N)`` items of ``order`` come from ``after``.

    Args:
        evaluator: the configured evaluator (its metrics are the curve's).
        queries, query_labels, query_ids: (Nq, d), (Nq,), (Nq,): the new model's queries.
        before, after: (N, d) gallery features before and after re-extraction, same row order.
        gallery_labels, gallery_ids: (N,).
        order: (N,) permutation from :func:`backfill_order`.
        ordering: name recorded in the result.
        betas: fractions in [0, 1].
        ends: the metrics of the whole ``before`` and whole ``after`` galleries, when already
            known (they do not depend on the ordering): used at beta = 0 and beta = 1.
        query_groups, gallery_groups: (Nq,), (N,) groups, for the query-gallery protocol's exclusion.
    """
    n = len(before)

    def known(beta: float) -> dict[str, float] | None:
        k = round(beta * n)
        return None if ends is None or k not in (0, n) else ends[0] if k == 0 else ends[1]

    cells = backfill_sweep(evaluator, queries=queries, query_labels=query_labels, query_ids=query_ids, before=before,
                           after=after, gallery_labels=gallery_labels, gallery_ids=gallery_ids,
                           backfilled=lambda beta: order[: round(beta * n)], betas=betas,
                           desc=f"backfill {ordering}", known=known, query_groups=query_groups,
                           gallery_groups=gallery_groups)
    values = {m: [dict(c.values if isinstance(c, RetrievalResult) else c)[m] for c in cells]
              for m in evaluator.metric_names}
    area = {m: trapezoid_area(betas, v) for m, v in values.items()}
    return BackfillCurve(ordering, tuple(float(b) for b in betas), values, area)
