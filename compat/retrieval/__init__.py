"""Exact retrieval: k-nearest-neighbour backends, metrics and the three evaluation protocols."""

from compat.retrieval.evaluator import DEFAULT_METRICS, Protocol, RetrievalEvaluator
from compat.retrieval.index import GalleryIndex, IndexSpec, build_index
from compat.retrieval.index_file import load_index
from compat.retrieval.knn import Backend, Similarity, knn
from compat.retrieval.metrics import Metric, RetrievalResult, parse_metric
from compat.retrieval.protocols import leave_one_out, pair_verification, template_identification

__all__ = [
    "DEFAULT_METRICS",
    "Backend",
    "GalleryIndex",
    "IndexSpec",
    "Metric",
    "Protocol",
    "RetrievalEvaluator",
    "RetrievalResult",
    "Similarity",
    "build_index",
    "knn",
    "leave_one_out",
    "load_index",
    "pair_verification",
    "parse_metric",
    "template_identification",
]
