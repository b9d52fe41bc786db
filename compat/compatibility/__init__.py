"""Compatibility over a chain of model versions: the matrix, its summaries and reports."""

from compat.compatibility.matrix import (
    Cell,
    CompatibilityReport,
    DimPolicy,
    Version,
    apply_dim_policy,
    evaluate_chain,
)
from compat.compatibility.summary import MetricSummary, ecc_matrix, summarize, update_gain

__all__ = [
    "Cell",
    "CompatibilityReport",
    "DimPolicy",
    "MetricSummary",
    "Version",
    "apply_dim_policy",
    "ecc_matrix",
    "evaluate_chain",
    "summarize",
    "update_gain",
]
