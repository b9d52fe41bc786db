"""The gate's decision: evaluate the cells a policy needs, pair them query by query, bootstrap each check.

``M(q, g)`` is a metric of the queries of model q against the gallery of model g. The models are
labelled ``old`` (production), ``new`` (the candidate), ``independent`` (a model trained without
compatibility, optional) and ``chain[i]`` (galleries older than production still in the index,
oldest first). Cells are paired by query id: a check uses the queries that have a positive in every
cell it involves, so all its cells are averages over the same queries.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compat.choices import parse_choice
from compat.compatibility.cell import DimPolicy, evaluate_cell
from compat.compatibility.indexed import GalleryIndexes, IndexSetup, evaluate_index_cell
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.gate.bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap_ci, min_resamples
from compat.gate.policy import CheckKind, CheckSpec, GatePolicy, Rule
from compat.gate.preflight import check_inputs, query_sets, with_index
from compat.gate.statistics import INDEPENDENT, NEW, OLD, check_cells, negative_flips
from compat.preprocessing import preprocessing_warnings
from compat.progress import progress as progress_bar
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.retrieval.index import IndexSpec
from compat.retrieval.metrics import RetrievalResult
from compat.retrieval.protocols import match_ids

__all__ = ["CellMean", "CheckResult", "GateVerdict", "run_gate"]

logger = logging.getLogger(__name__)

TOP1 = "top-1"  # the per-query column of flips: is the first result a positive


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class CellMean:
    """``M(query, gallery)``: a metric of model ``query``'s queries against model ``gallery``'s gallery,
    averaged over a check's paired queries."""

    query: str
    gallery: str
    value: float

    @property
    def key(self) -> str:
        """``query/gallery``, as ``gate.json`` names the cell."""
        return f"{self.query}/{self.gallery}"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name, kind, metric, required, threshold: from the policy.
        rule: how the interval decides (``ci_low > threshold``).
        value: the statistic over the paired queries; ``None`` when undefined.
        ci_low, ci_high: the bootstrap interval; ``None`` when undefined resamples reach a bound.
        passed: the verdict of this check (``None`` when skipped).
        n_queries: queries paired across the check's cells.
        cells: M(q, g) of each cell over those queries.
        details: per-gallery drops for ``max_drop``.
        note: why a check was skipped or is undefined.
        index: the index the cells were searched through (``None``: exact search).
        recall: per cell (``query/gallery``), the index's recall@k against the exact top-k.
    """

    name: str
    kind: CheckKind
    metric: str
    required: bool
    threshold: float
    rule: Rule
    value: float | None
    ci_low: float | None
    ci_high: float | None
    passed: bool | None
    n_queries: int = 0
    cells: tuple[CellMean, ...] = ()
    details: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    index: IndexSpec | None = None
    recall: dict[str, float | None] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.passed is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "metric": self.metric,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "threshold": self.threshold,
            "rule": str(self.rule),
            "required": self.required,
            "passed": self.passed,
            "skipped": self.skipped,
            "n_queries": self.n_queries,
            "cells": {c.key: c.value for c in self.cells},
        }
        if self.details:
            out["details"] = self.details
        if self.note:
            out["note"] = self.note
        if self.index is not None:
            out["index"] = {"factory": self.index.factory, "params": self.index.model_dump(exclude={"factory"}),
                            "recall": self.recall}
        return out


@dataclass(frozen=True)
class GateVerdict:
    """Everything the gate decided.

    Attributes:
        passed: every required check passed.
        checks: in the policy's order.
        inputs: label -> description (source, size, meta) of each feature set used.
        protocol, similarity, confidence, n_resamples, seed: how it was measured.
        ranks: torch.distributed processes that evaluated the cells (1 without torchrun).
        query_sample: queries per cell when the cells evaluated a seeded sample, else None.
        warnings: what the reader should know (inputs extracted with different preprocessing).
    """

    passed: bool
    checks: tuple[CheckResult, ...]
    inputs: dict[str, dict[str, Any]]
    protocol: str
    similarity: str
    confidence: float
    n_resamples: int
    seed: int
    ranks: int = 1
    query_sample: int | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``gate.json`` document."""
        return {
            "passed": self.passed,
            "checks": [c.to_json() for c in self.checks],
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "protocol": self.protocol,
            "similarity": self.similarity,
            "inputs": self.inputs,
            "ranks": self.ranks,
            "query_sample": self.query_sample,
            "warnings": list(self.warnings),
        }

    @property
    def failed(self) -> list[CheckResult]:
        """Required checks that did not pass."""
        return [c for c in self.checks if c.required and c.passed is False]


