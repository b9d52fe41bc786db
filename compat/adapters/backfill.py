"""Partial backfilling: re-extract part of the gallery with the new model, in a chosen order.

The gallery starts as the stored old features (upgraded by ``F`` when there is one) and item by
item gets the new model's features instead (mapped by ``B`` when there is an adapter). The
backfill curve is the retrieval metric ``M(beta)`` of the new queries against the gallery with a
fraction ``beta`` of its items re-extracted; its area ``integral_0^1 M(beta) dbeta`` (trapezoid
rule over the grid) summarises an ordering: higher is better.

Orderings (which items to re-extract first), all computed from what is indexed before any
backfilling, so that they can be decided without running the new model:

- ``random``: a seeded permutation (the baseline).
- ``farthest``: farthest from the mean of its class first (cosine distance to the normalised class
  mean of the indexed features): the items the old space places worst.
- ``uncertainty``: least certain first, the old model's uncertainty in the manner of FastFill:
  entropy of a softmax over the cosine similarities to the class means (temperature 0.05).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compat.adapters.adapter import normalize_rows
from compat.adapters.config import Ordering
from compat.choices import parse_choice
from compat.errors import CompatError
from compat.progress import progress as progress_bar
from compat.retrieval.evaluator import RetrievalEvaluator

__all__ = [
    "BackfillCurve",
    "Ordering",
    "backfill_curve",
    "backfill_order",
    "beta_grid",
    "mix_gallery",
    "parse_ordering",
    "trapezoid_area",
]

UNCERTAINTY_TEMPERATURE = 0.05


def parse_ordering(value: Ordering | str) -> Ordering:
    return parse_choice(Ordering, value, "backfill ordering")


def _class_means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised class means (C, d) of normalised rows, and each row's class index into them."""
    classes, index = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), x.shape[1]), dtype=np.float64)
    np.add.at(sums, index, x)
    return normalize_rows(sums.astype(np.float32)), index


def backfill_order(
    ordering: Ordering | str, gallery: np.ndarray, labels: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """The order in which to re-extract gallery items.

    Args:
        ordering: ``random``, ``farthest`` or ``uncertainty``.
        gallery: (N, d) features as indexed before backfilling.
        labels: (N,) their classes.
        seed: of the ``random`` ordering.

    Returns:
        (N,) permutation of ``0..N-1``; its first items are re-extracted first. Ties go to the
        lower index.
    """
    ordering = parse_ordering(ordering)
    n = len(gallery)
    if ordering is Ordering.RANDOM:
        return np.random.default_rng(seed).permutation(n)
    x = normalize_rows(gallery)
    means, index = _class_means(x, labels)
    if ordering is Ordering.FARTHEST:
        distance = 1.0 - np.einsum("nd,nd->n", x, means[index], dtype=np.float64)
        return np.argsort(-distance, kind="stable")
    logits = (x @ means.T).astype(np.float64) / UNCERTAINTY_TEMPERATURE
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
    return np.argsort(-entropy, kind="stable")


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


def trapezoid_area(betas: Sequence[float], values: Sequence[float]) -> float:
    """``integral M(beta) dbeta`` by the trapezoid rule."""
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
    values: dict[str, list[float]] = {m: [] for m in evaluator.metric_names}
    for beta in progress_bar(betas, desc=f"backfill {ordering}", enabled=evaluator.progress):
        if not 0.0 <= beta <= 1.0:
            raise CompatError(f"backfill grid: fractions must lie in [0, 1], got {beta}")
        k = round(float(beta) * n)
        if ends is not None and k in (0, n):
            known = ends[0] if k == 0 else ends[1]
        else:
            gallery = mix_gallery(before, after, order[:k])
            known = evaluator.evaluate_arrays(queries, query_labels, query_ids, gallery, gallery_labels, gallery_ids,
                                              where=f"backfill {ordering} beta={beta:.2f}", query_groups=query_groups,
                                              gallery_groups=gallery_groups).values
        for m, curve in values.items():
            curve.append(known[m])
    area = {m: trapezoid_area(betas, v) for m, v in values.items()}
    return BackfillCurve(ordering, tuple(float(b) for b in betas), values, area)
