"""The compatibility matrix over a chain of model versions.

For versions v_0..v_{T-1} (oldest first), cell (i, j), j <= i, evaluates the queries of version i
against the gallery of version j. When the two versions have different feature sizes a
:class:`DimPolicy` says what to do, and a :data:`CellTransform` hook may map query and gallery
features first (identity by default; adapters plug in here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from compat.choices import parse_choice
from compat.compatibility.cell import DimPolicy, evaluate_cell
from compat.compatibility.index_report import IndexedChain, IndexReport
from compat.compatibility.indexed import IndexSetup
from compat.compatibility.summary import MetricSummary, summarize
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.retrieval.metrics import RetrievalResult

__all__ = [
    "Cell",
    "CellTransform",
    "CompatibilityReport",
    "Version",
    "evaluate_chain",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Version:
    """One model version: its gallery features and, optionally, separate query features."""

    name: str
    gallery: FeatureSet
    query: FeatureSet | None = None

    @property
    def queries(self) -> FeatureSet:
        return self.gallery if self.query is None else self.query


@dataclass(frozen=True)
class Cell:
    """Queries of version ``query_version`` (index ``i``) against the gallery of ``gallery_version`` (``j``)."""

    i: int
    j: int
    query_version: str
    gallery_version: str


# (cell, query features (Nq, Dq), gallery features (Ng, Dg)) -> transformed (query, gallery).
CellTransform = Callable[[Cell, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def identity_transform(cell: Cell, query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return query, gallery


@dataclass(frozen=True)
class CellCount:
    n_queries: int
    n_without_positive: int


@dataclass(frozen=True)
class CompatibilityReport:
    """Everything one chain evaluation measured.

    Attributes:
        versions: names, oldest first.
        protocol: ``loo``, ``template`` or ``pairs``.
        metrics: metric names in the order asked for.
        matrices: metric -> T x T list, ``[i][j]`` for j <= i, ``None`` above the diagonal.
        summary: metric -> AC / AM / BC / FC / ECC / update gain.
        queries: T x T counts of queries evaluated and queries without any positive.
        index: the same chain through each gallery's approximate index, when one was named.
    """

    versions: tuple[str, ...]
    protocol: str
    metrics: tuple[str, ...]
    matrices: dict[str, list[list[float | None]]]
    summary: dict[str, MetricSummary]
    queries: list[list[CellCount | None]]
    index: IndexReport | None = None

    def to_json(self) -> dict:
        """The ``compat.json`` document (schema in docs/design.md)."""
        out = {
            "versions": list(self.versions),
            "protocol": self.protocol,
            "metrics": {m: self.matrices[m] for m in self.metrics},
            "summary": {m: self.summary[m].to_json() for m in self.metrics},
            # per cell: queries evaluated and those without any positive in the gallery, so that a
            # fraction reads as a count of queries (and a shortfall as the number of queries missing)
            "queries": [[None if c is None else {"n": c.n_queries, "without_positive": c.n_without_positive}
                         for c in row] for row in self.queries],
        }
        if self.index is not None:
            out["index"] = self.index.to_json()
        return out

    def cell(self, metric: str, query_version: str, gallery_version: str) -> float | None:
        return self.matrices[metric][self.versions.index(query_version)][self.versions.index(gallery_version)]


def _check_versions(versions: Sequence[Version]) -> None:
    if not versions:
        raise CompatError("versions: at least one version is needed")
    seen: set[str] = set()
    for v in versions:
        if v.name in seen:
            raise CompatError(f"version: name {v.name!r} is given twice")
        seen.add(v.name)


def evaluate_chain(
    versions: Sequence[Version],
    evaluator: RetrievalEvaluator,
    *,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    transform: CellTransform = identity_transform,
    strict: bool = True,
    independent: FeatureSet | None = None,
    progress: Callable[[Cell, RetrievalResult], None] | None = None,
    index: IndexSetup | None = None,
) -> CompatibilityReport:
    """Evaluate every cell j <= i of a version chain and summarise each metric.

    Args:
        versions: oldest first.
        evaluator: configured once (metrics, protocol, similarity, backend, device, budget).
        dim_policy: ``error`` (default), ``truncate`` or ``pad`` when sizes differ.
        transform: maps (query, gallery) features of a cell before the dimension policy.
        strict: ties fail the compatibility criterion.
        independent: features of the newest model trained without any compatibility constraint;
            its self-evaluation is the update gain's upper bound (else the newest version's own).
        progress: called after each cell.
        index: also search every cell through its gallery's approximate index (built once per
            gallery version from ``index.spec``, or a stored file), as production does.
    """
    _check_versions(versions)
    policy = parse_choice(DimPolicy, dim_policy, "dim_policy")
    t = len(versions)
    names = tuple(v.name for v in versions)
    metric_names = evaluator.metric_names
    matrices: dict[str, list[list[float | None]]] = {m: [[None] * t for _ in range(t)] for m in metric_names}
    counts: list[list[CellCount | None]] = [[None] * t for _ in range(t)]
    ann = None if index is None else IndexedChain(index, evaluator, names, policy)
    if ann is not None:
        ann.prepare([v.gallery for v in versions])
    for i, qv in enumerate(versions):
        for j in range(i + 1):
            gv = versions[j]
            cell = Cell(i, j, qv.name, gv.name)
            where = f"cell {qv.name} on {gv.name} ({qv.queries.source} on {gv.gallery.source})"
            result = evaluate_cell(evaluator, qv.queries, gv.gallery, dim_policy=policy,
                                   transform=partial(transform, cell), where=where)
            for m in metric_names:
                matrices[m][i][j] = result.values[m]
            counts[i][j] = CellCount(result.n_queries, result.n_without_positive)
            if ann is not None:
                ann.evaluate(i, j, qv.queries, gv.gallery, transform=partial(transform, cell), where=where)
            logger.info("%s on %s: %s", qv.name, gv.name, result.values)
            if progress is not None:
                progress(cell, result)
    reference = None
    if independent is not None:
        reference = evaluate_cell(evaluator, independent, independent, where=f"independent ({independent.source})")
    summary = {
        m: summarize(matrices[m], strict=strict, reference_self=None if reference is None else reference.values[m])
        for m in metric_names
    }
    index_report = None if ann is None else ann.report(strict=strict, independent=independent)
    return CompatibilityReport(names, evaluator.protocol.value, metric_names, matrices, summary, counts, index_report)
