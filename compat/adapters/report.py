"""Reports of an adapted chain: the adapter and backfill sections of ``compat.md``, and ``backfill.png``."""

from __future__ import annotations

from pathlib import Path

from compat.adapters.evaluate import (
    B_B,
    CROSS_CELLS,
    NEW_NEW,
    AdaptedChainReport,
    AdapterCells,
    BackfillResult,
)
from compat.compatibility.report import FAIL_MARK, PASS_MARK, write_reports

__all__ = ["BACKFILL_PLOT_NAME", "plot_backfill", "render_adapter_markdown", "write_adapted_reports"]

BACKFILL_PLOT_NAME = "backfill.png"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _adapter_section(a: AdapterCells) -> list[str]:
    metrics = list(a.cells[NEW_NEW])
    rows = []
    for cell, values in a.cells.items():
        row = [f"**{_md(cell)}**"]
        for m in metrics:
            text = _pct(values[m])
            if cell in CROSS_CELLS:
                text += " " + (PASS_MARK if a.passes(cell, m) else FAIL_MARK)
            row.append(text)
        rows.append(row)
    retention = " · ".join(f"{m} {_pct(a.retention(m))}%" for m in metrics)
    info = a.info
    source = f" from `{_md(a.path)}`" if a.path else ""
    return [
        f"### {_md(a.new)} → {_md(a.old)}: B {info.label}, F {info.forward.value}{source}",
        "",
        (
            f"new {info.new_dim}-d, old {info.old_dim}-d, adapters {info.dim}-d; raw cell with dim policy "
            f"{a.raw_dim_policy}. In the matrices above, cell {_md(a.new)} on {_md(a.old)} is "
            f"B({_md(a.new)}) on {_md(a.old)}."
        ),
        "",
        *_table(["cell", *metrics], rows),
        "",
        f"{B_B} keeps of {NEW_NEW}: {retention}",
        "",
    ]


def _backfill_section(b: BackfillResult) -> list[str]:
    metrics = list(b.curves[0].values)
    head = f"### {_md(b.new)} → {_md(b.old)}" + (f" (B {b.adapter}), from {_md(b.start)}" if b.adapter
                                                  else " (raw features)")
    rows = [[c.ordering, *(f"{100 * c.area[m]:.2f}" for m in metrics)] for c in b.curves]
    intro = f"Gallery from {_md(b.start)} (beta = 0) to {_md(b.end)} (beta = 1); area under M(beta), in percent:"
    lines = [head, "", intro, "", *_table(["ordering", *metrics], rows), ""]
    picks = sorted({0, len(b.betas) // 4, len(b.betas) // 2, (3 * len(b.betas)) // 4, len(b.betas) - 1})
    m = metrics[0]
    rows = [[c.ordering, *(_pct(c.values[m][k]) for k in picks)] for c in b.curves]
    lines += [f"{m} at beta:", "", *_table(["ordering", *(f"{b.betas[k]:.2f}" for k in picks)], rows), ""]
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
            prefix = f"{b.new}→{b.old} from {b.start}: " if len(results) > 1 else ""
            for c in b.curves:
                ax.plot(c.betas, [100 * v for v in c.values[m]], marker="o", markersize=3,
                        label=f"{prefix}{c.ordering} (area {100 * c.area[m]:.2f})")
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
