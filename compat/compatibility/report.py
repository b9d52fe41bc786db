"""Reports of a compatibility evaluation: ``compat.json``, ``compat.md`` and the heatmap ``compat.png``.

:func:`write_reports` writes the three files all-or-nothing: they are rendered into a temporary
directory first and only then moved into place, so a failure never leaves a partial report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compat._atomic import write_all_or_nothing
from compat.compatibility.flips import flips_csv, render_classes, render_flips
from compat.jsontext import report_json
from compat.markdown import FAIL_MARK, PASS_MARK, UNDEFINED, escape, num, pct, pp, table

if TYPE_CHECKING:
    from compat.compatibility.matrix import CompatibilityReport

__all__ = [
    "FLIPS_NAME",
    "HEATMAP_NAME",
    "JSON_NAME",
    "MARKDOWN_NAME",
    "plot_heatmaps",
    "render_markdown",
    "write_reports",
]

JSON_NAME = "compat.json"
MARKDOWN_NAME = "compat.md"
HEATMAP_NAME = "compat.png"
FLIPS_NAME = "flips.csv"

def _metric_section(report: CompatibilityReport, metric: str) -> list[str]:
    names = [escape(v) for v in report.versions]
    matrix = report.matrices[metric]
    s = report.summary[metric]
    rows = []
    for i, name in enumerate(names):
        row = [f"**{name}**"]
        for j in range(len(names)):
            if j > i:
                row.append(UNDEFINED)
                continue
            cell = pct(matrix[i][j])
            if j < i and s.ecc[i][j] is not None:
                cell += " " + (PASS_MARK if s.ecc[i][j] else FAIL_MARK)
            row.append(cell)
        rows.append(row)
    pairs = [s.ecc[i][j] for i in range(len(names)) for j in range(i)]
    ac = num(s.ac)
    if pairs:
        ac += f" ({sum(bool(p) for p in pairs)}/{len(pairs)} pairs)"
    stats = f"AC {ac} · AM {pct(s.am)}% · BC {pp(s.bc)} · FC {pp(s.fc)} · update gain {num(s.update_gain)}"
    return [f"## {escape(metric)}", "", *table(["query \\ gallery", *names], rows), "", stats, ""]


def _queries_section(report: CompatibilityReport) -> list[str]:
    names = [escape(v) for v in report.versions]
    rows = []
    for i, name in enumerate(names):
        row = [f"**{name}**"]
        for j in range(len(names)):
            c = report.queries[i][j] if j <= i else None
            if c is None:
                row.append(UNDEFINED)
            else:
                of = "" if c.sampled_from is None else f" (of {c.sampled_from})"
                row.append(f"{c.n_queries}{of} / {c.n_without_positive}")
        rows.append(row)
    return [
        "## Queries",
        "",
        "Queries evaluated / queries without any positive in the gallery, per cell.",
        "",
        *table(["query \\ gallery", *names], rows),
        "",
    ]


def _how_computed(report: CompatibilityReport) -> list[str]:
    """A line for a sampled or distributed evaluation (nothing otherwise)."""
    parts = []
    if report.query_sample is not None:
        parts.append(f"queries: a sample of {report.query_sample.n} per cell, stratified by label "
                     f"(seed {report.query_sample.seed}); values are means over the sample")
    if report.ranks > 1:
        parts.append(f"computed by {report.ranks} ranks")
    return [" · ".join(parts).capitalize(), ""] if parts else []


def render_markdown(report: CompatibilityReport) -> str:
    """The ``compat.md`` report.

    Per metric: the lower-triangular matrix in percent (rows: query version, columns: gallery
    version), off-diagonal cells marked ✓ / ✗ by the empirical compatibility criterion, then AC,
    AM (percent), BC and FC (signed percentage points) and the update gain. Then the query counts,
    the flips, the classes that lost most and any warnings; and with an index the same matrices
    through it, beside the exact values, and its recall.
    """
    lines = [
        "# Compatibility report",
        "",
        f"Versions (oldest first): {', '.join(escape(v) for v in report.versions)} · protocol: {report.protocol}",
        "",
        *_how_computed(report),
        (
            "Cells: queries of the row version against the gallery of the column version, in percent; "
            f"{PASS_MARK} / {FAIL_MARK}: passes / fails the empirical compatibility criterion "
            "(beats the gallery version against itself)."
        ),
        "",
    ]
    if report.notes:
        lines += ["**Notes**", "", *(f"- {escape(note)}" for note in report.notes), ""]
    if report.warnings:
        lines += [*(f"**Warning:** {escape(w)}" for w in report.warnings), ""]
    for metric in report.metrics:
        lines += _metric_section(report, metric)
    lines += _queries_section(report)
    lines += render_flips(report.flips or ())
    lines += render_classes(report.classes)
    if report.index is not None:
        from compat.compatibility.index_report import render_index_markdown

        lines += ["", render_index_markdown(report.index, report.matrices, report.versions)]
    return "\n".join(lines)


def plot_heatmaps(report: CompatibilityReport, path: Path) -> None:
    """Write one heatmap panel per metric to ``path`` (PNG).

    The lower triangle is coloured and annotated in percent; the upper triangle is blank.
    Off-diagonal cells that fail the compatibility criterion get a red frame and a bold ✗.
    With an index, a second row shows each metric through the index and the index's recall.
    The file is byte-for-byte deterministic (no software or time stamp in its metadata).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [[(m, report.matrices[m], report.summary[m].ecc) for m in report.metrics]]
    if report.index is not None:
        index = report.index
        rows.append([(f"{m} via index", index.matrices[m], index.summary[m].ecc) for m in index.metrics]
                    + [(f"recall@{index.params.get('k')}", index.recall, None)])
    t = len(report.versions)
    n = max(len(r) for r in rows)
    side = 1.0 + 0.9 * t
    fig = Figure(figsize=(side * n + 0.6 * n, (side + 0.5) * len(rows) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, panels in enumerate(rows):
        for c in range(n):
            if c < len(panels):
                _panel(axes[r][c], *panels[c], report.versions)
            else:
                axes[r][c].set_axis_off()
    title = f"compatibility ({report.protocol}), %; red frame {FAIL_MARK}: fails the compatibility criterion"
    if report.index is not None:
        title += f"; second row: through the index {report.index.label}"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})


