"""Reports of an adapted chain: the adapter and backfill sections of ``compat.md``, and ``backfill.png``."""

from __future__ import annotations

from pathlib import Path

from compat.adapters.evaluate import AdaptedChainReport, AdapterCell, AdapterCells, BackfillResult
from compat.compatibility.report import write_reports
from compat.markdown import FAIL_MARK, PASS_MARK, escape, mark, pct, table

__all__ = [
    "BACKFILL_PLOT_NAME",
    "plot_backfill",
    "render_adapter_markdown",
    "render_adapter_summary",
    "summarize_adapters",
    "write_adapted_reports",
]

BACKFILL_PLOT_NAME = "backfill.png"


def _cell_row(a: AdapterCells, cell: AdapterCell, name: str) -> list[str]:
    """One table row: the cell's values in percent, cross cells marked by the criterion."""
    return [name, *(f"{pct(a.cells[cell][m])} {mark(a.passes(cell, m))}" if cell.cross else pct(a.cells[cell][m])
                    for m in a.metrics)]


def _adapter_section(a: AdapterCells) -> list[str]:
    metrics = a.metrics
    rows = [_cell_row(a, cell, f"**{escape(cell.value)}**") for cell in a.cells]
    retention = " · ".join(f"{m} {pct(a.retention(m))}%" for m in metrics)
    info = a.info
    source = f" from `{escape(a.path)}`" if a.path else ""
    return [
        f"### {escape(a.new)} → {escape(a.old)}: B {info.label}, F {info.forward.value}{source}",
        "",
        (
            f"new {info.new_dim}-d, old {info.old_dim}-d, adapters {info.dim}-d; raw cell with dim policy "
            f"{a.raw_dim_policy}. In the matrices above, cell {escape(a.new)} on {escape(a.old)} is "
            f"B({escape(a.new)}) on {escape(a.old)}."
        ),
        "",
        *table(["cell", *metrics], rows),
        "",
        f"{AdapterCell.B_B.value} keeps of {AdapterCell.NEW_NEW.value}: {retention}",
        "",
    ]


