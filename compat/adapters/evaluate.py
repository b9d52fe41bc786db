"""A version chain evaluated with adapters, plus the adapter cells and the backfill curves.

With an adapter for the upgrade ``new -> old``, the chain's cell (new, old) is ``B(new)`` queries
against the untouched old gallery: the question the compatibility criterion asks of a deployed
adapter. Each adapted pair also gets the cells

=================  =============================================================================
``old/old``        the old model against its own gallery
``new/new``        the new model against its own, fully re-extracted gallery
``new/old``        raw new queries against the old gallery (the dimension policy, ``truncate``
                   when it is ``error``: the adapter itself truncates)
``B(new)/old``     the adapted queries against the old gallery (the matrix cell)
``B(new)/F(old)``  against the old gallery upgraded by the forward adapter (when there is one)
``B(new)/B(new)``  against the gallery re-extracted by the new model and mapped by ``B``
=================  =============================================================================

and, when asked, backfill curves that end at ``B(new)/B(new)`` (``beta = 1``). They start
(``beta = 0``) from the gallery as stored, ``B(new)/old``: the orderings are decided on the indexed
old features, as in FastFill. With a forward adapter a second set starts from the gallery upgraded
by ``F``, ``B(new)/F(old)`` (the orderings then decided on the upgraded features); in
``compat.json`` they sit under ``backfill_forward``, next to ``backfill``. Without adapters,
backfill curves are drawn for the newest upgrade with raw features (new queries; old gallery items
replaced by new ones).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from compat.adapters.adapter import Adapter, AdapterInfo
from compat.adapters.backfill import (
    BackfillCurve,
    Ordering,
    backfill_curve,
    backfill_order,
    beta_grid,
    matched_rows,
    parse_ordering,
)
from compat.adapters.config import DEFAULT_BACKFILL_POINTS
from compat.choices import parse_choice
from compat.compatibility.cell import DimPolicy, apply_dim_policy, evaluate_cell
from compat.compatibility.items import align_chain
from compat.compatibility.matrix import Cell, CompatibilityReport, Version, evaluate_chain
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import RetrievalEvaluator

__all__ = ["AdaptedChainReport", "AdapterCell", "AdapterCells", "BackfillResult", "evaluate_with_adapters"]

logger = logging.getLogger(__name__)

class AdapterCell(Enum):
    """A cell of an adapted upgrade: which queries search which gallery (named as in ``compat.json``)."""

    OLD_OLD = "old/old"
    NEW_NEW = "new/new"
    NEW_OLD = "new/old"
    B_OLD = "B(new)/old"
    B_F = "B(new)/F(old)"
    B_B = "B(new)/B(new)"

    @property
    def cross(self) -> bool:
        """Compared with ``old/old`` by the compatibility criterion (new queries, old gallery)."""
        return self in (AdapterCell.NEW_OLD, AdapterCell.B_OLD, AdapterCell.B_F)

    def label(self, adapter: str | None = None) -> str:
        """The cell's name, with the adapter's label on ``B`` (``B_perp(new)/old``) when given."""
        return self.value if adapter is None else self.value.replace("B(", f"B_{adapter}(")


def _pair_key(new: str, old: str) -> str:
    return f"{new}:{old}"


@dataclass(frozen=True)
class AdapterCells:
    """The cells of one adapted upgrade.

    Attributes:
        new, old: version names.
        info: the adapter's kinds and sizes.
        path: the adapter file, when it came from one.
        cells: cell -> metric -> value (``B(new)/F(old)`` only with F).
        raw_dim_policy: the dimension policy of the raw ``new/old`` cell.
        strict: ties fail the criterion.
    """

    new: str
    old: str
    info: AdapterInfo
    path: str | None
    cells: dict[AdapterCell, dict[str, float]]
    raw_dim_policy: str
    strict: bool = True

    @property
    def metrics(self) -> list[str]:
        return list(self.cells[AdapterCell.OLD_OLD])

    def passes(self, cell: AdapterCell, metric: str) -> bool | None:
        """The compatibility criterion of ``cell`` against ``old/old`` (``None`` when a cell is undefined)."""
        a, b = self.cells[cell][metric], self.cells[AdapterCell.OLD_OLD][metric]
        if a is None or b is None:
            return None
        return bool(a > b) if self.strict else bool(a >= b)

    def retention(self, metric: str) -> float | None:
        """``B(new)/B(new)`` over ``new/new``: what the adapted space keeps of the new model."""
        base, adapted = self.cells[AdapterCell.NEW_NEW][metric], self.cells[AdapterCell.B_B][metric]
        return None if not base or adapted is None else adapted / base

    def to_json(self) -> dict:
        metrics = self.metrics
        return {
            "new": self.new,
            "old": self.old,
            "path": self.path,
            "adapter": self.info.to_json(),
            "raw_dim_policy": self.raw_dim_policy,
            "cells": {c.value: values for c, values in self.cells.items()},
            "ecc": {m: {c.value: self.passes(c, m) for c in self.cells if c.cross} for m in metrics},
            "retention": {m: self.retention(m) for m in metrics},
        }


@dataclass(frozen=True)
class BackfillResult:
    """Backfill curves of one upgrade.

    Attributes:
        new, old: version names.
        adapter: the adapter's label (``perp``, ``lambda=12``, ...) or None for raw features.
        start, end: the cells at beta = 0 and beta = 1 (e.g. ``B(new)/F(old)``, ``B(new)/B(new)``).
        curves: one per ordering.
    """

    new: str
    old: str
    adapter: str | None
    start: AdapterCell
    end: AdapterCell
    curves: tuple[BackfillCurve, ...]

    @property
    def betas(self) -> tuple[float, ...]:
        return self.curves[0].betas

    def to_json(self) -> dict:
        return {
            "new": self.new,
            "old": self.old,
            "adapter": self.adapter,
            "start": self.start.value,
            "end": self.end.value,
            "betas": list(self.betas),
            "orderings": {c.ordering: c.to_json() for c in self.curves},
        }


@dataclass(frozen=True)
class AdaptedChainReport:
    """The chain's report (adapted cells in its matrices) with the adapter cells and backfill curves."""

    report: CompatibilityReport
    adapters: tuple[AdapterCells, ...] = ()
    backfill: tuple[BackfillResult, ...] = field(default_factory=tuple)

    def extra_json(self) -> dict:
        """Keys added to ``compat.json`` next to the core schema (docs/design.md): ``adapters`` and ``backfill``."""
        out: dict = {}
        if self.adapters:
            out["adapters"] = {_pair_key(a.new, a.old): a.to_json() for a in self.adapters}
        for key, from_forward in (("backfill", False), ("backfill_forward", True)):
            curves = {_pair_key(b.new, b.old): b.to_json() for b in self.backfill
                      if (b.start is AdapterCell.B_F) == from_forward}
            if curves:
                out[key] = curves
        return out


