"""The chain's matrices through the production index: ANN values, recall, and their summaries.

:class:`IndexedChain` is what :func:`compat.compatibility.matrix.evaluate_chain` calls beside every
exact cell when an index is named: each gallery version's index is built (or opened) once, every
cell (i, j) searches index j with version i's queries, and :meth:`IndexedChain.report` summarises
the ANN matrices exactly as the exact ones are summarised. :class:`IndexReport` is the ``"index"``
key of ``compat.json``; :func:`render_index_markdown` its section of ``compat.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compat.compatibility.cell import ArrayTransform, DimPolicy
from compat.compatibility.indexed import GalleryIndexes, IndexSetup, evaluate_index_cell, index_metrics
from compat.compatibility.summary import MetricSummary, ecc_matrix, summarize
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.markdown import UNDEFINED, escape, mark, num, pct, pp, table
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
from compat.retrieval.index import build_index, search_parameters

__all__ = ["IndexReport", "IndexedChain", "render_index_markdown", "summarize_partial"]

Matrix = list[list[float | None]]


@dataclass(frozen=True)
class IndexReport:
    """Everything a chain measured through its galleries' indexes.

    Attributes:
        factory: the factory string the indexes were built with (``None``: stored files only).
        params: the search parameters in effect (``nprobe``, ``ef_search``), ``k``, ``train_size``, ``seed``.
        files: version name -> stored index file, for the galleries searched as stored.
        metrics: ``cmc@K`` and ``map@K`` names, in order.
        matrices: metric -> T x T, ``[i][j]`` version i's queries through gallery j's index;
            ``None`` above the diagonal and where gallery j has no index.
        recall: T x T mean recall@k of the index against the exact top-k of the same cell.
        summary: metric -> AC / AM / BC / FC / ECC / update gain of the ANN matrix.
    """

    factory: str | None
    params: dict[str, Any]
    files: dict[str, str]
    metrics: tuple[str, ...]
    matrices: dict[str, Matrix]
    recall: Matrix
    summary: dict[str, MetricSummary]

    def to_json(self) -> dict[str, Any]:
        """The ``"index"`` key of ``compat.json`` (docs/design.md)."""
        out: dict[str, Any] = {
            "factory": self.factory,
            "params": self.params,
            "metrics": {m: self.matrices[m] for m in self.metrics},
            "recall": self.recall,
            "summary": {m: self.summary[m].to_json() for m in self.metrics},
        }
        if self.files:
            out["files"] = self.files
        return out

    @property
    def label(self) -> str:
        """``IVF1024,PQ16 (nprobe 16)``, naming the stored files too."""
        what = [self.factory] if self.factory else []
        what += [f"{v}: {p}" for v, p in self.files.items()]
        params = ", ".join(f"{k} {v}" for k, v in self.params.items() if k in ("nprobe", "ef_search"))
        return "; ".join(what) + (f" ({params})" if params else "")


def summarize_partial(m: Matrix, *, strict: bool = True, reference_self: float | None = None) -> MetricSummary:
    """:func:`summarize` where every lower cell is defined; otherwise the ECC where both of its cells
    are, AC over those pairs, and no AM, BC, FC or update gain."""
    t = len(m)
    if all(m[i][j] is not None for i in range(t) for j in range(i + 1)):
        return summarize(m, strict=strict, reference_self=reference_self)
    ecc = ecc_matrix([[0.0 if v is None else v for v in row] for row in m], strict=strict)
    for i in range(t):
        for j in range(i):
            if m[i][j] is None or m[j][j] is None:
                ecc[i][j] = None
    pairs = [ecc[i][j] for i in range(t) for j in range(i) if ecc[i][j] is not None]
    ac = sum(pairs) / len(pairs) if pairs else None
    return MetricSummary(ac=ac, am=None, bc=None, fc=None, ecc=ecc, update_gain=None)


class IndexedChain:
    """Collects the ANN cells of one chain evaluation.

    Args:
        setup: factory string, search parameters and stored files.
        evaluator: the chain's evaluator (protocol, similarity, device, metrics).
        names: version names, oldest first.
        dim_policy: the chain's dimension policy.
    """

    def __init__(self, setup: IndexSetup, evaluator: RetrievalEvaluator, names: Sequence[str], dim_policy: DimPolicy):
        if evaluator.protocol is not Protocol.LOO:
            raise CompatError(f"index: an index is searched under protocol loo only, not {evaluator.protocol.value}")
        unknown = [name for name in setup.files if name not in names]
        if unknown:
            raise CompatError(f"--index-file: {unknown[0]!r} is not one of the versions ({', '.join(names)})")
        self.setup, self.evaluator, self.dim_policy = setup, evaluator, dim_policy
        self.indexes = GalleryIndexes(setup, evaluator)
        self.metrics = tuple(m.name for m in index_metrics(evaluator.metrics, setup.spec.k))
        t = len(names)
        self.names = tuple(names)
        self.matrices: dict[str, Matrix] = {m: [[None] * t for _ in range(t)] for m in self.metrics}
        self.recall: Matrix = [[None] * t for _ in range(t)]

    def prepare(self, galleries: Sequence[FeatureSet]) -> None:
        """Build or open every gallery's index up front, so that a bad index fails before any cell."""
        for name, gallery in zip(self.names, galleries, strict=True):
            if self.indexes.covers(name):
                self.indexes.get(name, gallery)

    def evaluate(self, i: int, j: int, query: FeatureSet, gallery: FeatureSet, *,
                 transform: ArrayTransform | None, where: str) -> None:
        """Cell (i, j) through gallery j's index (nothing when gallery j has none)."""
        name = self.names[j]
        if not self.indexes.covers(name):
            return
        cell = evaluate_index_cell(self.evaluator, query, gallery, self.indexes.get(name, gallery),
                                   k=self.setup.spec.k, dim_policy=self.dim_policy, transform=transform, where=where)
        for m in self.metrics:
            self.matrices[m][i][j] = cell.result.values[m]
        self.recall[i][j] = cell.recall

    def report(self, *, strict: bool = True, independent: FeatureSet | None = None) -> IndexReport:
        """The matrices and their summaries; the update gain's reference is ``independent`` searched
        through an index built on itself with the same factory (when there is one)."""
        spec = self.setup.spec
        reference: dict[str, float] = {}
        if independent is not None and spec.factory is not None:
            index = build_index(independent.features, spec, similarity=self.evaluator.similarity,
                                device=self.evaluator.device, where=f"independent ({independent.source})")
            cell = evaluate_index_cell(self.evaluator, independent, independent, index, k=spec.k,
                                       where=f"independent ({independent.source})")
            reference = cell.result.values
        built = self.indexes.built
        params: dict[str, Any] = search_parameters(next(iter(built.values())).index) if built else {}
        params |= {"k": spec.k, "train_size": spec.train_size, "seed": spec.seed}
        summary = {m: summarize_partial(self.matrices[m], strict=strict, reference_self=reference.get(m))
                   for m in self.metrics}
        files = {name: str(f.path) for name, f in self.setup.files.items()}
        return IndexReport(spec.factory, params, files, self.metrics, self.matrices, self.recall, summary)