def _backfill_section(b: BackfillResult) -> list[str]:
    metrics = list(b.curves[0].values)
    head = f"### {escape(b.new)} → {escape(b.old)}" + (f" (B {b.adapter}), from {escape(b.start.value)}" if b.adapter
                                                  else " (raw features)")
    rows = [[c.ordering, *(pct(c.area[m]) for m in metrics)] for c in b.curves]
    intro = (f"Gallery from {escape(b.start.value)} (beta = 0) to {escape(b.end.value)} (beta = 1); area under "
             "M(beta), in percent:")
    lines = [head, "", intro, "", *table(["ordering", *metrics], rows), ""]
    picks = sorted({0, len(b.betas) // 4, len(b.betas) // 2, (3 * len(b.betas)) // 4, len(b.betas) - 1})
    m = metrics[0]
    rows = [[c.ordering, *(pct(c.values[m][k]) for k in picks)] for c in b.curves]
    lines += [f"{m} at beta:", "", *table(["ordering", *(f"{b.betas[k]:.2f}" for k in picks)], rows), ""]
    return lines


def render_adapter_markdown(adapted: AdaptedChainReport) -> str:
    """The ``## Adapters`` and ``## Partial backfilling`` sections (empty string when neither applies)."""
    lines: list[str] = []
    if adapted.adapters:
        lines += [
            "## Adapters",
            "",
            f"Cells in percent; {PASS_MARK} / {FAIL_MARK}: beats / does not beat old/old.",
            "",
        ]
        for a in adapted.adapters:
            lines += _adapter_section(a)
    if adapted.backfill:
        lines += ["## Partial backfilling", ""]
        for b in adapted.backfill:
            lines += _backfill_section(b)
    return "\n".join(lines)


def plot_backfill(results: tuple[BackfillResult, ...], path: Path) -> None:
    """One panel per metric: ``M(beta)`` of every ordering of every upgrade (PNG, deterministic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = list(results[0].curves[0].values)
    fig = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, m in zip(axes, metrics, strict=True):
        for b in results:
            prefix = f"{b.new}→{b.old} from {b.start.value}: " if len(results) > 1 else ""
            for c in b.curves:
                ax.plot(c.betas, [float("nan") if v is None else 100 * v for v in c.values[m]], marker="o",
                        markersize=3, label=f"{prefix}{c.ordering} (area {pct(c.area[m])})")
        ax.set_title(m)
        ax.set_xlabel("fraction of the gallery re-extracted (beta)")
        ax.set_ylabel(f"{m}, %")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("partial backfilling", fontsize=10)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})


def write_adapted_reports(adapted: AdaptedChainReport, out_dir: Path) -> list[Path]:
    """``compat.json`` (with ``adapters`` / ``backfill`` keys), ``compat.md``, ``compat.png`` and,
    with backfill curves, ``backfill.png``; all or nothing."""
    extra_files = {}
    if adapted.backfill:
        extra_files[BACKFILL_PLOT_NAME] = lambda p: plot_backfill(adapted.backfill, p)
    return write_reports(adapted.report, out_dir, extra_json=adapted.extra_json(),
                         extra_markdown=render_adapter_markdown(adapted) or None, extra_files=extra_files)


def summarize_adapters(reports: dict[str, AdaptedChainReport]) -> dict:
    """Several adapters of the same chain side by side (``compat train``'s ``adapters/summary.json``).

    Args:
        reports: adapter label -> the chain evaluated with that adapter.

    Returns:
        ``{"NEW:OLD": {"raw": {cell: {metric: v}}, "adapters": {label: {"cells", "ecc", "retention",
        "path", "backfill_area"?, "backfill_area_forward"?}}}}``.
    """
    out: dict = {}
    raw_cells = (AdapterCell.OLD_OLD, AdapterCell.NEW_NEW, AdapterCell.NEW_OLD)
    for label, adapted in reports.items():
        for a in adapted.adapters:
            pair = out.setdefault(f"{a.new}:{a.old}", {"raw": {}, "adapters": {}})
            pair["raw"] = {c.value: a.cells[c] for c in raw_cells}
            doc = a.to_json()
            entry = {"cells": {c.value: v for c, v in a.cells.items() if c not in raw_cells}, "ecc": doc["ecc"],
                     "retention": doc["retention"], "path": a.path}
            for b in adapted.backfill:
                if (b.new, b.old) == (a.new, a.old):
                    key = "backfill_area_forward" if b.start is AdapterCell.B_F else "backfill_area"
                    entry[key] = {c.ordering: c.area for c in b.curves}
            pair["adapters"][label] = entry
    return out


def render_adapter_summary(summary: dict) -> str:
    """Markdown: per pair, one row per cell (raw and each adapter's), one column per metric."""
    lines = ["# Adapters: summary", ""]
    for key, pair in summary.items():
        metrics = list(pair["raw"][AdapterCell.OLD_OLD.value])
        rows = [[cell, *(pct(values[m]) for m in metrics)] for cell, values in pair["raw"].items()]
        for label, entry in pair["adapters"].items():
            for cell, values in entry["cells"].items():
                rows.append([AdapterCell(cell).label(label),
                             *(f"{pct(values[m])} {mark(entry['ecc'][m].get(cell))}".rstrip() for m in metrics)])
        lines += [f"## {key}", "", *table(["cell", *metrics], rows), ""]
        for label, entry in pair["adapters"].items():
            kept = ", ".join(f"{m} {pct(v)}%" for m, v in entry["retention"].items() if v is not None)
            lines.append(f"- {label}: B(new)/B(new) keeps {kept} of new/new")
            for entry_key, start in (("backfill_area", "old"), ("backfill_area_forward", "F(old)")):
                for ordering, area in entry.get(entry_key, {}).items():
                    lines.append(f"  - backfill area from {start}, {ordering}: "
                                 + ", ".join(f"{m} {pct(v)}" for m, v in area.items()))
        lines.append("")
    return "\n".join(lines)
