"""The retrieval evaluator: configure once, evaluate many (query, gallery) cells."""

from __future__ import annotations

import os
from dataclasses import replace
from enum import Enum

import numpy as np

from compat.choices import parse_choice
from compat.device import resolve_device
from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.knn import (
    DEFAULT_MEMORY_BUDGET,
    Backend,
    Similarity,
    parse_memory_budget,
    resolve_backend,
)
from compat.retrieval.metrics import Metric, MetricKind, RetrievalResult, parse_metrics
from compat.retrieval.precision import Precision, check_precision
from compat.retrieval.protocols import leave_one_out, pair_verification, template_identification
from compat.retrieval.qrels import Qrels
from compat.retrieval.query_gallery import Exclude, query_gallery
from compat.retrieval.sampling import sample_queries
from compat.retrieval.sharding import local_part

__all__ = ["DEFAULT_FOLDS", "DEFAULT_METRICS", "DEFAULT_PAIRS", "Protocol", "RetrievalEvaluator"]

DEFAULT_METRICS = ("cmc@1", "cmc@5", "map")
# Pair verification: positive (and as many negative) pairs, and the folds of the threshold choice.
DEFAULT_PAIRS = 3000
DEFAULT_FOLDS = 10


class Protocol(str, Enum):
    LOO = "loo"
    QUERY_GALLERY = "query-gallery"
    TEMPLATE = "template"
    PAIRS = "pairs"


_ALLOWED = {
    Protocol.LOO: {MetricKind.CMC, MetricKind.MAP, MetricKind.MAP_AT_R, MetricKind.MAP_AT_K},
    Protocol.QUERY_GALLERY: {MetricKind.CMC, MetricKind.MAP, MetricKind.MAP_AT_R},
    Protocol.TEMPLATE: {MetricKind.CMC, MetricKind.MAP},
    Protocol.PAIRS: {MetricKind.ACC},
}


