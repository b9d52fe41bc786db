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
# # Comparing runs: heatmaps, backfill curves and a method table
#
# Every compat command that evaluates writes a `compat.json` (the compatibility matrices of a version
# chain and their summaries); the gate writes a `gate.json` next to it. This notebook gathers those
# reports from several runs and puts them side by side:
#
# 1. the matrices of every run as heatmaps,
# 2. the partial-backfill curves `M(beta)` of the runs whose report has them (a `backfill` key),
# 3. one table comparing the methods: old/old, new/old and new/new, the summaries, the gate's verdict.
#
# Where the reports come from (environment variables, so that the same file runs in Jupyter, as a
# script and in the tests):
#
# - `COMPAT_RUNS`: run directories, `compat.json` files or glob patterns, separated by `:` (`;` on
#   Windows). Default: `compat-demo/*/` and `runs/*/` under the working directory and its parent.
# - `COMPAT_MLFLOW_EXPERIMENT`: also read the `compat.json` artifact of every run of this MLflow
#   experiment (tracking URI from `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`).
# - `COMPAT_NOTEBOOK_OUT`: save the figures and the table there.
# - `COMPAT_NOTEBOOK_TINY=1`: non-interactive plotting (the tests).
#
# With no report found, the notebook evaluates the example feature sets of the repository
# (`examples/features`): `v1 -> v2` (compatible) and `v1 -> v3` (an independently trained, rotated
# model). Run `compat demo` first to compare real models.

# %%
import glob
import json
import math
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from compat.markdown import num, pct, pp, table

TINY = os.environ.get("COMPAT_NOTEBOOK_TINY") == "1"
if TINY:
    plt.switch_backend("Agg")
RUNS = os.environ.get("COMPAT_RUNS", "")
MLFLOW_EXPERIMENT = os.environ.get("COMPAT_MLFLOW_EXPERIMENT", "")
OUT = Path(os.environ["COMPAT_NOTEBOOK_OUT"]) if os.environ.get("COMPAT_NOTEBOOK_OUT") else None
if OUT is not None:
    OUT.mkdir(parents=True, exist_ok=True)


def save(fig, name):
    """Keep a figure when COMPAT_NOTEBOOK_OUT is set; in Jupyter it is shown by the cell anyway."""
    if OUT is not None:
        fig.savefig(OUT / name, dpi=80 if TINY else 120, bbox_inches="tight")


# %% [markdown]
# ## Gather the reports
#
# A run is one `compat.json`, with the `gate.json` and `recipe.yaml` found next to it when there are
# any. The run's name is its directory, relative to the working directory when possible.


# %%
def _name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return "/".join(path.resolve().parts[-2:])


