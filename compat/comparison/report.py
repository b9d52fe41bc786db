"""Reports of a run comparison: ``compare.json`` and ``compare.md``, written all-or-nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from compat._atomic import write_all_or_nothing
from compat.comparison.compare import RunComparison
from compat.jsontext import report_json
from compat.markdown import escape, pct, pp, table

__all__ = ["JSON_NAME", "MARKDOWN_NAME", "render_markdown", "to_json", "write_reports"]

JSON_NAME = "compare.json"
MARKDOWN_NAME = "compare.md"

_VERDICT = {"A": "A better", "B": "B better", "tie": "no difference"}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def to_json(comparison: RunComparison) -> dict[str, Any]:
    """The ``compare.json`` document (docs/design.md, "compare.json")."""
    a, b = comparison.run_a, comparison.run_b
    return {
        "run_a": str(a.source), "run_b": str(b.source),
        "protocol": a.protocol.value, "similarity": a.similarity.value,
        "versions": [{"a": va, "b": vb} for va, vb in comparison.versions],
        "metrics": list(comparison.metrics),
        "confidence": comparison.confidence, "n_resamples": comparison.n_resamples, "seed": comparison.seed,
        "cells": [
            {"metric": c.metric, "a": "/".join(c.cell_a), "b": "/".join(c.cell_b), "value_a": c.value_a,
             "value_b": c.value_b, "difference": _finite(c.difference.value), "ci_low": _finite(c.difference.low),
             "ci_high": _finite(c.difference.high), "n_queries": c.n_queries, "verdict": c.verdict}
            for c in comparison.cells
        ],
    }


def render_markdown(comparison: RunComparison) -> str:
    """``compare.md``: per metric, every shared cell in A and B, ``A - B`` and its interval."""
    a, b = comparison.run_a, comparison.run_b
    level = f"{100 * comparison.confidence:g}%"
    lines = [
        "# Run comparison",
        "",
        (f"A: {escape(a.source)} · B: {escape(b.source)} · protocol {a.protocol.value} · paired bootstrap over "
         f"queries, {comparison.n_resamples} resamples, seed {comparison.seed}"),
        "",
    ]
    for metric in comparison.metrics:
        rows = []
        for c in (c for c in comparison.cells if c.metric == metric):
            d = c.difference
            cell = "/".join(c.cell_a) if c.cell_a == c.cell_b else f"{'/'.join(c.cell_a)} vs {'/'.join(c.cell_b)}"
            rows.append([escape(cell), pct(c.value_a), pct(c.value_b), pp(d.value), f"[{pp(d.low)}, {pp(d.high)}]",
                         str(c.n_queries), _VERDICT[c.verdict]])
        header = ["cell (query/gallery)", "A (%)", "B (%)", "A - B", f"{level} interval", "queries", "verdict"]
        lines += [f"## {escape(metric)}", "", *table(header, rows), ""]
    return "\n".join(lines)


def write_reports(comparison: RunComparison, out_dir: str | Path) -> list[Path]:
    """Write ``compare.json`` and ``compare.md`` into ``out_dir`` (created if needed), all or nothing."""
    document = to_json(comparison)
    markdown = render_markdown(comparison)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_all_or_nothing(out, {
        JSON_NAME: lambda p: p.write_text(report_json(document), encoding="utf-8"),
        MARKDOWN_NAME: lambda p: p.write_text(markdown, encoding="utf-8"),
    })
