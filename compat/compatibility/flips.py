"""Flips: queries that one cell answers right at top-1 and another wrong, and the classes that lose most.

What blocks a release is a query the old model answered right and the new one answers wrong. For a
chain of versions, every cell (i, j) with i > j is compared with (j, j) on the same queries (matched
by id, each with a positive in both cells): the *negative-flip rate* is the fraction correct at top-1
under (j, j) and wrong under (i, j), the *positive-flip rate* the reverse. The newest model on its
own gallery is also compared with the oldest model on its own. Top-1 is the CMC's (float64 scores,
ties to the lower gallery index), so a flip is exactly a change of a query's CMC@1 value.

The per-class view compares the newest upgrade on the oldest gallery with (oldest, oldest): CMC@1
per query label over the same paired queries, the classes that dropped most first.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compat.features import FeatureSet
from compat.markdown import escape, pct, pp, table
from compat.retrieval.metrics import RetrievalResult
from compat.retrieval.protocols import match_ids

__all__ = [
    "FLIPS_CSV_HEADER",
    "ClassDrop",
    "ClassView",
    "FlipRate",
    "Top1",
    "chain_flips",
    "class_view",
    "compare_top1",
    "flips_csv",
    "render_classes",
    "render_flips",
]

FLIPS_CSV_HEADER = ("cell", "against", "query_id", "before", "after")
CLASS_ROWS_SHOWN = 10


def cell_key(query_version: str, gallery_version: str) -> str:
    """``v2_on_v1``: the name of a cell in ``compat.json`` (and in MLflow metric names)."""
    return f"{query_version}_on_{gallery_version}"


@dataclass(frozen=True, eq=False)
class Top1:
    """What each query of one cell found first.

    Attributes:
        query_ids, labels: (Nq,) of the cell's query set.
        counted: (Nq,) the query has a positive in the cell.
        hit: (Nq,) its top-1 item is a positive.
        index: (Nq,) the top-1 item's row in ``gallery_ids`` (-1: nothing was retrieved).
        gallery_ids: the ids of what a query can retrieve (the gallery's ids; class labels for ``template``).
    """

    query_ids: np.ndarray
    labels: np.ndarray
    counted: np.ndarray
    hit: np.ndarray
    index: np.ndarray
    gallery_ids: np.ndarray

    @classmethod
    def of(cls, result: RetrievalResult, query: FeatureSet, gallery: FeatureSet, *, templates: bool = False) -> Top1:
        """From a ranking cell's result (``result.top1`` set); ``templates``: the template protocol."""
        ids = np.unique(gallery.labels) if templates else gallery.ids
        return cls(query.ids, query.labels, result.counted, result.hit1, result.top1, ids)

    def gallery_id(self, rows: np.ndarray) -> list[str]:
        return ["" if i < 0 else str(self.gallery_ids[i].item()) for i in self.index[rows]]


def _paired(after: Top1, before: Top1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted query ids counted in both cells, and their rows in each."""
    if after.query_ids.dtype.kind != before.query_ids.dtype.kind:
        empty = np.zeros(0, dtype=np.int64)
        return after.query_ids[:0], empty, empty
    common = np.intersect1d(after.query_ids[after.counted], before.query_ids[before.counted])
    return (common, match_ids(common, after.query_ids, required=True, where="flips"),
            match_ids(common, before.query_ids, required=True, where="flips"))


@dataclass(frozen=True, eq=False)
class FlipRate:
    """Flips of cell ``cell`` against ``against`` over ``n`` paired queries (rates ``None`` when n = 0).

    ``flipped`` lists the negatively flipped queries: ``(query id, top-1 gallery id before, after)``.
    """

    cell: str
    against: str
    negative: float | None
    positive: float | None
    n: int
    flipped: tuple[tuple[str, str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"negative": self.negative, "positive": self.positive, "n": self.n, "against": self.against}


def compare_top1(after: Top1, before: Top1, cell: str, against: str) -> FlipRate:
    """Negative and positive flips of ``after`` (cell ``cell``) against ``before`` (cell ``against``)."""
    common, ra, rb = _paired(after, before)
    if len(common) == 0:
        return FlipRate(cell, against, None, None, 0)
    negative = before.hit[rb] & ~after.hit[ra]
    positive = ~before.hit[rb] & after.hit[ra]
    rows = np.flatnonzero(negative)
    flipped = tuple(zip((str(q.item()) for q in common[rows]), before.gallery_id(rb[rows]),
                        after.gallery_id(ra[rows]), strict=True))
    return FlipRate(cell, against, float(negative.mean()), float(positive.mean()), len(common), flipped)


def chain_flips(names: Sequence[str], tops: Mapping[tuple[int, int], Top1]) -> tuple[FlipRate, ...]:
    """Every cell (i, j), i > j, against (j, j); then the newest on its own gallery against the oldest on its own."""
    out = []
    t = len(names)
    for i in range(t):
        for j in range(i):
            out.append(compare_top1(tops[i, j], tops[j, j], cell_key(names[i], names[j]), cell_key(names[j], names[j])))
    if t >= 2:
        last = t - 1
        out.append(compare_top1(tops[last, last], tops[0, 0], cell_key(names[last], names[last]),
                                cell_key(names[0], names[0])))
    return tuple(out)


def _worst_first(flips: Sequence[FlipRate]) -> list[FlipRate]:
    return sorted(flips, key=lambda f: -1.0 if f.negative is None else -f.negative)


def flips_csv(flips: Sequence[FlipRate]) -> str:
    """``flips.csv``: one row per negatively flipped query, the cells with the highest rate first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FLIPS_CSV_HEADER)
    for f in _worst_first(flips):
        for query_id, before, after in f.flipped:
            writer.writerow((f.cell, f.against, query_id, before, after))
    return buffer.getvalue()


def render_flips(flips: Sequence[FlipRate]) -> list[str]:
    """The ``compat.md`` section: one row per compared cell, the highest negative-flip rate first."""
    if not flips:
        return []
    rows = [[escape(f.cell), escape(f.against), str(f.n), pct(f.negative), pct(f.positive)] for f in _worst_first(flips)]
    return [
        "## Flips",
        "",
        ("Queries correct at top-1 in the reference cell and wrong in the cell (negative flips), and the reverse "
         "(positive flips), in percent of the queries with a positive in both; the queries are listed in flips.csv."),
        "",
        *table(["cell", "against", "queries", "negative flips", "positive flips"], rows),
        "",
    ]


@dataclass(frozen=True)
class ClassDrop:
    """CMC@1 of one query label in the reference cell (``before``) and in the upgraded cell (``after``)."""

    label: int
    n: int
    before: float
    after: float

    @property
    def drop(self) -> float:
        return self.before - self.after


@dataclass(frozen=True)
class ClassView:
    """Per-class CMC@1 of ``cell`` against ``against``, the largest drop first."""

    cell: str
    against: str
    classes: tuple[ClassDrop, ...]

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell, "against": self.against,
                "classes": [{"label": c.label, "n": c.n, "before": c.before, "after": c.after, "drop": c.drop}
                            for c in self.classes]}


