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
from compat.compatibility.cell import DimPolicy, check_cell_inputs, evaluate_cell
from compat.compatibility.flips import ClassView, FlipRate, Top1, cell_key, chain_flips, class_view
from compat.compatibility.index_report import IndexedChain, IndexReport
from compat.compatibility.indexed import IndexSetup
from compat.compatibility.items import ItemCoverage, align_chain
from compat.compatibility.summary import MetricSummary, summarize
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.preprocessing import preprocessing_warnings
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
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
        protocol: ``loo``, ``query-gallery``, ``template`` or ``pairs``.
        metrics: metric names in the order asked for.
        matrices: metric -> T x T list, ``[i][j]`` for j <= i, ``None`` above the diagonal.
        summary: metric -> AC / AM / BC / FC / ECC / update gain.
        queries: T x T counts of queries evaluated and queries without any positive.
        ranks: torch.distributed processes that computed it (1 without torchrun).
        query_sample: the sample of queries each cell evaluated, or None for all of them.
        coverage: for a partial evaluation (``allow_partial``), the items every cell is over.
        flips: negative and positive flips of every cell i > j against (j, j), then of the newest
            version on its own gallery against the oldest on its own; ``None`` for ``pairs``.
        classes: per-class CMC@1 of the newest upgrade on the oldest gallery against (oldest, oldest).
        warnings: what the reader should know (versions extracted with different preprocessing).
        index: the same chain through each gallery's approximate index, when one was named.
    """

    versions: tuple[str, ...]
    protocol: str
    metrics: tuple[str, ...]
    matrices: dict[str, list[list[float | None]]]
    summary: dict[str, MetricSummary]
    queries: list[list[CellCount | None]]
    ranks: int = 1
    query_sample: QuerySample | None = None
    coverage: ItemCoverage | None = None
    flips: tuple[FlipRate, ...] | None = None
    classes: ClassView | None = None
    warnings: tuple[str, ...] = ()
    index: IndexReport | None = None

    @property
    def notes(self) -> list[str]:
        """What a reader must know to read the numbers: a partial evaluation, undefined cells."""
        out = [self.coverage.note] if self.coverage is not None else []
        t = len(self.versions)
        for m in self.metrics:
            undefined = [f"{self.versions[i]} on {self.versions[j]}" for i in range(t) for j in range(i + 1)
                         if self.matrices[m][i][j] is None]
            if undefined:
                out.append(f"{m}: {', '.join(undefined)} undefined (no query has a positive in the gallery): "
                           "null, and left out of ac, am, bc, fc and the update gain")
        return out

    def to_json(self) -> dict:
        """The ``compat.json`` document (schema in docs/design.md); ``items`` and ``notes`` only when
        the evaluation is partial or has undefined cells, ``index`` only through an index."""
        extra = {"items": self.coverage.to_json()} if self.coverage is not None else {}
        extra |= {"notes": self.notes} if self.notes else {}
        extra |= {"index": self.index.to_json()} if self.index is not None else {}
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
            "flips": None if self.flips is None else {f.cell: f.to_json() for f in self.flips},
            "classes": None if self.classes is None else self.classes.to_json(),
            "warnings": list(self.warnings),
        } | extra

    def cell(self, metric: str, query_version: str, gallery_version: str) -> float | None:
        return self.matrices[metric][self.versions.index(query_version)][self.versions.index(gallery_version)]


def _check_versions(versions: Sequence[Version], evaluator: RetrievalEvaluator) -> None:
    if not versions:
        raise CompatError("versions: at least one version is needed")
    seen: set[str] = set()
    for v in versions:
        if v.name in seen:
            raise CompatError(f"version: name {v.name!r} is given twice")
        seen.add(v.name)
        if evaluator.protocol is Protocol.QUERY_GALLERY and v.query is None:
            raise CompatError(f"version {v.name}: the query-gallery protocol needs its query features "
                              f"(--query {v.name}=FEATURES) besides its gallery ({v.gallery.source})")
    check_cell_inputs(evaluator, [v.queries for v in versions], [v.gallery for v in versions])


def _evaluate_reference(evaluator: RetrievalEvaluator, gallery: FeatureSet, query: FeatureSet | None) -> RetrievalResult:
    """The independent model against itself: the update gain's reference."""
    if evaluator.protocol is Protocol.QUERY_GALLERY and query is None:
        raise CompatError(f"independent ({gallery.source}): the query-gallery protocol needs its query features "
                          "too (--independent-query FEATURES)")
    query = gallery if query is None else query
    check_cell_inputs(evaluator, [query], [gallery])
    return evaluate_cell(evaluator, query, gallery, where=f"independent ({query.source} on {gallery.source})")


