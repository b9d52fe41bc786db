"""The files of a backfill plan: ``plan.csv`` (the order), ``plan.json``, ``plan.md`` and ``plan.png``.

:func:`write_plan` plans (:func:`compat.adapters.plan.plan_backfill`) and writes the four files
into the output directory all or nothing: ``plan.csv`` is streamed into a temporary directory
inside it and moved in with the reports.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from compat._atomic import write_all_or_nothing
from compat.adapters.adapter import Adapter
from compat.adapters.plan import BackfillPlan, PlanPoint, PlanSettings, plan_backfill
from compat.features import FeatureSet
from compat.jsontext import report_json
from compat.markdown import escape, pct, table
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.stored import StoredFeatures

__all__ = ["PLAN_CSV", "PLAN_JSON", "PLAN_MD", "PLAN_PNG", "plan_to_json", "plot_plan", "render_plan_markdown",
           "write_plan"]

PLAN_CSV, PLAN_JSON, PLAN_MD, PLAN_PNG = "plan.csv", "plan.json", "plan.md", "plan.png"
PREDICTION_NOTE = ("a prediction made on the evaluation sample, not a measurement on the gallery: the sample's new "
                   "queries search the sample's own items, those the plan has reached re-extracted, the rest as stored")
FLAT_DEFINITION = "the first grid point after which the predicted value gains at most the tolerance"


def plan_to_json(plan: BackfillPlan) -> dict[str, Any]:
    """The ``plan.json`` document (docs/design.md)."""
    s = plan.settings
    target = None
    if s.target is not None:
        target = {"text": s.target.text, "metric": s.target.metric, "comparison": s.target.comparison.value,
                  "threshold": s.target.threshold, "reachable": plan.reachable,
                  "point": plan.target.to_json() if plan.target else None,
                  "confident_point": plan.target_confident.to_json() if plan.target_confident else None}
    return {
        "prediction": PREDICTION_NOTE,
        "gallery": {"source": plan.gallery, "n": plan.gallery_size, "meta": plan.gallery_meta},
        "sample": {"old": plan.sample_sources[0], "new": plan.sample_sources[1], "n": plan.sample_size,
                   "queries": plan.queries, "max_difference": plan.max_difference},
        "deployment": {"adapter": plan.adapter, "adapter_path": plan.adapter_path, "start": plan.start.value,
                       "end": plan.end.value},
        "ordering": s.ordering.value,
        "seed": s.seed,
        "metrics": list(plan.metrics),
        "confidence": s.confidence,
        "n_resamples": s.n_resamples,
        "curve": [p.to_json() for p in plan.curve],
        "budget": None if plan.budget is None else {"text": s.budget.text, **plan.budget.to_json()},
        "target": target,
        "flattening": {"metric": plan.flat_metric, "tolerance": s.flat_tolerance, "definition": FLAT_DEFINITION,
                       **plan.flattening.to_json()},
        "plan": {"file": PLAN_CSV, "rows": plan.gallery_size, "re_extract": plan.re_extract, "runs": plan.runs},
    }


def _value(point: PlanPoint, metric: str) -> str:
    v = point.values[metric]
    return f"{pct(v.value)} [{pct(v.low)}, {pct(v.high)}]"


def _at(point: PlanPoint) -> str:
    return f"{100 * point.fraction:.1f}% ({point.items:,} items)"


def _goal_lines(plan: BackfillPlan) -> list[str]:
    s, m = plan.settings, plan.flat_metric
    lines = []
    if plan.budget is not None:
        lines.append(f"- **Budget {s.budget.text}**: re-extract the first {plan.budget.items:,} ids of `{PLAN_CSV}`; "
                     f"predicted {m} {_value(plan.budget, m)}.")
    if s.target is not None and plan.target is not None:
        confident = (f"; the band's low end reaches it at {_at(plan.target_confident)}" if plan.target_confident
                     else "; the band's low end never reaches it")
        lines.append(f"- **Target {escape(s.target.text)}**: reached at {_at(plan.target)}: re-extract the first "
                     f"{plan.target.items:,} ids of `{PLAN_CSV}`{confident}.")
    elif s.target is not None:
        best = max(plan.curve, key=lambda p: p.values[s.target.metric].value)
        lines.append(f"- **Target {escape(s.target.text)}: not reachable**: the prediction peaks at "
                     f"{_value(best, s.target.metric)} at {_at(best)}.")
    lines.append(f"- **Flattens** at {_at(plan.flattening)}: after it {m} gains at most "
                 f"{100 * s.flat_tolerance:.2f} pp ({FLAT_DEFINITION}).")
    return lines


def render_plan_markdown(plan: BackfillPlan) -> str:
    """The ``plan.md`` report."""
    s = plan.settings
    deployment = f"B {plan.adapter}, from {plan.start.value}" if plan.adapter else f"raw features, from {plan.start.value}"
    rows = [[f"{100 * p.fraction:.1f}%", f"{p.items:,}", f"{p.sample_items:,}", *(_value(p, m) for m in plan.metrics)]
            for p in plan.curve]
    lines = [
        "# Backfill plan",
        "",
        (f"Gallery `{escape(plan.gallery)}`: {plan.gallery_size:,} items. Ordering **{s.ordering.value}** "
         f"(seed {s.seed}); `{PLAN_CSV}` lists every id, first to re-extract first. Deployment: {deployment} "
         f"to {plan.end.value}."),
        "",
        *_goal_lines(plan),
        "",
        (f"The metric is {PREDICTION_NOTE}. Sample: {plan.sample_size:,} items (`{escape(plan.sample_sources[0])}`, "
         f"`{escape(plan.sample_sources[1])}`), {plan.queries:,} queries with a positive; "
         f"{100 * s.confidence:g}% bootstrap band over the queries ({s.n_resamples} resamples). Values in percent."),
        "",
        *table(["re-extracted", "items", "sample items", *plan.metrics], rows),
        "",
    ]
    if plan.max_difference is not None and plan.max_difference > 1e-3:
        lines += [(f"Warning: the sample's old features differ from the gallery's stored rows of the same items "
                   f"(largest relative difference {plan.max_difference:.3g}): the sample may not be of this gallery."),
                  ""]
    return "\n".join(lines)


def plot_plan(plan: BackfillPlan, path: Path) -> None:
    """One panel per metric: the predicted value and its band against the fraction re-extracted,
    with the budget, the target and the flattening point marked (PNG, deterministic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(plan.metrics), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(plan.metrics), squeeze=False)[0]
    x = [p.fraction for p in plan.curve]
    for ax, m in zip(axes, plan.metrics, strict=True):
        ax.fill_between(x, [100 * p.values[m].low for p in plan.curve], [100 * p.values[m].high for p in plan.curve],
                        alpha=0.25, label=f"{100 * plan.settings.confidence:g}% band")
        ax.plot(x, [100 * p.values[m].value for p in plan.curve], marker="o", markersize=3, label="predicted")
        marks = [("budget", plan.budget, "--"), ("target", plan.target, ":"), ("flattens", plan.flattening, "-.")]
        for name, point, style in marks:
            if point is not None and m == plan.flat_metric:
                ax.axvline(point.fraction, linestyle=style, color="gray", label=f"{name} {100 * point.fraction:.0f}%")
        if plan.settings.target is not None and plan.settings.target.metric == m:
            ax.axhline(100 * plan.settings.target.threshold, linestyle=":", color="red", linewidth=0.8)
        ax.set_title(m)
        ax.set_xlabel("fraction of the gallery re-extracted")
        ax.set_ylabel(f"{m}, % (on the sample)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"backfill plan: {plan.settings.ordering.value}, predicted on {plan.sample_size} sample items",
                 fontsize=10)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})