class _Cells:
    """Evaluates (query model, gallery model) cells once each, under one dimension policy.

    ``models`` are the galleries; ``queries`` a model's separate query set, where it has one.
    """

    def __init__(self, models: dict[str, FeatureSet], evaluator: RetrievalEvaluator, dim_policy: DimPolicy,
                 queries: dict[str, FeatureSet] | None = None):
        self.models, self.evaluator, self.dim_policy = models, evaluator, dim_policy
        self.queries = {**models, **(queries or {})}
        self._cache: dict[tuple[str, str, IndexSpec | None], RetrievalResult] = {}
        self._indexes: dict[IndexSpec, GalleryIndexes] = {}
        self.recall: dict[tuple[str, str, IndexSpec], float | None] = {}

    def get(self, q: str, g: str, index: IndexSpec | None = None) -> RetrievalResult:
        """Cell (q, g), searched exactly or through ``g``'s index built with ``index``."""
        key = (q, g, index)
        if key not in self._cache:
            query, gallery = self.queries[q], self.models[g]
            where = f"cell {q} on {g} ({query.source} on {gallery.source})"
            if index is None:
                result = evaluate_cell(self.evaluator, query, gallery, dim_policy=self.dim_policy, where=where)
            else:
                cell = evaluate_index_cell(self.evaluator, query, gallery, self.index_of(g, index), k=index.k,
                                           dim_policy=self.dim_policy, where=where)
                result, self.recall[(q, g, index)] = cell.result, cell.recall
            logger.info("%s on %s: %s", q, g, result.values)
            self._cache[key] = result
        return self._cache[key]

    def index_of(self, g: str, index: IndexSpec):
        """Gallery ``g``'s index for ``index``, built once."""
        indexes = self._indexes.setdefault(index, GalleryIndexes(IndexSetup(index), self.evaluator))
        return indexes.get(g, self.models[g])

    def paired(self, cells: Sequence[tuple[str, str]], metric: str, check: str,
               index: IndexSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, len(cells)) per-query values of ``metric``, one row per query id counted in every cell.

        ``metric`` ``"top-1"`` gives each query's top-1 hit (1 when its first result is a positive),
        which is its CMC@1 value.

        Returns:
            The columns and each column's mean. A mean is taken in its query set's own row order, so
            that when every query of a cell is paired it is exactly the cell's value (``compat eval``'s).
        """
        results = [self.get(q, g, index) for q, g in cells]
        kinds = {self.queries[q].ids.dtype.kind for q, _ in cells}
        if len(kinds) > 1:
            sources = ", ".join(f"{q}: {self.queries[q].source}" for q, _ in dict.fromkeys(cells))
            raise CompatError(
                f"check {check!r}: item ids are integers in some feature sets and strings in others ({sources}); "
                "queries are paired by id"
            )
        counted = [self.queries[q].ids[r.counted] for (q, _), r in zip(cells, results, strict=True)]
        common = functools.reduce(np.intersect1d, counted)
        if len(common) == 0:
            names = ", ".join(f"{q} on {g}" for q, g in cells)
            raise CompatError(
                f"check {check!r}: no query id has a positive in every cell ({names}); the versions must "
                "share their evaluation items (same ids)"
            )
        columns, means = [], []
        for (q, _), result in zip(cells, results, strict=True):
            values = result.hit1.astype(np.float64) if metric == TOP1 else result.per_query[metric]
            rows = match_ids(common, self.queries[q].ids, required=True, where=f"check {check!r}")
            columns.append(values[rows])
            means.append(values[np.sort(rows)].mean())
        return np.stack(columns, axis=1), np.array(means)


def _decide(spec: CheckSpec, ci: Interval) -> bool:
    """The check's rule on its interval; a ratio that is undefined on the whole sample fails."""
    if not spec.kind.bounds_a_loss and not math.isfinite(ci.value):
        return False
    return spec.kind.rule.passes(ci.low, ci.high, spec.threshold)


