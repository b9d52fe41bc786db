# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reading a backfill plan
#
# `compat plan-backfill` writes four files into its output directory:
#
# - `plan.csv`: every id of the stored gallery, in the order to re-extract them (first line `id`);
# - `plan.json`: the predicted metric at each fraction of the gallery re-extracted, with a bootstrap
#   band over the queries, the budget's or the target's point and where the curve flattens;
# - `plan.md` and `plan.png`: the same for people.
#
# The prediction is made on an evaluation sample of the gallery (docs/metrics.md, "Planning a
# backfill"), not on the gallery itself. This notebook reads a plan and draws it.
#
# - `COMPAT_PLAN`: the plan's directory (the `--out` of `compat plan-backfill`). Without it, the
#   notebook plans one from the repository's example features with the Python API: the stored
#   gallery is `examples/features/v1.npz`, the sample a seeded quarter of its items, their new
#   features from `v2.npz`.
# - `COMPAT_NOTEBOOK_OUT`: save the figure there. `COMPAT_NOTEBOOK_TINY=1`: non-interactive (the tests).

# %%
import csv
import json
import os
import tempfile
from itertools import islice
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

TINY = os.environ.get("COMPAT_NOTEBOOK_TINY") == "1"
if TINY:
    plt.switch_backend("Agg")
PLAN = Path(os.environ["COMPAT_PLAN"]) if os.environ.get("COMPAT_PLAN") else None
OUT = Path(os.environ["COMPAT_NOTEBOOK_OUT"]) if os.environ.get("COMPAT_NOTEBOOK_OUT") else None
if OUT is not None:
    OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A plan to read
#
# With no `COMPAT_PLAN`, plan the example gallery: the farthest-first ordering, a target of 55% CMC@1.
# `write_plan` is what the command calls; `PlanSettings` holds its options.


# %%
def example_plan(out: Path) -> Path:
    from compat.adapters import PlanSettings, parse_target, write_plan
    from compat.features import FeatureSet, load_features
    from compat.retrieval import RetrievalEvaluator

    root = Path("examples/features") if Path("examples/features").is_dir() else Path("..") / "examples/features"
    old, new = load_features(root / "v1.npz"), load_features(root / "v2.npz")
    pick = np.sort(np.random.default_rng(0).permutation(old.n)[: old.n // 4])

    def subset(fs):
        return FeatureSet(fs.features[pick], fs.labels[pick], fs.ids[pick], fs.meta, f"{fs.source}[sample]")

    settings = PlanSettings("farthest", target=parse_target("cmc@1>=0.55"), points=6 if TINY else 11,
                            n_resamples=100 if TINY else 2000)
    write_plan(old, subset(old), subset(new), settings, out, evaluator=RetrievalEvaluator(("cmc@1", "map")))
    return out


if PLAN is not None:
    plan_dir = PLAN
else:
    plan_dir = example_plan(OUT / "example-plan" if OUT is not None else Path(tempfile.mkdtemp(prefix="plan-")))
plan = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
print(f"plan: {plan_dir}")
print(f"gallery: {plan['gallery']['source']}, {plan['gallery']['n']:,} items; ordering {plan['ordering']}")
print(f"sample: {plan['sample']['n']:,} items, {plan['sample']['queries']:,} queries; {plan['prediction']}")

# %% [markdown]
# ## The order
#
# `plan.csv` is read as a stream: the first ids are the ones to re-extract first. `re_extract` is how
# many the budget allows, or how many the target needs (None when it is not reachable).

# %%
with open(plan_dir / "plan.csv", encoding="utf-8", newline="") as fh:
    rows = csv.reader(fh)
    assert next(rows) == ["id"]
    first = [row[0] for row in islice(rows, 5)]
print(f"first ids to re-extract: {', '.join(first)}")
print(f"re-extract: {plan['plan']['re_extract']} of {plan['plan']['rows']:,}")
if plan["target"] is not None:
    target = plan["target"]
    where = f"{100 * target['point']['fraction']:.0f}%" if target["reachable"] else "not reachable"
    print(f"target {target['text']}: {where}")
if plan["budget"] is not None:
    print(f"budget {plan['budget']['text']}: {plan['budget']['items']:,} items")
print(f"flattens at {100 * plan['flattening']['fraction']:.0f}% ({plan['flattening']['definition']})")

# %% [markdown]
# ## The predicted curve
#
# One panel per metric: the predicted value against the fraction re-extracted, the band, and the
# budget, target and flattening points on the metric they were decided on.

# %%
metrics = plan["metrics"]
fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
x = [p["fraction"] for p in plan["curve"]]
for ax, m in zip(axes[0], metrics, strict=True):
    values = [p["values"][m] for p in plan["curve"]]
    ax.fill_between(x, [100 * v["ci_low"] for v in values], [100 * v["ci_high"] for v in values], alpha=0.25,
                    label=f"{100 * plan['confidence']:g}% band")
    ax.plot(x, [100 * v["value"] for v in values], marker="o", label="predicted")
    if m == plan["flattening"]["metric"]:
        marks = {"flattens": plan["flattening"], "budget": plan["budget"],
                 "target": plan["target"] and plan["target"]["point"]}
        for (name, point), style in zip(marks.items(), ("-.", "--", ":"), strict=True):
            if point:
                ax.axvline(point["fraction"], color="gray", linestyle=style, label=name)
    ax.set(title=m, xlabel="fraction of the gallery re-extracted", ylabel=f"{m}, % (sample)", xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
fig.tight_layout()
if OUT is not None:
    fig.savefig(OUT / "plan-curve.png", dpi=80 if TINY else 120)

# %% [markdown]
# ## The same numbers as a table

# %%
from compat.markdown import pct, table

lines = table(["re-extracted", "items", *metrics],
              [[f"{100 * p['fraction']:.0f}%", f"{p['items']:,}",
                *(f"{pct(p['values'][m]['value'])} [{pct(p['values'][m]['ci_low'])}, {pct(p['values'][m]['ci_high'])}]"
                  for m in metrics)] for p in plan["curve"]])
print("\n".join(lines))
