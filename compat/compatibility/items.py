"""Which items a chain's versions hold: a cell compares two versions only over the same items.

Leave-one-out compares M(new, old) with M(old, old); if the new version holds half of the items,
its queries are another population and its gallery another gallery, and a "passing" cell means
nothing. So under ``loo`` every version must hold the same item ids (:func:`check_items`), unless
the caller allows a partial evaluation over the ids every version holds, which every report then
states (:class:`ItemCoverage`). Under every protocol an id must carry the same label in every set
that holds it: a label that changes between versions makes the positives of a query change too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import Protocol

__all__ = ["ItemCoverage", "align_chain", "check_items", "check_labels", "restrict"]


@dataclass(frozen=True)
class ItemCoverage:
    """A partial evaluation: ``shared`` ids held by every version; per version, the items left out."""

    shared: int
    left_out: dict[str, int]
    ids: np.ndarray = field(compare=False, repr=False, default_factory=lambda: np.empty(0, np.int64))

    def to_json(self) -> dict:
        return {"shared": self.shared, "left_out": dict(self.left_out)}

    @property
    def note(self) -> str:
        out = ", ".join(f"{k} {v}" for k, v in self.left_out.items() if v)
        return (f"partial evaluation (--allow-partial): every cell is over the {self.shared} items all versions "
                f"hold; items left out per version: {out or 'none'}")


def _kinds(sets: Sequence[tuple[str, FeatureSet]]) -> None:
    kinds = {fs.ids.dtype.kind for _, fs in sets}
    if len(kinds) > 1:
        listed = ", ".join(f"{name}: {fs.ids.dtype}" for name, fs in sets)
        raise CompatError(f"versions: item ids are integers in some sets and strings in others ({listed}); "
                          "ids must be of one kind to match items across versions")


def check_labels(sets: Sequence[tuple[str, FeatureSet]]) -> None:
    """Every id carries one label in every set that holds it.

    Raises:
        CompatError: naming the id, the two sets and their labels.
    """
    if len(sets) < 2:
        return
    _kinds(sets)
    ids = np.concatenate([np.asarray(fs.ids) for _, fs in sets])
    labels = np.concatenate([np.asarray(fs.labels) for _, fs in sets])
    owner = np.concatenate([np.full(fs.n, k) for k, (_, fs) in enumerate(sets)])
    order = np.argsort(ids, kind="stable")
    ids, labels, owner = ids[order], labels[order], owner[order]
    clash = np.flatnonzero((ids[1:] == ids[:-1]) & (labels[1:] != labels[:-1]))
    if len(clash):
        k = int(clash[0])
        a, b = sets[owner[k]][0], sets[owner[k + 1]][0]
        raise CompatError(f"versions: item id {ids[k].item()!r} has label {labels[k]} in {a} but {labels[k + 1]} in "
                          f"{b}; an item must have the same label in every version")


def check_items(sets: Sequence[tuple[str, FeatureSet]], *, allow_partial: bool = False) -> ItemCoverage | None:
    """Leave-one-out: every set holds the same item ids.

    Args:
        sets: (name, feature set) of every version's gallery (and any other set compared with them).
        allow_partial: evaluate over the ids every set holds instead of refusing.

    Returns:
        ``None`` when every set holds the same ids; else, with ``allow_partial``, what a partial
        evaluation covers (its ``ids`` go to :func:`restrict`).

    Raises:
        CompatError: the sets hold different ids (without ``allow_partial``, naming how many differ),
            or share none.
    """
    _kinds(sets)
    first_name, first = sets[0]
    shared = np.unique(first.ids)
    differ = None
    for name, fs in sets[1:]:
        extra, missing = np.setdiff1d(fs.ids, first.ids), np.setdiff1d(first.ids, fs.ids)
        if differ is None and (len(extra) or len(missing)):
            differ = (name, extra, missing)
        shared = np.intersect1d(shared, fs.ids)
    if differ is None:
        return None
    name, extra, missing = differ
    if not allow_partial:
        example = f" (e.g. {extra[0].item()!r})" if len(extra) else ""
        raise CompatError(
            f"versions {first_name} and {name} hold different items: {len(extra)} of {name}'s ids are absent from "
            f"{first_name}{example} and {len(missing)} of {first_name}'s from {name}; leave-one-out compares versions "
            f"over the same items (--allow-partial evaluates the {len(shared)} items every version holds)")
    if len(shared) == 0:
        raise CompatError("versions: no item id is held by every version; there is nothing to evaluate")
    return ItemCoverage(len(shared), {n: int(fs.n - np.isin(fs.ids, shared).sum()) for n, fs in sets}, shared)


def restrict(fs: FeatureSet, ids: np.ndarray) -> FeatureSet:
    """The items of ``fs`` whose id is in ``ids`` (a memory-mapped set is read for them only)."""
    keep = np.flatnonzero(np.isin(fs.ids, ids))
    if len(keep) == fs.n:
        return fs
    return FeatureSet(np.ascontiguousarray(fs.features[keep]), fs.labels[keep], fs.ids[keep], dict(fs.meta), fs.source,
                      None if fs.groups is None else fs.groups[keep])


def align_chain(versions: Sequence, independent: FeatureSet | None, *, protocol: Protocol,
                allow_partial: bool = False) -> tuple[list, FeatureSet | None, ItemCoverage | None]:
    """Check a chain's items before any cell is evaluated (:func:`compat.compatibility.evaluate_chain`).

    Labels agree everywhere; under ``loo`` every gallery (and the independent reference) holds the
    same ids, or, with ``allow_partial``, every set is cut to the ids all galleries hold.

    Returns:
        The versions and the reference (cut when partial), and the coverage (``None`` unless partial).
    """
    sets = [(v.name, v.gallery) for v in versions]
    if independent is not None:
        sets.append(("independent", independent))
    queries = [(f"{v.name} (queries)", v.query) for v in versions if v.query is not None]
    if protocol is Protocol.QUERY_GALLERY:  # queries are not gallery items: two id spaces, each checked alone
        check_labels(sets)
        check_labels(queries)
    else:
        check_labels(sets + queries)
    coverage = check_items(sets, allow_partial=allow_partial) if protocol is Protocol.LOO else None
    if coverage is None:
        return list(versions), independent, None
    cut = [replace(v, gallery=restrict(v.gallery, coverage.ids),
                   query=None if v.query is None else restrict(v.query, coverage.ids)) for v in versions]
    return cut, None if independent is None else restrict(independent, coverage.ids), coverage