def _describe(fs: FeatureSet) -> dict[str, Any]:
    return {"source": fs.source, "n": fs.n, "dim": fs.dim, "meta": fs.meta}


def _inputs(models: dict[str, FeatureSet], queries: dict[str, FeatureSet]) -> dict[str, dict[str, Any]]:
    """``gate.json``'s inputs: every gallery by label, then the separate query sets (``old.query``)."""
    return {label: _describe(fs) for label, fs in models.items()} | {
        f"{label}.query": _describe(fs) for label, fs in queries.items()}


def run_gate(
    old: FeatureSet,
    new: FeatureSet,
    policy: GatePolicy,
    *,
    chain: Sequence[FeatureSet] = (),
    independent: FeatureSet | None = None,
    evaluator: RetrievalEvaluator | None = None,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: bool = False,
    old_query: FeatureSet | None = None,
    new_query: FeatureSet | None = None,
    independent_query: FeatureSet | None = None,
    index: IndexSpec | None = None,
) -> GateVerdict:
    """Decide whether ``new`` may replace ``old`` under ``policy``.

    Args:
        old: features of the production model (its gallery is the index).
        new: features of the candidate, over the same items (ids).
        policy: the checks.
        chain: features of older galleries still in the index, oldest first (``max_drop``).
        independent: features of a model trained without compatibility (``update_gain``); without
            it an ``update_gain`` check is skipped, or is an error when required.
        evaluator: configured retrieval (protocol ``loo``, ``query-gallery`` or ``template``,
            similarity, backend); default: leave-one-out, cosine, with the policy's metrics. It must
            compute them all.
        dim_policy: when feature sizes differ: ``error``, ``truncate`` or ``pad``.
        n_resamples: bootstrap resamples per check, at least :func:`compat.gate.bootstrap.min_resamples`
            of the policy's confidence (100 at 95%).
        seed: seed of the bootstrap.
        progress: a bar over the checks on a terminal.
        old_query, new_query, independent_query: separate query sets of those models (required by
            the query-gallery protocol; ``old``, ``new`` and ``independent`` are then their galleries).
        index: the index of every check that names none in the policy and whose metric a returned
            list defines (``cmc@K``, ``map@K``); the others stay exact. Each gallery's index is
            built once per spec, on the gallery's own features.

    Raises:
        CompatError: bad input (sizes, ids, a metric the evaluator does not compute, a required
            check without its input, ``loo`` sets that hold different items, an item whose label
            differs between sets, fewer resamples than the confidence needs, an index that cannot
            be built).
    """
    dims = parse_choice(DimPolicy, dim_policy, "dim_policy")
    _check_resamples(n_resamples, policy.confidence)
    evaluator = evaluator or RetrievalEvaluator(policy.metrics)
    checks = [with_index(spec, index) for spec in policy.checks]
    check_inputs(policy, evaluator, independent, indexed=any(c.index is not None for c in checks))
    older = [f"chain[{i}]" for i in range(len(chain))] + [OLD]
    models = {OLD: old, NEW: new, **dict(zip(older[:-1], chain, strict=True))}
    if independent is not None:
        models[INDEPENDENT] = independent
    queries = query_sets(evaluator, models, old_query, new_query, independent_query)
    cells = _Cells(models, evaluator, dims, queries)
    _build_indexes(cells, checks, older, models)
    results = []
    for spec in progress_bar(checks, desc="gate checks", enabled=progress):
        if spec.kind is CheckKind.UPDATE_GAIN and independent is None:
            results.append(CheckResult(spec.label, spec.kind, spec.metric, spec.required, spec.threshold,
                                       spec.kind.rule, None, None, None, None,
                                       note="skipped: needs --independent features"))
            continue
        results.append(_run_check(spec, cells, older, policy.confidence, n_resamples, seed))
    return GateVerdict(
        passed=all(c.passed for c in results if c.required),
        checks=tuple(results),
        inputs=_inputs(models, queries),
        protocol=evaluator.protocol.value,
        similarity=evaluator.similarity.value,
        confidence=policy.confidence,
        n_resamples=n_resamples,
        seed=seed,
        ranks=evaluator.dist.world_size, query_sample=evaluator.query_sample,
        warnings=_warnings(models, queries),
    )


