"""Comparing two evaluated runs on the same queries: every shared cell's difference with a paired
bootstrap interval (the gate's machinery), so that "A beats B" is a statement with an interval.

``compare_runs(run_a, run_b)`` returns a :class:`RunComparison`; ``write_reports`` writes
``compare.json`` and ``compare.md``. A run is a ``compat train`` output directory or a
``compat.json`` beside its feature sets (:func:`load_run`).
"""

from compat.comparison.compare import CellDifference, RunComparison, compare_runs, paired_difference
from compat.comparison.report import render_markdown, to_json, write_reports
from compat.comparison.runs import Run, load_run

__all__ = [
    "CellDifference",
    "Run",
    "RunComparison",
    "compare_runs",
    "load_run",
    "paired_difference",
    "render_markdown",
    "to_json",
    "write_reports",
]
