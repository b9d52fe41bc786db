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
from compat.compatibility.summary import MetricSummary, summarize
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.retrieval.metrics import RetrievalResult

__all__ = [
    "Cell",
    "CellCount",
    "CellTransform",
    "CompatibilityReport",
    "QuerySample",
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
    """Queries a cell evaluated, those without any positive, and (when sampled) how many it drew from."""

    n_queries: int
    n_without_positive: int
    sampled_from: int | None = None

    def to_json(self) -> dict:
        out = {"n": self.n_queries, "without_positive": self.n_without_positive}
        if self.sampled_from is not None:
            out["sampled_from"] = self.sampled_from
        return out


@dataclass(frozen=True)
class QuerySample:
    """``--query-sample``: each cell evaluated a seeded sample of ``n`` queries, stratified by label."""

    n: int
    seed: int

    def to_json(self) -> dict:
        return {"n": self.n, "seed": self.seed, "stratified_by": "label"}


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
        ranks: torch.distributed processes that computed it (1 without torchrun).
        query_sample: the sample of queries each cell evaluated, or None for all of them.
    """

    versions: tuple[str, ...]
    protocol: str
    metrics: tuple[str, ...]
    matrices: dict[str, list[list[float | None]]]
    summary: dict[str, MetricSummary]
    queries: list[list[CellCount | None]]
    ranks: int = 1
    query_sample: QuerySample | None = None

    def to_json(self) -> dict:
        """The ``compat.json`` document (schema in docs/design.md)."""
        return {
            "versions": list(self.versions),
            "protocol": self.protocol,
            "metrics": {m: self.matrices[m] for m in self.metrics},
            "summary": {m: self.summary[m].to_json() for m in self.metrics},
            # per cell: queries evaluated and those without any positive in the gallery, so that a
            # fraction reads as a count of queries (and a shortfall as the number of queries missing)
            "queries": [[None if c is None else c.to_json() for c in row] for row in self.queries],
            "ranks": self.ranks,
            "query_sample": None if self.query_sample is None else self.query_sample.to_json(),
        }

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
    """
    _check_versions(versions)
    policy = parse_choice(DimPolicy, dim_policy, "dim_policy")
    t = len(versions)
    names = tuple(v.name for v in versions)
    metric_names = evaluator.metric_names
    matrices: dict[str, list[list[float | None]]] = {m: [[None] * t for _ in range(t)] for m in metric_names}
    counts: list[list[CellCount | None]] = [[None] * t for _ in range(t)]
    for i, qv in enumerate(versions):
        for j in range(i + 1):
            gv = versions[j]
            cell = Cell(i, j, qv.name, gv.name)
            where = f"cell {qv.name} on {gv.name} ({qv.queries.source} on {gv.gallery.source})"
            result = evaluate_cell(evaluator, qv.queries, gv.gallery, dim_policy=policy,
                                   transform=partial(transform, cell), where=where)
            for m in metric_names:
                matrices[m][i][j] = result.values[m]
            counts[i][j] = CellCount(result.n_queries, result.n_without_positive, result.sampled_from)
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
    sample = None if evaluator.query_sample is None else QuerySample(evaluator.query_sample, evaluator.seed)
    return CompatibilityReport(names, evaluator.protocol.value, metric_names, matrices, summary, counts,
                               evaluator.dist.world_size, sample)