def _recipe_method(recipe: Path) -> str | None:
    import yaml

    if not recipe.is_file():
        return None
    return ((yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("method") or {}).get("name")


def _method(directory: Path, gate_doc: dict | None) -> str:
    """The training method when the run says: ``compat train``'s recipe.yaml, or ``compat demo``'s layout."""
    method = _recipe_method(directory / "recipe.yaml")
    if method:
        return method
    candidate = ((gate_doc or {}).get("inputs") or {}).get("new", {}).get("meta", {})
    if str(candidate.get("version", "")).endswith("-independent"):
        return "independent"
    return _recipe_method(directory.parent / "train" / "recipe.yaml") or "–"


def read_run(report: Path) -> dict:
    directory = report.parent
    doc = json.loads(report.read_text(encoding="utf-8"))
    gate_path = directory / "gate.json"
    gate = json.loads(gate_path.read_text(encoding="utf-8")) if gate_path.is_file() else None
    return {"name": _name(directory), "compat": doc, "gate": gate, "method": _method(directory, gate)}


def find_reports(spec: str) -> list[Path]:
    if spec:
        patterns = [p for p in spec.split(os.pathsep) if p]
    else:
        patterns = [f"{root}/{kind}/*/" for root in (".", "..") for kind in ("compat-demo", "runs")]
    found: list[Path] = []
    for pattern in patterns:
        for hit in sorted(glob.glob(pattern)) or ([pattern] if spec else []):
            path = Path(hit)
            path = path / "compat.json" if path.is_dir() else path
            if not path.is_file():
                print(f"skipped {hit}: no compat.json there")
            elif path.resolve() not in {p.resolve() for p in found}:
                found.append(path)
    return found


def mlflow_runs(experiment: str) -> list[dict]:
    """Runs of an MLflow experiment that logged a compat.json (``compat eval --track``, ``compat train --track``)."""
    import mlflow

    from compat.tracking import DEFAULT_TRACKING_URI

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        print(f"MLflow: no experiment {experiment!r} at {uri}")
        return []
    runs = []
    for run in client.search_runs([found.experiment_id], order_by=["attribute.start_time ASC"]):
        if not any(a.path == "compat.json" for a in client.list_artifacts(run.info.run_id)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, "compat.json", tmp)
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        # compat train --track logs the evaluation as a run nested under the recipe's run.
        parent_id = run.data.tags.get("mlflow.parentRunId")
        owner = client.get_run(parent_id) if parent_id else run
        name = f"mlflow:{owner.info.run_name or owner.info.run_id[:8]}"
        method = owner.data.params.get("recipe.method.name", "–")
        runs.append({"name": name, "compat": doc, "gate": None, "method": method})
    return runs


def example_runs() -> list[Path]:
    """No report found: evaluate the example feature sets of the repository into a temporary directory."""
    from compat.compatibility import Version, evaluate_chain
    from compat.compatibility.report import write_reports
    from compat.features import load_features
    from compat.retrieval import RetrievalEvaluator

    root = next((r for r in (Path.cwd(), Path.cwd().parent) if (r / "examples" / "features").is_dir()), None)
    if root is None:
        return []
    features = root / "examples" / "features"
    evaluator = RetrievalEvaluator(("cmc@1", "cmc@5", "map"))
    tmp = Path(tempfile.mkdtemp(prefix="compat-notebook-"))
    reports = []
    for new in ("v2", "v3"):
        chain = [Version("v1", load_features(features / "v1.npz")), Version(new, load_features(features / f"{new}.npz"))]
        write_reports(evaluate_chain(chain, evaluator), tmp / f"example-v1-{new}")
        reports.append(tmp / f"example-v1-{new}" / "compat.json")
    print(f"no reports found: evaluated the example feature sets {features} into {tmp}")
    return reports


reports = find_reports(RUNS)
runs = [read_run(p) for p in reports]
if MLFLOW_EXPERIMENT:
    runs += mlflow_runs(MLFLOW_EXPERIMENT)
if not runs:
    runs = [read_run(p) for p in example_runs()]
for run in runs:
    doc = run["compat"]
    print(f"{run['name']}: versions {' -> '.join(doc['versions'])}, protocol {doc['protocol']}, "
          f"metrics {', '.join(doc['metrics'])}" + (", backfill curves" if doc.get("backfill") else ""))

# %% [markdown]
# ## Heatmaps
#
# One row per run, one column per metric: cell (i, j) is the queries of version i against the
# gallery of version j, in percent. A red frame marks a cross-version cell that fails the empirical
# compatibility criterion (it does not beat version j against its own gallery).

# %%
metrics = [m for m in runs[0]["compat"]["metrics"] if all(m in r["compat"]["metrics"] for r in runs)] if runs else []


def draw_matrix(ax, run, metric):
    doc = run["compat"]
    names = doc["versions"]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in doc["metrics"][metric]], dtype=float)
    ecc = doc.get("summary", {}).get(metric, {}).get("ecc")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=1.0)
    for i in range(len(names)):
        for j in range(i + 1):
            if math.isnan(matrix[i, j]):
                continue
            ax.text(j, i, f"{100 * matrix[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if matrix[i, j] > 0.6 else "white")
            if ecc and j < i and ecc[i][j] is False:
                ax.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title(f"{run['name']}\n{metric}", fontsize=8)
    return image


if runs:
    fig, axes = plt.subplots(len(runs), len(metrics), squeeze=False,
                             figsize=(2.6 * len(metrics), 2.4 * len(runs)), layout="constrained")
    for row, run in zip(axes, runs, strict=True):
        for ax, metric in zip(row, metrics, strict=True):
            image = draw_matrix(ax, run, metric)
    fig.colorbar(image, ax=axes, shrink=0.6, label="fraction (query version rows, gallery version columns)")
    save(fig, "heatmaps.png")

# %% [markdown]
# ## Backfill curves
#
# Re-extracting a fraction `beta` of the gallery with the new model (in some order: random, or the
# items farthest from their class mean first) moves the new model's retrieval from new/old
# (`beta = 0`) to new/new (`beta = 1`). A report that measured it holds, under `backfill`, per
# upgraded pair, the grid of `beta` and per ordering and metric the curve (and its area). Both the
# grid-plus-values layout and a list of `(beta, value)` points per metric are read. With a forward
# adapter, the curves that start from the gallery upgraded by `F` are under `backfill_forward`
# (labelled "from F" below).


# %%
def _points(curve, betas):
    """(betas, values) from a list of values on the grid, or from a list of (beta, value) points."""
    if not isinstance(curve, list) or not curve:
        return None
    if all(isinstance(p, (list, tuple)) and len(p) == 2 for p in curve):
        xs, ys = zip(*curve, strict=True)
        return list(xs), list(ys)
    if betas is not None and len(betas) == len(curve):
        return list(betas), list(curve)
    return None


def backfill_curves(run):
    """Rows (pair, ordering, metric, betas, values, area) of a run's ``backfill`` key; [] without one."""
    rows = []
    entries = []
    for key, suffix in (("backfill", ""), ("backfill_forward", " from F")):
        backfill = run["compat"].get(key) or {}
        if isinstance(backfill, dict):
            entries += [(pair + suffix, entry) for pair, entry in backfill.items()]
    for pair, entry in entries:
        if not isinstance(entry, dict):
            continue
        betas = entry.get("betas")
        for ordering, body in (entry.get("orderings") or {}).items():
            curves = body.get("curve", body) if isinstance(body, dict) else {}
            areas = body.get("area", {}) if isinstance(body, dict) else {}
            for metric, curve in curves.items():
                points = _points(curve, betas)
                if points is None:
                    print(f"{run['name']}: backfill {pair} {ordering} {metric}: not a curve, skipped")
                    continue
                rows.append((pair, ordering, metric, *points, areas.get(metric)))
    return rows


curves = [(run, row) for run in runs for row in backfill_curves(run)]
if not curves:
    print("no backfill curves in these reports (their compat.json has no 'backfill' key)")
else:
    curve_metrics = list(dict.fromkeys(row[2] for _, row in curves))
    fig, axes = plt.subplots(1, len(curve_metrics), squeeze=False, figsize=(4.2 * len(curve_metrics), 3.4),
                             layout="constrained")
    for ax, metric in zip(axes[0], curve_metrics, strict=True):
        for run, (pair, ordering, m, betas, values, area) in curves:
            if m != metric:
                continue
            label = f"{run['name']} {pair} {ordering}" + (f" (area {100 * area:.1f})" if area is not None else "")
            ax.plot(betas, [100 * v for v in values], marker="o", markersize=3, label=label)
        ax.set_xlabel("beta: fraction of the gallery re-extracted")
        ax.set_ylabel(f"{metric}, %")
        ax.set_title(metric)
        ax.legend(fontsize=7)
    save(fig, "backfill.png")

# %% [markdown]
# ## Methods side by side
#
# Per run: the oldest version against itself (old/old), the newest version's queries against the
# oldest gallery (new/old: what users get without backfilling) and against its own (new/new), for
# CMC@1 and mAP when present; the summaries of the first metric (AC: share of compatible pairs, BC:
# how much the newest model gains on old galleries, update gain) and the gate's verdict if there was
# one.


# %%
def table_rows(runs):
    wanted = [m for m in ("cmc@1", "map") if any(m in r["compat"]["metrics"] for r in runs)]
    header = ["run", "method", "versions"]
    for m in wanted:
        header += [f"{m} old/old", f"{m} new/old", f"{m} new/new"]
    header += ["AC", "BC", "update gain", "gate"]
    rows = [header]
    for run in runs:
        doc = run["compat"]
        row = [run["name"], run["method"], " -> ".join(doc["versions"])]
        for m in wanted:
            matrix = doc["metrics"].get(m)
            row += [pct(matrix[0][0]), pct(matrix[-1][0]), pct(matrix[-1][-1])] if matrix else ["–"] * 3
        first = doc["summary"].get(wanted[0] if wanted else doc["metrics"][0], {})
        gate = run["gate"]
        verdict = "–" if gate is None else ("passed" if gate["passed"] else "FAILED")
        row += [num(first.get("ac")), pp(first.get("bc")), num(first.get("update_gain")), verdict]
        rows.append(row)
    return rows


rows = table_rows(runs)
methods_md = "\n".join(table(rows[0], rows[1:])) if runs else "no runs"
print(methods_md)
if OUT is not None:
    (OUT / "methods.md").write_text(methods_md + "\n", encoding="utf-8")