class RetrievalEvaluator:
    """Evaluates query features against gallery features under one protocol.

    Args:
        metrics: names such as ``cmc@1``, ``cmc@5``, ``map``, ``map@r`` (loo, query-gallery), ``map@10``
            (loo); ``cmc@k``, ``map`` (template); ``acc`` (pairs). ``None``: ``cmc@1, cmc@5, map`` or
            ``acc`` for pairs.
        protocol: ``loo`` (default), ``query-gallery``, ``template`` or ``pairs``.
        similarity: ``cosine`` (default) or ``l2``.
        backend: ``auto``, ``torch`` or ``faiss`` for the top-k search.
        device: ``auto``, ``cpu`` or ``cuda``.
        memory_budget: bytes or a size string (default 1GiB) bounding the score blocks.
        pairs: positive (and negative) pairs for the ``pairs`` protocol.
        folds: folds for the verification threshold.
        seed: seed of the pair sampler and fold split.
        threads: CPU threads for ranking (default: torch's thread count).
        progress: a bar over the query chunks of large cells, on a terminal.
        query_sample: evaluate a seeded sample of this many queries per cell, stratified by label
            (:func:`compat.retrieval.sampling.sample_queries`, drawn with ``seed``); ``None``: all.
        search_precision: inputs of the top-k search's scores with the torch backend: ``fp32``, or
            ``tf32`` / ``fp16`` / ``bf16`` (tensor cores on CUDA; the neighbours stay exact,
            :mod:`compat.retrieval.precision`). Full-ranking metrics count ranks on float32 scores.
        dist: under torchrun, the ranks share each leave-one-out gallery (:mod:`compat.retrieval.sharding`)
            and every rank returns the same result; template and pair cells are computed whole on
            every rank; the query-gallery protocol runs in one process only.
        exclude: ``query-gallery`` only: ``same-group`` ignores the gallery items that would be
            positives and share the query's group (re-identification); ``none`` (default).
        qrels: ``query-gallery`` only: a relevance file replacing label relevance.

    Example:
        >>> ev = RetrievalEvaluator(metrics=("cmc@1", "map"))
        >>> result = ev.evaluate(query=new_features, gallery=old_features)   # doctest: +SKIP
        >>> result["cmc@1"]                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        metrics: tuple[str, ...] | list[str] | None = None,
        *,
        protocol: Protocol | str = Protocol.LOO,
        similarity: Similarity | str = Similarity.COSINE,
        backend: Backend | str = Backend.AUTO,
        device: str = "auto",
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        pairs: int = DEFAULT_PAIRS,
        folds: int = DEFAULT_FOLDS,
        seed: int = 0,
        threads: int | None = None,
        progress: bool = False,
        query_sample: int | None = None,
        search_precision: Precision | str = Precision.FP32,
        dist: DistributedContext | None = None,
        exclude: Exclude | str = Exclude.NONE,
        qrels: Qrels | None = None,
    ):
        self.protocol: Protocol = parse_choice(Protocol, protocol, "protocol")
        if metrics is None:
            metrics = ("acc",) if self.protocol is Protocol.PAIRS else DEFAULT_METRICS
        self.metrics: tuple[Metric, ...] = parse_metrics(tuple(metrics))
        for m in self.metrics:
            if m.kind not in _ALLOWED[self.protocol]:
                allowed = ", ".join(
                    sorted({MetricKind.CMC: "cmc@K", MetricKind.MAP_AT_K: "map@K"}.get(k, k.value)
                           for k in _ALLOWED[self.protocol])
                )
                raise CompatError(
                    f"metric: {m.name!r} is not defined for protocol {self.protocol.value!r}; expected {allowed}"
                )
        self.similarity: Similarity = parse_choice(Similarity, similarity, "similarity")
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.memory_budget = parse_memory_budget(memory_budget)
        if pairs < 1 or folds < 2:
            raise CompatError(f"pairs/folds: need pairs >= 1 and folds >= 2, got {pairs} and {folds}")
        if self.protocol is Protocol.PAIRS and folds > 2 * pairs:
            raise CompatError(f"folds: {folds} folds need at least {folds} pairs in all, but {pairs} positive and "
                              f"{pairs} negative pairs are {2 * pairs}; an empty fold has no accuracy")
        self.pairs, self.folds, self.seed = pairs, folds, seed
        self.threads = threads or _default_threads()
        self.progress = progress
        if query_sample is not None and (query_sample < 1 or self.protocol is Protocol.PAIRS):
            raise CompatError(f"query_sample: expected a positive number of queries for protocol loo, "
                              f"query-gallery or template, "
                              f"got {query_sample} with protocol {self.protocol.value!r}")
        self.query_sample = query_sample
        self.search_precision = parse_choice(Precision, search_precision, "search_precision")
        check_precision(self.search_precision, self.similarity is Similarity.L2, self.backend is Backend.TORCH)
        self.dist = dist or DistributedContext.single()
        if self.dist.enabled and self.protocol is Protocol.QUERY_GALLERY:
            raise CompatError(f"protocol: query-gallery runs in one process, not over {self.dist.world_size} "
                              "torchrun ranks; run it without torchrun")
        self.exclude: Exclude = parse_choice(Exclude, exclude, "exclude")
        self.qrels = qrels
        if (self.exclude is not Exclude.NONE or qrels is not None) and self.protocol is not Protocol.QUERY_GALLERY:
            option = "--qrels" if qrels is not None else "--exclude"
            raise CompatError(f"{option}: needs the query-gallery protocol, not {self.protocol.value!r}")

    def _check_rows(self, query, gallery, where: str) -> None:
        """Rows the similarity can score; a gallery shared between ranks (loo) is checked by each rank
        on its own part only, so no rank reads the whole gallery for it."""
        offset, part = local_part(gallery, self.dist) if self.protocol is Protocol.LOO else (0, gallery)
        check = _check_nonzero if self.similarity is Similarity.COSINE else _check_l2_range
        check(query, f"{where} (queries)")
        check(part, f"{where} (gallery)", offset=offset)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def evaluate(self, query: FeatureSet, gallery: FeatureSet) -> RetrievalResult:
        """Evaluate one cell: ``query`` searches ``gallery`` (leave-one-out by id for ``loo``)."""
        where = f"{query.source} on {gallery.source}"
        if query.dim != gallery.dim:
            raise CompatError(f"{where}: feature sizes differ ({query.dim} vs {gallery.dim}); use a dimension policy")
        return self.evaluate_arrays(
            query.features, query.labels, query.ids, gallery.features, gallery.labels, gallery.ids, where=where,
            query_groups=query.groups, gallery_groups=gallery.groups,
        )

    def evaluate_arrays(
        self,
        query: np.ndarray,
        query_labels: np.ndarray,
        query_ids: np.ndarray,
        gallery: np.ndarray,
        gallery_labels: np.ndarray,
        gallery_ids: np.ndarray,
        *,
        where: str = "cell",
        query_groups: np.ndarray | None = None,
        gallery_groups: np.ndarray | None = None,
    ) -> RetrievalResult:
        """Evaluate arrays directly: (Nq, D) / (Nq,) / (Nq,) against (Ng, D) / (Ng,) / (Ng,); groups
        (Nq,) / (Ng,) for the query-gallery protocol's ``same-group`` exclusion."""
        if self.query_sample is not None and self.query_sample < len(query_ids):
            rows = sample_queries(query_labels, query_ids, self.query_sample, seed=self.seed)
            sub = self.evaluate_arrays(np.asarray(query[rows]), query_labels[rows], query_ids[rows], gallery,
                                       gallery_labels, gallery_ids, where=where, gallery_groups=gallery_groups,
                                       query_groups=None if query_groups is None else query_groups[rows])
            return _expanded(sub, rows, len(query_ids))
        self.dist.agree(lambda: self._check_rows(query, gallery, where), close=False)
        cell = (query, query_labels, query_ids, gallery, gallery_labels, gallery_ids, self.metrics)
        if self.protocol is Protocol.QUERY_GALLERY:
            return query_gallery(*cell, query_groups=query_groups, gallery_groups=gallery_groups,
                                 exclude=self.exclude, qrels=self.qrels, similarity=self.similarity,
                                 backend=self.backend.value, device=self.device, memory_budget=self.memory_budget,
                                 threads=self.threads, where=where, progress=self.progress)
        if self.protocol is Protocol.LOO:
            return leave_one_out(*cell, similarity=self.similarity, backend=self.backend.value, device=self.device,
                                 memory_budget=self.memory_budget, threads=self.threads, where=where,
                                 progress=self.progress, dist=self.dist, precision=self.search_precision)
        if self.protocol is Protocol.TEMPLATE:
            return template_identification(*cell, similarity=self.similarity, memory_budget=self.memory_budget,
                                           where=where)
        return pair_verification(*cell, similarity=self.similarity, n_pairs=self.pairs, folds=self.folds,
                                 seed=self.seed, where=where)


