"""Exact retrieval: k-nearest-neighbour backends, metrics, relevance files and the four evaluation protocols."""

from compat.retrieval.evaluator import DEFAULT_METRICS, Protocol, RetrievalEvaluator
from compat.retrieval.index import GalleryIndex, IndexSpec, build_index
from compat.retrieval.index_file import load_index
from compat.retrieval.knn import Backend, Similarity, knn
from compat.retrieval.metrics import Metric, RetrievalResult, parse_metric
from compat.retrieval.protocols import leave_one_out, pair_verification, template_identification
from compat.retrieval.qrels import Qrels, load_qrels
from compat.retrieval.query_gallery import Exclude, query_gallery

__all__ = [
    "DEFAULT_METRICS",
    "Backend",
    "Exclude",
    "GalleryIndex",
    "IndexSpec",
    "Metric",
    "Protocol",
    "Qrels",
    "RetrievalEvaluator",
    "RetrievalResult",
    "Similarity",
    "build_index",
    "knn",
    "leave_one_out",
    "load_index",
    "load_qrels",
    "pair_verification",
    "parse_metric",
    "query_gallery",
    "template_identification",
]
