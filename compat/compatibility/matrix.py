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
from enum import Enum

import numpy as np

from compat.compatibility.summary import MetricSummary, summarize
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.retrieval.metrics import RetrievalResult

__all__ = [
    "Cell",
    "CellTransform",
    "CompatibilityReport",
    "DimPolicy",
    "Version",
    "apply_dim_policy",
    "evaluate_chain",
]

logger = logging.getLogger(__name__)


class DimPolicy(str, Enum):
    """What to do when query and gallery features differ in size.

    ``error``: refuse. ``truncate``: keep the first min(d_q, d_g) coordinates of both (BT^2 / FCT
    evaluation: a longer new feature's first coordinates are the old-compatible part).
    ``pad``: zero-pad the shorter one to the longer size.
    """

    ERROR = "error"
    TRUNCATE = "truncate"
    PAD = "pad"


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
    """

    versions: tuple[str, ...]
    protocol: str
    metrics: tuple[str, ...]
    matrices: dict[str, list[list[float | None]]]
    summary: dict[str, MetricSummary]
    queries: list[list[CellCount | None]]

    def to_json(self) -> dict:
        """The ``compat.json`` document (schema in DESIGN.md)."""
        return {
            "versions": list(self.versions),
            "protocol": self.protocol,
            "metrics": {m: self.matrices[m] for m in self.metrics},
            "summary": {m: self.summary[m].to_json() for m in self.metrics},
            # per cell: queries evaluated and those without any positive in the gallery, so that a
            # fraction reads as a count of queries (and a shortfall as the number of queries missing)
            "queries": [[None if c is None else {"n": c.n_queries, "without_positive": c.n_without_positive}
                         for c in row] for row in self.queries],
        }

    def cell(self, metric: str, query_version: str, gallery_version: str) -> float | None:
        return self.matrices[metric][self.versions.index(query_version)][self.versions.index(gallery_version)]


def apply_dim_policy(
    query: np.ndarray,
    gallery: np.ndarray,
    policy: DimPolicy,
    *,
    where: str = "cell",
    compatible_dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bring query (Nq, Dq) and gallery (Ng, Dg) to one feature size.

    When the query's version declares ``compatible_dim`` c (the leading coordinates it was trained
    to share with older versions: BT^2's old dimension, BCT's truncated prefix), that statement
    decides: the first min(c, Dg) query coordinates meet the gallery, zero-padded to Dg when c < Dg.
    Otherwise ``policy`` does. Equal sizes are never changed (a version against itself uses its
    whole feature).
    """
    dq, dg = query.shape[1], gallery.shape[1]
    if dq == dg:
        return query, gallery
    if compatible_dim is not None:
        c = min(compatible_dim, dq)
        return (query[:, :dg], gallery) if c >= dg else (_zero_pad(query[:, :c], dg), gallery)
    if policy is DimPolicy.ERROR:
        raise CompatError(
            f"{where}: feature sizes differ (queries {dq}, gallery {dg}); pass a dimension policy "
            "(--dim-policy truncate or pad) or an adapter"
        )
    if policy is DimPolicy.TRUNCATE:
        d = min(dq, dg)
        return query[:, :d], gallery[:, :d]
    d = max(dq, dg)
    return _zero_pad(query, d), _zero_pad(gallery, d)


def _compatible_dim(features: FeatureSet) -> int | None:
    """The ``compatible_dim`` a feature set's metadata declares (validated), or None."""
    value = features.meta.get("compatible_dim")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CompatError(f"{features.source}: meta field compatible_dim: expected a positive integer, got {value!r}")
    return value


def _zero_pad(x: np.ndarray, d: int) -> np.ndarray:
    if x.shape[1] == d:
        return x
    out = np.zeros((x.shape[0], d), dtype=np.float32)
    out[:, : x.shape[1]] = x
    return out


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
    try:
        policy = DimPolicy(dim_policy)
    except ValueError:
        raise CompatError(f"dim_policy: unknown value {dim_policy!r}; expected error, truncate or pad") from None
    t = len(versions)
    names = tuple(v.name for v in versions)
    metric_names = evaluator.metric_names
    matrices: dict[str, list[list[float | None]]] = {m: [[None] * t for _ in range(t)] for m in metric_names}
    counts: list[list[CellCount | None]] = [[None] * t for _ in range(t)]
    for i, qv in enumerate(versions):
        for j in range(i + 1):
            gv = versions[j]
            cell = Cell(i, j, qv.name, gv.name)
            q, g = transform(cell, qv.queries.features, gv.gallery.features)
            where = f"cell {qv.name} on {gv.name} ({qv.queries.source} on {gv.gallery.source})"
            q, g = apply_dim_policy(q, g, policy, where=where, compatible_dim=_compatible_dim(qv.queries))
            result = evaluator.evaluate_arrays(
                q,
                qv.queries.labels,
                qv.queries.ids,
                g,
                gv.gallery.labels,
                gv.gallery.ids,
                where=where,
            )
            for m in metric_names:
                matrices[m][i][j] = result.values[m]
            counts[i][j] = CellCount(result.n_queries, result.n_without_positive)
            logger.info("%s on %s: %s", qv.name, gv.name, result.values)
            if progress is not None:
                progress(cell, result)
    reference = None
    if independent is not None:
        reference = evaluator.evaluate(independent, independent)
    summary = {
        m: summarize(matrices[m], strict=strict, reference_self=None if reference is None else reference.values[m])
        for m in metric_names
    }
    return CompatibilityReport(names, evaluator.protocol.value, metric_names, matrices, summary, counts)