def class_view(after: Top1, before: Top1, cell: str, against: str) -> ClassView:
    """CMC@1 per query label over the queries paired between the two cells."""
    _, ra, rb = _paired(after, before)
    labels = after.labels[ra]
    out = []
    for label in np.unique(labels):
        rows = labels == label
        out.append(ClassDrop(int(label), int(rows.sum()), float(before.hit[rb[rows]].mean()),
                             float(after.hit[ra[rows]].mean())))
    out.sort(key=lambda c: (-c.drop, c.label))
    return ClassView(cell, against, tuple(out))


def render_classes(view: ClassView | None, limit: int = CLASS_ROWS_SHOWN) -> list[str]:
    """The ``compat.md`` section: the classes whose CMC@1 dropped most (at most ``limit``)."""
    if view is None:
        return []
    dropped = [c for c in view.classes if c.drop > 0][:limit]
    head = [
        "## Classes that lost most",
        "",
        (f"CMC@1 per query class, {escape(view.cell)} against {escape(view.against)}, over the queries with a "
         "positive in both: the slices to look at before a release."),
        "",
    ]
    if not dropped:
        return [*head, "No class lost CMC@1.", ""]
    rows = [[str(c.label), str(c.n), pct(c.before), pct(c.after), pp(-c.drop)] for c in dropped]
    return [*head, *table(["class", "queries", escape(view.against), escape(view.cell), "change"], rows), ""]
