"""Two runs on the same queries: the difference of every shared cell, with a paired bootstrap interval.

Each cell is evaluated again from the runs' feature sets through
:func:`compat.compatibility.cell.evaluate_cell` (the values must equal the runs' reports), keeping
per-query values. The two runs' queries of a cell are matched by item id and must be the same
items; the queries counted in both cells (those with a positive in each gallery) are paired, and
:func:`compat.gate.bootstrap.bootstrap_ci` resamples them to give the interval of ``A - B``, as the
gate does for its checks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compat.comparison.runs import Run, load_run
from compat.compatibility.cell import evaluate_cell
from compat.errors import CompatError
from compat.features import FeatureSet, load_features
from compat.gate.bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap_ci
from compat.progress import progress as progress_bar
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
from compat.retrieval.knn import DEFAULT_MEMORY_BUDGET
from compat.retrieval.metrics import RetrievalResult, parse_metric
from compat.retrieval.protocols import match_ids

__all__ = ["CellDifference", "RunComparison", "compare_runs", "paired_difference"]

logger = logging.getLogger(__name__)

# A report's value and the value evaluated again from its feature sets must agree to this.
_REPORT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CellDifference:
    """One metric of one cell in both runs: ``A - B`` over the queries paired by id.

    Attributes:
        cell_a, cell_b: (query version, gallery version) in run A and in run B.
        value_a, value_b: the metric over the paired queries (the cell's value when every query is paired).
        difference: ``value_a - value_b`` and its bootstrap interval.
    """

    metric: str
    cell_a: tuple[str, str]
    cell_b: tuple[str, str]
    value_a: float
    value_b: float
    difference: Interval

    @property
    def n_queries(self) -> int:
        return self.difference.n

    @property
    def verdict(self) -> str:
        """``A`` or ``B`` when the interval lies above or below 0, else ``tie``."""
        if self.difference.low > 0:
            return "A"
        if self.difference.high < 0:
            return "B"
        return "tie"


@dataclass(frozen=True)
class RunComparison:
    """Every shared cell of two runs, per metric (``cells`` in metric, then cell order)."""

    run_a: Run
    run_b: Run
    versions: tuple[tuple[str, str], ...]
    metrics: tuple[str, ...]
    cells: tuple[CellDifference, ...]
    confidence: float
    n_resamples: int
    seed: int


def paired_difference(a: RetrievalResult, ids_a: np.ndarray, b: RetrievalResult, ids_b: np.ndarray, metric: str, *,
                      n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                      where: str = "cell") -> tuple[float, float, Interval]:
    """Means of ``metric`` in two evaluations of the same queries, and the interval of their difference.

    Args:
        a, b: the cell evaluated in run A and in run B (with per-query values).
        ids_a, ids_b: the query ids of each, in their row order; they must be the same items.

    Returns:
        (mean in A, mean in B, A - B with its interval), over the ids counted in both.
    """
    if ids_a.dtype.kind != ids_b.dtype.kind or len(ids_a) != len(ids_b) or not np.array_equal(
            np.sort(ids_a), np.sort(ids_b)):
        raise CompatError(f"{where}: the two runs' queries are not the same items (query ids differ); "
                          "runs are compared on the same evaluation images")
    if a.per_query is None or b.per_query is None:
        raise CompatError(f"{where}: no per-query values (the pairs protocol cannot be paired by query)")
    common = np.intersect1d(ids_a[a.counted], ids_b[b.counted])
    if len(common) == 0:
        raise CompatError(f"{where}: no query has a positive in both runs' galleries")
    rows_a = match_ids(common, ids_a, required=True, where=where)
    rows_b = match_ids(common, ids_b, required=True, where=where)
    columns = np.stack([a.per_query[metric][rows_a], b.per_query[metric][rows_b]], axis=1)
    interval = bootstrap_ci(columns, _difference, n_resamples=n_resamples, confidence=confidence, seed=seed)
    # Means in each query set's own order, so that a fully paired cell gives exactly the report's value.
    return float(a.per_query[metric][np.sort(rows_a)].mean()), float(b.per_query[metric][np.sort(rows_b)].mean()), interval


def _difference(means: np.ndarray) -> np.ndarray:
    return means[:, 0] - means[:, 1]


def compare_runs(
    run_a: Run | str,
    run_b: Run | str,
    *,
    metrics: Sequence[str] | None = None,
    versions: Mapping[str, str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    progress: bool = True,
) -> RunComparison:
    """Compare two runs evaluated on the same queries, cell by cell.

    Args:
        run_a, run_b: :class:`Run` objects or paths (:func:`compat.comparison.load_run`).
        metrics: the metrics to compare (default: all; both runs must report the same ones).
        versions: run A's version -> run B's version; only these versions are compared (default:
            the versions with the same name in both).
        n_resamples, confidence, seed: the paired bootstrap (:func:`compat.gate.bootstrap.bootstrap_ci`).
        backend, device, memory_budget: how cells are searched (never the values).
        progress: a bar over the cells, on a terminal.

    Raises:
        CompatError: another protocol or similarity, metrics one run lacks, no shared cell, query
            ids that differ, or feature sets whose values differ from their run's report.
    """
    a = run_a if isinstance(run_a, Run) else load_run(run_a)
    b = run_b if isinstance(run_b, Run) else load_run(run_b)
    chosen = _metrics(a, b, metrics)
    pairs = _version_pairs(a, b, versions)
    evaluator = RetrievalEvaluator(chosen, protocol=a.protocol, similarity=a.similarity, backend=backend,
                                   device=device, memory_budget=memory_budget, progress=False)
    cells = [((qa, ga), (qb, gb)) for i, (qa, qb) in enumerate(pairs) for ga, gb in pairs[: i + 1]]
    features: dict[tuple[int, str], FeatureSet] = {}
    found: list[CellDifference] = []
    for cell_a, cell_b in progress_bar(cells, desc="compare", enabled=progress):
        ra = _evaluate(a, cell_a, evaluator, features, 0)
        rb = _evaluate(b, cell_b, evaluator, features, 1)
        ids_a, ids_b = features[(0, cell_a[0])].ids, features[(1, cell_b[0])].ids
        for metric in chosen:
            where = f"{metric} of cell {'/'.join(cell_a)} (A: {a.source}) and {'/'.join(cell_b)} (B: {b.source})"
            va, vb, interval = paired_difference(ra, ids_a, rb, ids_b, metric, n_resamples=n_resamples,
                                                 confidence=confidence, seed=seed, where=where)
            found.append(CellDifference(metric, cell_a, cell_b, va, vb, interval))
    order = {m: k for k, m in enumerate(chosen)}
    found.sort(key=lambda c: order[c.metric])  # stable: cells keep their order within a metric
    return RunComparison(a, b, tuple(pairs), chosen, tuple(found), confidence, n_resamples, seed)


def _metrics(a: Run, b: Run, asked: Sequence[str] | None) -> tuple[str, ...]:
    if a.protocol is not b.protocol:
        raise CompatError(f"runs: {a.source} was evaluated with protocol {a.protocol.value}, {b.source} with "
                          f"{b.protocol.value}; compare runs evaluated the same way")
    if a.protocol is Protocol.PAIRS:
        raise CompatError(f"runs: protocol pairs has no per-query values to pair ({a.source})")
    if a.protocol is Protocol.QUERY_GALLERY:
        raise CompatError(f"runs: protocol query-gallery is not supported ({a.source}): a run names one feature "
                          "set per version, and its query sets are not recorded; compare loo or template runs")
    if a.similarity is not b.similarity:
        raise CompatError(f"runs: {a.source} uses {a.similarity.value} similarity, {b.source} "
                          f"{b.similarity.value}; compare runs evaluated the same way")
    if not asked:
        if set(a.metrics) != set(b.metrics):
            raise CompatError(f"runs: different metrics: {a.source} reports {', '.join(a.metrics)}, {b.source} "
                              f"{', '.join(b.metrics)}; choose shared ones with --metric")
        return a.metrics
    names = tuple(dict.fromkeys(parse_metric(m).name for m in asked))
    for metric in names:
        for run in (a, b):
            if metric not in run.metrics:
                raise CompatError(f"metric {metric}: different metrics: {run.source} reports "
                                  f"{', '.join(run.metrics)} only")
    return names


def _version_pairs(a: Run, b: Run, mapping: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """(A version, B version) pairs, in A's order; B's order must agree (older before newer)."""
    if mapping is None:
        pairs = [(v, v) for v in a.versions if v in b.versions]
    else:
        for name, run in [(k, a) for k in mapping] + [(v, b) for v in mapping.values()]:
            if name not in run.versions:
                raise CompatError(f"versions: {run.source} has no version {name!r} ({', '.join(run.versions)})")
        if len(set(mapping.values())) != len(mapping):
            raise CompatError("versions: two of run A's versions are matched to one version of run B")
        pairs = sorted(mapping.items(), key=lambda p: a.versions.index(p[0]))
    if not pairs:
        raise CompatError(f"runs: no shared version ({a.source}: {', '.join(a.versions)}; {b.source}: "
                          f"{', '.join(b.versions)}); match them with --match A=B")
    order_b = [b.versions.index(vb) for _, vb in pairs]
    if order_b != sorted(order_b):
        raise CompatError("versions: the matched versions must be in the same order (oldest first) in both runs")
    return pairs


def _evaluate(run: Run, cell: tuple[str, str], evaluator: RetrievalEvaluator,
              cache: dict[tuple[int, str], FeatureSet], side: int) -> RetrievalResult:
    """One cell of one run, checked against the run's report."""
    for version in cell:
        if (side, version) not in cache:
            cache[(side, version)] = load_features(run.features_of(version))
    query, gallery = cache[(side, cell[0])], cache[(side, cell[1])]
    where = f"cell {cell[0]} on {cell[1]} of {run.source}"
    result = evaluate_cell(evaluator, query, gallery, dim_policy=run.dim_policy, where=where)
    for metric in evaluator.metric_names:
        reported = run.values.get(metric, {}).get(cell)
        value = result.values[metric]
        if reported is not None and not math.isclose(value, reported, rel_tol=0.0, abs_tol=_REPORT_TOLERANCE):
            why = ("a report written by an earlier compat, whose mAP ranked positives against float32 scores, "
                   "differs in the 7th digit" if abs(value - reported) < 1e-5 else
                   "the feature sets or the evaluation settings are not the run's")
            raise CompatError(f"{where}: {metric} evaluated from the feature sets is {value:.10g} but the report says "
                              f"{reported:.10g}; {why}")
    logger.info("%s: %s", where, result.values)
    return result