def version_warnings(versions: Sequence[Version]) -> tuple[str, ...]:
    """Warnings about the inputs of a chain: feature sets made with different preprocessing."""
    items = []
    for v in versions:
        items.append((v.name, v.gallery.meta))
        if v.query is not None:
            items.append((f"{v.name} (queries)", v.query.meta))
    return tuple(preprocessing_warnings(items))


def _upgrades(names: tuple[str, ...], tops: dict[tuple[int, int], Top1]) -> tuple[tuple[FlipRate, ...], ClassView | None]:
    """Flips of the chain, and the per-class view of the newest upgrade on the oldest gallery."""
    flips = chain_flips(names, tops)
    last = len(names) - 1
    if last == 0:
        return flips, None
    view = class_view(tops[last, 0], tops[0, 0], cell_key(names[last], names[0]), cell_key(names[0], names[0]))
    return flips, view


def evaluate_chain(
    versions: Sequence[Version],
    evaluator: RetrievalEvaluator,
    *,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    transform: CellTransform = identity_transform,
    strict: bool = True,
    independent: FeatureSet | None = None,
    independent_query: FeatureSet | None = None,
    allow_partial: bool = False,
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
        independent_query: its query features (needed by the query-gallery protocol).
        allow_partial: under ``loo``, versions that hold different items are evaluated over the ids
            every version holds (the report says so) instead of refused.
        progress: called after each cell.
        index: also search every cell through its gallery's approximate index (built once per
            gallery version from ``index.spec``, or a stored file), as production does.

    Raises:
        CompatError: bad input, among them (``loo``) versions that hold different items, and an
            item whose label differs between versions.
    """
    _check_versions(versions, evaluator)
    versions, independent, coverage = align_chain(versions, independent, protocol=evaluator.protocol,
                                                  allow_partial=allow_partial)
    policy = parse_choice(DimPolicy, dim_policy, "dim_policy")
    t = len(versions)
    names = tuple(v.name for v in versions)
    metric_names = evaluator.metric_names
    matrices: dict[str, list[list[float | None]]] = {m: [[None] * t for _ in range(t)] for m in metric_names}
    counts: list[list[CellCount | None]] = [[None] * t for _ in range(t)]
    tops: dict[tuple[int, int], Top1] = {}
    templates = evaluator.protocol is Protocol.TEMPLATE
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
            counts[i][j] = CellCount(result.n_queries, result.n_without_positive, result.sampled_from)
            if result.hit1 is not None:
                tops[i, j] = Top1.of(result, qv.queries, gv.gallery, templates=templates)
            if ann is not None:
                ann.evaluate(i, j, qv.queries, gv.gallery, transform=partial(transform, cell), where=where)
            logger.info("%s on %s: %s", qv.name, gv.name, result.values)
            if progress is not None:
                progress(cell, result)
    reference = None
    if independent is not None:
        reference = _evaluate_reference(evaluator, independent, independent_query)
    summary = {
        m: summarize(matrices[m], strict=strict, reference_self=None if reference is None else reference.values[m])
        for m in metric_names
    }
    sample = None if evaluator.query_sample is None else QuerySample(evaluator.query_sample, evaluator.seed)
    flips, classes = _upgrades(names, tops) if len(tops) == len(counts) * (len(counts) + 1) // 2 else (None, None)
    index_report = None if ann is None else ann.report(strict=strict, independent=independent)
    return CompatibilityReport(names, evaluator.protocol.value, metric_names, matrices, summary, counts,
                               ranks=evaluator.dist.world_size, query_sample=sample, coverage=coverage, flips=flips,
                               classes=classes, warnings=version_warnings(versions), index=index_report)
