"""Plan a partial backfill: which items to re-extract first, how many, and what it buys.

:func:`plan_backfill` orders the whole stored gallery (streamed, :mod:`compat.adapters.plan_order`)
and predicts the metric against the fraction re-extracted **on an evaluation sample**: a few
thousand gallery items whose old features are stored and whose new features are extracted for the
plan. At fraction ``beta`` the plan re-extracts its first ``round(beta * N)`` items; the sample
items among them (those whose position in the plan is below that count) are replaced by their new
features, the rest keep their stored ones, and the sample's new queries search that mixed sample
gallery exactly as :func:`compat.adapters.backfill.backfill_curve` searches a mixed gallery. When
the sample is the whole gallery, the predicted curve is the evaluator's backfill curve.

Each point gets a bootstrap band over the queries (:func:`compat.gate.bootstrap.bootstrap_ci`);
a budget gets its own point; a target gets the smallest grid point whose value reaches it; the
curve's flattening point is defined in :func:`compat.adapters.plan_goals.flattening_index`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compat.adapters.adapter import Adapter
from compat.adapters.backfill import backfill_sweep, beta_grid, matched_rows
from compat.adapters.config import DEFAULT_BACKFILL_POINTS, Ordering
from compat.adapters.evaluate import AdapterCell
from compat.adapters.orderings import parse_ordering
from compat.adapters.plan_goals import (
    DEFAULT_FLAT_TOLERANCE,
    Budget,
    Target,
    flattening_index,
    target_index,
)
from compat.adapters.plan_order import GalleryMap, PlanOrder, write_plan_order
from compat.choices import parse_choice
from compat.compatibility.cell import DimPolicy, apply_dim_policy
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.gate.bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap_ci
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
from compat.retrieval.knn import DEFAULT_MEMORY_BUDGET, parse_memory_budget
from compat.retrieval.metrics import RetrievalResult
from compat.stored import StoredFeatures, open_stored

__all__ = ["BackfillPlan", "PlanPoint", "PlanSettings", "plan_backfill"]


@dataclass(frozen=True)
class PlanSettings:
    """How to plan.

    Args:
        ordering: ``random``, ``farthest`` or ``uncertainty``.
        budget: how much may be re-extracted (a share or a count), or None.
        target: the metric to reach, or None.
        points: grid of fractions from 0 to 1.
        seed: of the ``random`` ordering; the bootstrap's seed too.
        n_resamples, confidence: of the bootstrap band.
        flat_tolerance: remaining gain below which the curve counts as flat.
        dim_policy: raw features of different sizes (no adapter).
        forward: with an adapter that has ``F``, the items not yet re-extracted are ``F(old)``
            (False: they stay as stored).
        memory_budget: bytes (or ``"1GiB"``) for the streamed order.
    """

    ordering: Ordering | str
    budget: Budget | None = None
    target: Target | None = None
    points: int = DEFAULT_BACKFILL_POINTS
    seed: int = 0
    n_resamples: int = DEFAULT_RESAMPLES
    confidence: float = 0.95
    flat_tolerance: float = DEFAULT_FLAT_TOLERANCE
    dim_policy: DimPolicy | str = DimPolicy.ERROR
    forward: bool = True
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET

    def __post_init__(self) -> None:
        object.__setattr__(self, "ordering", parse_ordering(self.ordering))
        object.__setattr__(self, "dim_policy", parse_choice(DimPolicy, self.dim_policy, "dim_policy"))
        object.__setattr__(self, "memory_budget", parse_memory_budget(self.memory_budget))
        beta_grid(self.points)  # at least 2 points
        if not 0.5 < self.confidence < 1:
            raise CompatError(f"confidence: expected a level in (0.5, 1), got {self.confidence}")
        if self.n_resamples < 1:
            raise CompatError(f"n_resamples: expected at least 1, got {self.n_resamples}")
        flattening_index([0.0], self.flat_tolerance)  # a tolerance >= 0


@dataclass(frozen=True)
class PlanPoint:
    """The prediction when the first ``items`` of the plan are re-extracted.

    Attributes:
        fraction: ``items`` over the gallery size.
        items: gallery items re-extracted.
        sample_items: sample items among them.
        values: metric -> the predicted value and its bootstrap band.
    """

    fraction: float
    items: int
    sample_items: int
    values: dict[str, Interval]

    def to_json(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "items": self.items, "sample_items": self.sample_items,
                "values": {m: {"value": i.value, "ci_low": i.low, "ci_high": i.high} for m, i in self.values.items()}}


@dataclass(frozen=True)
class BackfillPlan:
    """A backfill plan and its prediction (see the module docstring); ``plan.csv`` holds the order."""

    gallery: str
    gallery_size: int
    gallery_meta: dict[str, Any]
    sample_sources: tuple[str, str]
    sample_size: int
    queries: int
    adapter: str | None
    start: AdapterCell
    end: AdapterCell
    settings: PlanSettings
    metrics: tuple[str, ...]
    curve: tuple[PlanPoint, ...]
    budget: PlanPoint | None
    target: PlanPoint | None
    target_confident: PlanPoint | None
    flattening: PlanPoint
    flat_metric: str
    runs: int
    max_difference: float | None
    adapter_path: str | None = field(default=None)

    @property
    def reachable(self) -> bool | None:
        """Whether the target is reached on the grid (None without a target)."""
        return None if self.settings.target is None else self.target is not None

    @property
    def re_extract(self) -> int | None:
        """Items to re-extract: the budget's, else the target's (None when unreachable or neither)."""
        point = self.budget or self.target
        return None if point is None else point.items


def _raw_maps(policy: DimPolicy, old_dim: int, new_dim: int) -> tuple[GalleryMap, GalleryMap]:
    """Stored and new features brought to one size as the raw backfill curve does (the policy alone)."""
    where = f"backfill plan: stored {old_dim}-d and new {new_dim}-d features"
    apply_dim_policy(np.zeros((1, old_dim), np.float32), np.zeros((1, new_dim), np.float32), policy, where=where)

    def fit(other_dim: int) -> GalleryMap:
        return lambda x: apply_dim_policy(x, np.empty((0, other_dim), np.float32), policy, where=where)[0]

    return fit(new_dim), fit(old_dim)


@dataclass(frozen=True)
class _Deployment:
    """What the gallery holds before re-extraction (``gallery``: stored -> searched features), what
    re-extracted items and queries are (``new``: new -> searched features), and the cells at both ends."""

    gallery: GalleryMap
    new: GalleryMap
    start: AdapterCell
    end: AdapterCell


def _deployment(settings: PlanSettings, adapter: Adapter | None, old_dim: int, new_dim: int) -> _Deployment:
    if adapter is None:
        return _Deployment(*_raw_maps(settings.dim_policy, old_dim, new_dim), AdapterCell.NEW_OLD, AdapterCell.NEW_NEW)
    adapter.check_dims(new_dim, old_dim, where="--adapter")
    if settings.forward and adapter.has_forward:
        return _Deployment(adapter.upgrade, adapter.to_old, AdapterCell.B_F, AdapterCell.B_B)
    return _Deployment(adapter.old_space, adapter.to_old, AdapterCell.B_OLD, AdapterCell.B_B)


def _point(result: RetrievalResult, fraction: float, items: int, sample_items: int, settings: PlanSettings) -> PlanPoint:
    counted = result.counted
    values = {}
    for m, per_query in result.per_query.items():
        column = per_query[counted][:, None]
        if not len(column):
            raise CompatError("backfill plan: no query of the sample has a positive in the sample gallery")
        values[m] = bootstrap_ci(column, lambda means: means[:, 0], n_resamples=settings.n_resamples,
                                 confidence=settings.confidence, seed=settings.seed)
    return PlanPoint(fraction, items, sample_items, values)


def _predict(evaluator: RetrievalEvaluator, old: FeatureSet, new: FeatureSet, positions: np.ndarray, n: int,
             deployment: _Deployment, settings: PlanSettings) -> tuple[list[PlanPoint], PlanPoint | None]:
    """The grid's points and the budget's point, on the sample."""
    aligned = np.asarray(new.features[matched_rows(old, new, "backfill plan sample")])
    queries = deployment.new(aligned)
    before = deployment.gallery(np.asarray(old.features))
    fractions = [float(b) for b in beta_grid(settings.points)]
    counts = [round(b * n) for b in fractions]
    if settings.budget is not None:
        counts.append(settings.budget.items(n, where=f"the gallery ({n} items)"))
        fractions.append(counts[-1] / n)
    remaining = iter(counts)  # the sweep asks for each fraction once, in order
    cells = backfill_sweep(evaluator, queries=queries, query_labels=old.labels, query_ids=old.ids, before=before,
                           after=queries, gallery_labels=old.labels, gallery_ids=old.ids,
                           backfilled=lambda beta: positions < next(remaining), betas=fractions, desc="backfill plan")
    points = [_point(cell, f, k, int(np.count_nonzero(positions < k)), settings)
              for cell, f, k in zip(cells, fractions, counts, strict=True)]
    budget = points.pop() if settings.budget is not None else None
    return points, budget


def plan_backfill(
    gallery: StoredFeatures | FeatureSet | str | os.PathLike[str],
    sample_old: FeatureSet,
    sample_new: FeatureSet,
    settings: PlanSettings,
    *,
    evaluator: RetrievalEvaluator,
    csv_path: str | os.PathLike[str],
    adapter: Adapter | None = None,
    adapter_path: str | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> BackfillPlan:
    """Write the whole gallery's order to ``csv_path`` and predict the metric on the sample.

    Args:
        gallery: the stored gallery (old features): opened, in memory, or a path (a ``.npy``
            directory streams).
        sample_old, sample_new: the evaluation sample's old and new features; every item of
            ``sample_old`` must be in the gallery and in ``sample_new`` (matched by id).
        settings: ordering, budget or target, grid, bootstrap.
        evaluator: its metrics are the prediction's (a target's metric must be one); ``loo`` or
            ``template``.
        csv_path: where ``plan.csv`` goes.
        adapter: ``B`` maps the new features to the stored space (and ``F`` the stored items, with
            ``settings.forward``); ``adapter_path`` is recorded.
        tmp_dir: for the sorted runs (default: next to ``csv_path``).

    Raises:
        CompatError: bad input (see :func:`compat.adapters.plan_order.write_plan_order`), a
            target's metric the evaluator does not compute.
    """
    if isinstance(gallery, FeatureSet):
        gallery = StoredFeatures.in_memory(gallery)
    stored = gallery if isinstance(gallery, StoredFeatures) else open_stored(gallery)
    _check_evaluator(evaluator, settings)
    if settings.budget is not None:
        settings.budget.items(stored.n, where=f"the gallery ({stored.n} items)")
    deployment = _deployment(settings, adapter, stored.dim, sample_new.dim)
    if sample_old.dim != stored.dim:
        raise CompatError(f"{sample_old.source}: the sample's old features are {sample_old.dim}-d but the gallery "
                          f"{stored.source} holds {stored.dim}-d features")
    work = Path(tmp_dir) if tmp_dir is not None else Path(csv_path).parent
    with tempfile.TemporaryDirectory(prefix=".compat-plan-", dir=work) as tmp:
        order = write_plan_order(stored, settings.ordering, Path(csv_path), sample=sample_old, gallery_map=deployment.gallery,
                                 seed=settings.seed, tmp_dir=Path(tmp), memory_budget=settings.memory_budget,
                                 progress=evaluator.progress)
    points, budget = _predict(evaluator, sample_old, sample_new, order.positions, stored.n, deployment, settings)
    return _assemble(stored, (sample_old, sample_new), settings, evaluator, points, budget, deployment, order,
                     adapter, adapter_path)


def _check_evaluator(evaluator: RetrievalEvaluator, settings: PlanSettings) -> None:
    if evaluator.protocol is Protocol.PAIRS:
        raise CompatError("protocol: a backfill plan needs per-query values: loo or template")
    if settings.target is not None and settings.target.metric not in evaluator.metric_names:
        raise CompatError(f"--target {settings.target.text}: the evaluator does not compute {settings.target.metric} "
                          f"(it computes {', '.join(evaluator.metric_names)})")


def _assemble(stored: StoredFeatures, sample: tuple[FeatureSet, FeatureSet], settings: PlanSettings,
              evaluator: RetrievalEvaluator, points: list[PlanPoint], budget: PlanPoint | None,
              deployment: _Deployment, order: PlanOrder, adapter: Adapter | None,
              adapter_path: str | None) -> BackfillPlan:
    """The plan: the target's and the flattening's points found on the predicted curve."""
    metric = settings.target.metric if settings.target is not None else evaluator.metric_names[0]
    values = [p.values[metric].value for p in points]
    lows = [p.values[metric].low for p in points]
    target = confident = None
    if settings.target is not None:
        k, c = target_index(values, settings.target), target_index(lows, settings.target)
        target = points[k] if k is not None else None
        confident = points[c] if c is not None else None
    flat = points[flattening_index(values, settings.flat_tolerance)]
    return BackfillPlan(
        gallery=stored.source, gallery_size=stored.n, gallery_meta=dict(stored.meta),
        sample_sources=(sample[0].source, sample[1].source), sample_size=sample[0].n,
        queries=int(points[0].values[metric].n), adapter=None if adapter is None else adapter.info.label,
        start=deployment.start, end=deployment.end, settings=settings, metrics=evaluator.metric_names, curve=tuple(points),
        budget=budget, target=target, target_confident=confident, flattening=flat, flat_metric=metric,
        runs=order.runs, max_difference=order.max_difference, adapter_path=adapter_path,
    )