def write_plan(
    gallery: StoredFeatures | FeatureSet | str | os.PathLike[str],
    sample_old: FeatureSet,
    sample_new: FeatureSet,
    settings: PlanSettings,
    out_dir: str | os.PathLike[str],
    *,
    evaluator: RetrievalEvaluator,
    adapter: Adapter | None = None,
    adapter_path: str | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> tuple[BackfillPlan, list[Path]]:
    """Plan (:func:`compat.adapters.plan.plan_backfill`) and write the four files into ``out_dir``.

    Returns:
        The plan, and the paths of ``plan.csv``, ``plan.json``, ``plan.md``, ``plan.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".compat-plan-", dir=out) as work:
        csv_path = Path(work) / PLAN_CSV
        plan = plan_backfill(gallery, sample_old, sample_new, settings, evaluator=evaluator, csv_path=csv_path,
                             adapter=adapter, adapter_path=adapter_path, tmp_dir=tmp_dir or work)
        document = report_json(plan_to_json(plan))  # undefined numbers are null, never NaN
        markdown = render_plan_markdown(plan)
        files = write_all_or_nothing(out, {
            PLAN_CSV: lambda p: os.replace(csv_path, p),
            PLAN_JSON: lambda p: p.write_text(document, encoding="utf-8"),
            PLAN_MD: lambda p: p.write_text(markdown, encoding="utf-8"),
            PLAN_PNG: lambda p: plot_plan(plan, p),
        })
    return plan, files