def _warnings(models: dict[str, FeatureSet], queries: dict[str, FeatureSet]) -> tuple[str, ...]:
    return tuple(preprocessing_warnings([*((k, v.meta) for k, v in models.items()),
                                         *((f"{k}.query", v.meta) for k, v in queries.items())]))


def _check_resamples(n_resamples: int, confidence: float) -> None:
    fewest = min_resamples(confidence)
    if n_resamples < fewest:
        raise CompatError(f"n_resamples: {n_resamples} is too few for {confidence:g} intervals; at least "
                          f"{fewest} (5 / (1 - confidence)), so that each end rests on more than the extreme draws")


def _build_indexes(cells: _Cells, checks: Sequence[CheckSpec], older: Sequence[str],
                   models: dict[str, FeatureSet]) -> None:
    """Build every gallery's index before any check runs, so that a bad index fails first."""
    for spec in checks:
        if spec.index is None:
            continue
        for g in dict.fromkeys(g for _, g in check_cells(spec, older)[0] if g in models):
            cells.index_of(g, spec.index)


def _run_check(
    spec: CheckSpec, cells: _Cells, older: list[str], confidence: float, n_resamples: int, seed: int
) -> CheckResult:
    pairs, statistic = check_cells(spec, older)
    flips = spec.kind is CheckKind.NEGATIVE_FLIPS
    columns, means = cells.paired(pairs, TOP1 if flips else spec.metric, spec.label, spec.index)
    sample = negative_flips(columns) if flips else columns
    ci = bootstrap_ci(sample, statistic, n_resamples=n_resamples, confidence=confidence, seed=seed)
    details: list[dict[str, Any]] = []
    note = ""
    if spec.kind is CheckKind.MAX_DROP:
        for k, g in enumerate(older):
            details.append(
                {"gallery": g, "source": cells.models[g].source, "drop": float(means[2 * k] - means[2 * k + 1])}
            )
    if not math.isfinite(ci.value):
        note = "undefined: the independent model is no better than the production model"
    return CheckResult(
        name=spec.label,
        kind=spec.kind,
        metric=spec.metric,
        required=spec.required,
        threshold=spec.threshold,
        rule=spec.kind.rule,
        value=_finite_or_none(ci.value),
        ci_low=_finite_or_none(ci.low),
        ci_high=_finite_or_none(ci.high),
        passed=_decide(spec, ci),
        n_queries=ci.n,
        cells=tuple(CellMean(q, g, float(m)) for (q, g), m in zip(pairs, means, strict=True)),
        details=details,
        note=note,
        index=spec.index,
        recall={} if spec.index is None else {f"{q}/{g}": cells.recall[(q, g, spec.index)] for q, g in pairs},
    )