def _index(names: Sequence[str], name: str, what: str) -> int:
    if name not in names:
        raise CompatError(f"{what}: {name!r} is not one of the versions ({', '.join(names)})")
    return list(names).index(name)


def _check_pairs(versions: Sequence[Version], adapters: Mapping[tuple[str, str], Adapter]) -> dict[tuple[int, int], Adapter]:
    names = [v.name for v in versions]
    by_cell: dict[tuple[int, int], Adapter] = {}
    for (new, old), adapter in adapters.items():
        where = f"adapter {new}:{old}"
        i, j = _index(names, new, where), _index(names, old, where)
        if j >= i:
            raise CompatError(f"{where}: NEW must be a newer version than OLD (versions are given oldest first)")
        for fs in (versions[i].gallery, versions[i].queries):
            adapter.check_dims(fs.dim, versions[j].gallery.dim, where=f"{where} ({fs.source})")
        by_cell[(i, j)] = adapter
    return by_cell


def evaluate_with_adapters(
    versions: Sequence[Version],
    evaluator: RetrievalEvaluator,
    adapters: Mapping[tuple[str, str], Adapter] | None = None,
    *,
    paths: Mapping[tuple[str, str], str] | None = None,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    strict: bool = True,
    independent: FeatureSet | None = None,
    independent_query: FeatureSet | None = None,
    backfill: Sequence[Ordering | str] = (),
    backfill_points: int = DEFAULT_BACKFILL_POINTS,
    seed: int = 0,
    allow_partial: bool = False,
) -> AdaptedChainReport:
    """Evaluate a chain whose upgrades may go through adapters.

    Args:
        versions: oldest first.
        evaluator: the configured evaluator.
        adapters: ``(new, old) -> Adapter``; ``B`` maps the new version's queries before they
            search the old gallery, in the matrix and in the adapter cells.
        paths: ``(new, old) -> file`` the adapters came from (recorded in the report).
        dim_policy: for cells whose sizes differ without an adapter (and for the raw cells).
        strict: ties fail the compatibility criterion.
        independent, independent_query: the update gain's reference (see :func:`evaluate_chain`).
        backfill: orderings whose backfill curves to draw, for every adapted pair (or, without
            adapters, for the newest upgrade on raw features).
        backfill_points: size of the beta grid (0 to 1).
        seed: of the ``random`` ordering.
        allow_partial: versions holding different items are evaluated over the shared ids (see
            :func:`evaluate_chain`), the adapter cells and curves too.
    """
    versions, independent, coverage = align_chain(versions, independent, protocol=evaluator.protocol,
                                                  allow_partial=allow_partial)
    adapters = dict(adapters or {})
    by_cell = _check_pairs(versions, adapters)
    policy = parse_choice(DimPolicy, dim_policy, "dim_policy")

    def transform(cell: Cell, query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        adapter = by_cell.get((cell.i, cell.j))
        if adapter is None:
            return query, gallery
        return adapter.to_old(query), adapter.old_space(gallery)

    report = replace(evaluate_chain(versions, evaluator, dim_policy=policy, transform=transform, strict=strict,
                                    independent=independent, independent_query=independent_query), coverage=coverage)
    raw_policy = DimPolicy.TRUNCATE if policy is DimPolicy.ERROR else policy
    cells_out = []
    curves_out = []
    orderings = [parse_ordering(o) for o in backfill]
    betas = beta_grid(backfill_points) if orderings else None
    for (i, j), adapter in sorted(by_cell.items()):
        new, old = versions[i], versions[j]
        key = (new.name, old.name)
        cells = _adapter_cells(report, evaluator, adapter, new, old, i, j, raw_policy)
        cells_out.append(AdapterCells(new.name, old.name, adapter.info, (paths or {}).get(key), cells,
                                      raw_policy.value, strict))
        if orderings:
            curves_out.extend(_adapter_backfill(evaluator, adapter, new, old, cells, orderings, betas, seed))
    if orderings and not by_cell:
        if len(versions) < 2:
            raise CompatError("backfill: needs at least two versions (or an adapter)")
        curves_out.append(_raw_backfill(evaluator, versions[-1], versions[-2], policy, orderings, betas, seed))
    return AdaptedChainReport(report, tuple(cells_out), tuple(curves_out))


def _adapter_cells(report: CompatibilityReport, evaluator: RetrievalEvaluator, adapter: Adapter, new: Version,
                   old: Version, i: int, j: int, raw_policy: DimPolicy) -> dict[AdapterCell, dict[str, float]]:
    """The cells of one adapted upgrade; those the chain's matrix holds are taken from it."""
    m = report.matrices

    def cell(query: FeatureSet, gallery: FeatureSet, where: str, **how) -> dict[str, float]:
        return dict(evaluate_cell(evaluator, query, gallery, where=where, **how).values)

    cells = {AdapterCell.OLD_OLD: {k: m[k][j][j] for k in report.metrics},
             AdapterCell.NEW_NEW: {k: m[k][i][i] for k in report.metrics}}
    cells[AdapterCell.NEW_OLD] = cell(new.queries, old.gallery, f"{new.name} on {old.name} (raw)", dim_policy=raw_policy)
    cells[AdapterCell.B_OLD] = {k: m[k][i][j] for k in report.metrics}
    if adapter.has_forward:
        cells[AdapterCell.B_F] = cell(new.queries, old.gallery, f"B({new.name}) on F({old.name})",
                                      transform=lambda q, g: (adapter.to_old(q), adapter.upgrade(g)))
    cells[AdapterCell.B_B] = cell(new.queries, new.gallery, f"B({new.name}) on B({new.name})",
                                  transform=lambda q, g: (adapter.to_old(q), adapter.to_old(g)))
    return cells


def _curves(evaluator: RetrievalEvaluator, queries: np.ndarray, qfs: FeatureSet, before: np.ndarray,
            after: np.ndarray, gfs: FeatureSet, orderings, betas, seed: int,
            ends: tuple[dict[str, float], dict[str, float]] | None = None) -> tuple[BackfillCurve, ...]:
    """One curve per ordering; ``ends`` are the whole-before and whole-after cells when already known."""
    out = []
    for ordering in orderings:
        order = backfill_order(ordering, before, gfs.labels, seed=seed, ids=gfs.ids)
        name = ordering.value
        out.append(backfill_curve(evaluator, queries=queries, query_labels=qfs.labels, query_ids=qfs.ids,
                                  before=before, after=after, gallery_labels=gfs.labels, gallery_ids=gfs.ids,
                                  order=order, ordering=name, betas=betas, ends=ends, query_groups=qfs.groups,
                                  gallery_groups=gfs.groups))
        # the whole-before and whole-after galleries do not depend on the ordering: measured once
        ends = ({m: v[0] for m, v in out[-1].values.items()}, {m: v[-1] for m, v in out[-1].values.items()})
        logger.info("backfill %s: area %s", name, out[-1].area)
    return tuple(out)


def _adapter_backfill(evaluator, adapter: Adapter, new: Version, old: Version,
                      cells: dict[AdapterCell, dict[str, float]],
                      orderings, betas, seed: int) -> list[BackfillResult]:
    """From the stored gallery and, with a forward adapter, from the gallery upgraded by ``F``.

    The curves' end points are the adapter cells already measured (``cells``), not measured again.
    """
    where = f"backfill {new.name}:{old.name}"
    rows = matched_rows(old.gallery, new.gallery, where)
    after = adapter.to_old(np.asarray(new.gallery.features[rows]))
    starts = [(adapter.old_space(old.gallery.features), AdapterCell.B_OLD)]
    if adapter.has_forward:
        starts.append((adapter.upgrade(old.gallery.features), AdapterCell.B_F))
    queries = adapter.to_old(new.queries.features)
    return [BackfillResult(new.name, old.name, adapter.info.label, start, AdapterCell.B_B,
                           _curves(evaluator, queries, new.queries, before, after, old.gallery, orderings, betas, seed,
                                   ends=(cells[start], cells[AdapterCell.B_B])))
            for before, start in starts]


def _raw_backfill(evaluator, new: Version, old: Version, policy: DimPolicy, orderings, betas,
                  seed: int) -> BackfillResult:
    where = f"backfill {new.name}:{old.name}"
    rows = matched_rows(old.gallery, new.gallery, where)
    after = np.asarray(new.gallery.features[rows])
    before, after = apply_dim_policy(np.asarray(old.gallery.features), after, policy, where=where)
    queries, _ = apply_dim_policy(np.asarray(new.queries.features), before, policy, where=where)
    curves = _curves(evaluator, queries, new.queries, before, after, old.gallery, orderings, betas, seed)
    return BackfillResult(new.name, old.name, None, AdapterCell.NEW_OLD, AdapterCell.NEW_NEW, curves)