def _expanded(sub: RetrievalResult, rows: np.ndarray, n: int) -> RetrievalResult:
    """A sampled cell's result with one row per query of the whole set (the others not counted)."""
    per_query = {}
    for name, values in sub.per_query.items():
        full = np.zeros(n)
        full[rows] = values
        per_query[name] = full
    counted = np.zeros(n, dtype=bool)
    counted[rows] = sub.counted
    top1 = hit1 = None
    if sub.top1 is not None:
        top1, hit1 = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool)
        top1[rows], hit1[rows] = sub.top1, sub.hit1
    return replace(sub, per_query=per_query, counted=counted, sampled_from=n, top1=top1, hit1=hit1)


def _default_threads() -> int:
    try:
        import torch

        return max(1, torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        return max(1, (os.cpu_count() or 1))


def _check_nonzero(x: np.ndarray, where: str, rows: int = 1 << 16, offset: int = 0) -> None:
    """Cosine similarity is undefined for an all-zero feature (rows of ``x`` are rows ``offset..`` of the set)."""
    for s in range(0, len(x), rows):
        zero = ~np.any(x[s : s + rows] != 0, axis=1)
        if zero.any():
            raise CompatError(
                f"{where}: feature row {offset + s + int(np.flatnonzero(zero)[0])} is all zeros; "
                "cosine similarity needs non-zero features"
            )


# Under l2 the backends score in float32: a squared distance must stay far below float32's largest
# value (3.4e38), so features are kept within norm 1e18 (cosine normalises any finite row instead).
_L2_MAX_NORM = 1e18


def _check_l2_range(x: np.ndarray, where: str, rows: int = 1 << 16, offset: int = 0) -> None:
    """Squared L2 distances of these features must not overflow float32 (a bound: largest |value| x sqrt(D))."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    largest = max(max(abs(float(b.max())), abs(float(b.min()))) for b in (x[s : s + rows] for s in range(0, len(x), rows)))
    if largest * np.sqrt(x.shape[1]) > _L2_MAX_NORM:
        raise CompatError(
            f"{where}: a feature value of magnitude {largest:.3g}; --similarity l2 scores squared distances in "
            f"float32 and needs |value| x sqrt(D) below {_L2_MAX_NORM:g} (rescale the features, or use cosine)"
        )