def _panel(ax, title: str, matrix: list[list[float | None]], ecc: list[list[bool | None]] | None,
           versions: tuple[str, ...]) -> None:
    """One annotated lower-triangular heatmap (``ecc`` None: no criterion to mark)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    t = len(versions)
    values = np.full((t, t), np.nan)
    for i in range(t):
        for j in range(i + 1):
            if matrix[i][j] is not None:
                values[i, j] = matrix[i][j]
    if np.isnan(values).all():
        values[0, 0] = 0.0  # nothing measured: an empty panel still needs a colour range
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=np.nanmin(values), vmax=np.nanmax(values))
    for i in range(t):
        for j in range(i + 1):
            if matrix[i][j] is None:  # undefined: no query has a positive
                ax.text(j, i, "n/a", ha="center", va="center", color="grey", fontsize=9)
                continue
            failed = ecc is not None and j < i and ecc[i][j] is False
            lum = np.dot(image.to_rgba(values[i, j])[:3], (0.299, 0.587, 0.114))
            text = f"{100 * values[i, j]:.2f}" + (f" {FAIL_MARK}" if failed else "")
            ax.text(j, i, text, ha="center", va="center", color="black" if lum > 0.5 else "white", fontsize=9,
                    fontweight="bold" if failed else "normal")
            if failed:
                ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=3))
    ax.set_title(title)
    ax.set_xticks(range(t), versions, rotation=45 if t > 4 else 0)
    ax.set_yticks(range(t), versions)
    ax.set_xlabel("gallery version")
    ax.set_ylabel("query version")
    for spine in ax.spines.values():
        spine.set_visible(False)


def write_reports(
    report: CompatibilityReport,
    out_dir: Path,
    *,
    extra_json: dict | None = None,
    extra_markdown: str | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> list[Path]:
    """Write ``compat.json``, ``compat.md`` and ``compat.png`` into ``out_dir``, all or nothing.

    Args:
        report: the chain evaluation.
        out_dir: created if needed; existing report files are replaced.
        extra_json: top-level keys merged into ``compat.json`` (the schema of docs/design.md when ``None``).
        extra_markdown: appended to ``compat.md`` (e.g. the adapter and backfill sections).
        extra_files: file name -> function writing that file to the path it is given (e.g. a
            backfill plot); written and moved in with the three reports.

    Returns:
        The paths of the three files, in the order above, then ``flips.csv`` (when the protocol ranks
        items: every protocol but ``pairs``), then the extra files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = report.to_json() | (extra_json or {})
    markdown = render_markdown(report) + ("\n" + extra_markdown if extra_markdown else "")
    writers: dict[str, Callable[[Path], object]] = {
        JSON_NAME: lambda p: p.write_text(report_json(document), encoding="utf-8"),
        MARKDOWN_NAME: lambda p: p.write_text(markdown, encoding="utf-8"),
        HEATMAP_NAME: lambda p: plot_heatmaps(report, p),
    }
    if report.flips is not None:
        text = flips_csv(report.flips)
        writers[FLIPS_NAME] = lambda p: p.write_text(text, encoding="utf-8")
    return write_all_or_nothing(out_dir, writers | dict(extra_files or {}))
