"""Compatibility over a chain of model versions: the matrix, its summaries and reports."""

from compat.compatibility.cell import DimPolicy, apply_dim_policy, check_cell_inputs, compatible_dim, evaluate_cell
from compat.compatibility.flips import ClassView, FlipRate, Top1, chain_flips, class_view, compare_top1
from compat.compatibility.index_report import IndexReport
from compat.compatibility.indexed import IndexFile, IndexSetup, evaluate_index_cell
from compat.compatibility.matrix import Cell, CompatibilityReport, Version, evaluate_chain
from compat.compatibility.summary import MetricSummary, ecc_matrix, summarize, update_gain

__all__ = [
    "Cell",
    "ClassView",
    "CompatibilityReport",
    "DimPolicy",
    "FlipRate",
    "IndexFile",
    "IndexReport",
    "IndexSetup",
    "MetricSummary",
    "Top1",
    "Version",
    "apply_dim_policy",
    "chain_flips",
    "check_cell_inputs",
    "class_view",
    "compare_top1",
    "compatible_dim",
    "ecc_matrix",
    "evaluate_cell",
    "evaluate_chain",
    "evaluate_index_cell",
    "summarize",
    "update_gain",
]