def render_index_markdown(index: IndexReport, exact: dict[str, Matrix], versions: Sequence[str]) -> str:
    """The ``compat.md`` section: per metric the ANN matrix with the exact value beside each cell,
    the criterion on the ANN values, their summaries, then the recall matrix."""
    names = [escape(v) for v in versions]
    header = ["query \\ gallery", *names]
    lines = [f"## Through the index {escape(index.label)}", "",
             ("Cells: ANN value through gallery j's index (exact value in brackets), in percent; "
              "the criterion is checked on the ANN values."), ""]
    for metric in index.metrics:
        ann, s = index.matrices[metric], index.summary[metric]
        rows = []
        for i, name in enumerate(names):
            row = [f"**{name}**"]
            for j in range(len(names)):
                if j > i or ann[i][j] is None:
                    row.append(UNDEFINED)
                    continue
                exact_value = exact.get(metric, [[None] * len(names)] * len(names))[i][j]
                cell = pct(ann[i][j]) + ("" if exact_value is None else f" ({pct(exact_value)})")
                row.append(cell + (f" {mark(s.ecc[i][j])}" if j < i and s.ecc[i][j] is not None else ""))
            rows.append(row)
        stats = (f"AC {num(s.ac)} · AM {pct(s.am)}% · BC {pp(s.bc)} · FC {pp(s.fc)} · "
                 f"update gain {num(s.update_gain)}")
        lines += [f"### {escape(metric)} through the index", "", *table(header, rows), "", stats, ""]
    recall_rows = [[f"**{name}**", *(UNDEFINED if j > i or index.recall[i][j] is None else pct(index.recall[i][j])
                                     for j in range(len(names)))] for i, name in enumerate(names)]
    k = index.params.get("k")
    lines += [f"### Recall@{k} of the index", "", f"Share of each query's exact top-{k} that the index returned.", "",
              *table(header, recall_rows), ""]
    return "\n".join(lines)
