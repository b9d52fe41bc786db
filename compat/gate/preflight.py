"""What :func:`compat.gate.run_gate` checks before any cell is evaluated: the evaluator computes what
the policy needs, an index goes where it can be searched, the query sets fit the protocol, and the
models hold the same items with the same labels."""

from __future__ import annotations

from compat.compatibility.cell import check_cell_inputs
from compat.compatibility.items import check_items, check_labels
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.gate.policy import CheckKind, CheckSpec, GatePolicy
from compat.gate.statistics import INDEPENDENT, NEW, OLD
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
from compat.retrieval.index import IndexSpec
from compat.retrieval.metrics import parse_metric

__all__ = ["check_inputs", "query_sets", "with_index"]


def with_index(spec: CheckSpec, index: IndexSpec | None) -> CheckSpec:
    """The check with the command line's index when it names none and its metric allows one
    (``negative_flips`` stays exact)."""
    if (spec.index is not None or index is None or spec.kind is CheckKind.NEGATIVE_FLIPS
            or not parse_metric(spec.metric).from_top_k):
        return spec
    return spec.model_copy(update={"index": index})


def check_inputs(policy: GatePolicy, evaluator: RetrievalEvaluator, independent: FeatureSet | None, *,
                  indexed: bool = False) -> None:
    """The evaluator can compute what the policy needs, and a required check has its input."""
    if evaluator.protocol is Protocol.PAIRS:
        raise CompatError("protocol: the gate needs per-query values; use protocol loo, query-gallery or template, "
                          "not pairs")
    if indexed and evaluator.protocol is not Protocol.LOO:
        raise CompatError(f"index: an index is searched under protocol loo only, not {evaluator.protocol.value}")
    if indexed and evaluator.dist.enabled:
        raise CompatError(f"index: an index is searched in one process, not over {evaluator.dist.world_size} "
                          "torchrun ranks; run the gate without torchrun")
    if indexed and evaluator.query_sample is not None:
        raise CompatError("index: an index is searched with every query; leave out --query-sample")
    missing = [m for m in policy.metrics if m not in evaluator.metric_names]
    if missing:
        raise CompatError(f"evaluator: it does not compute {', '.join(missing)}, which the policy's checks use")
    for spec in policy.checks:
        if spec.kind is CheckKind.UPDATE_GAIN and spec.required and independent is None:
            raise CompatError(
                f"policy check {spec.label!r}: a required update_gain check needs the features of an "
                "independently trained model (--independent)"
            )


def query_sets(evaluator: RetrievalEvaluator, models: dict[str, FeatureSet], old_query: FeatureSet | None,
                new_query: FeatureSet | None, independent_query: FeatureSet | None) -> dict[str, FeatureSet]:
    """The models' separate query sets (query-gallery), checked with the models."""
    if independent_query is not None and INDEPENDENT not in models:
        raise CompatError("--independent-query: needs --independent (the independent model's gallery)")
    given = {OLD: old_query, NEW: new_query, INDEPENDENT: independent_query}
    queries = {label: fs for label, fs in given.items() if fs is not None}
    _check_queries(evaluator, models, queries)
    return queries


def _check_queries(evaluator: RetrievalEvaluator, models: dict[str, FeatureSet], queries: dict[str, FeatureSet]) -> None:
    """The query-gallery protocol has a query set for every model that queries; the sets fit the protocol;
    under ``loo`` every model holds the same items; an id has one label in every set."""
    if evaluator.protocol is Protocol.QUERY_GALLERY:
        for label in (OLD, NEW, INDEPENDENT):
            if label in models and label not in queries:
                raise CompatError(f"--{label}-query: the query-gallery protocol needs the {label} model's query "
                                  f"features besides its gallery ({models[label].source})")
    querying = [queries.get(label, models[label]) for label in (OLD, NEW, INDEPENDENT) if label in models]
    check_cell_inputs(evaluator, querying, list(models.values()))
    if evaluator.protocol is Protocol.LOO:  # cells compared query by query must be over the same items
        check_items(list(models.items()))
    check_labels(list(models.items()))
    check_labels([(f"{label} (queries)", fs) for label, fs in queries.items()])
