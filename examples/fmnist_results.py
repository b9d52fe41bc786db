"""Rebuild the README's Fashion-MNIST tables from the training runs.

    python examples/fmnist_results.py RUNS [--seeds 0 1 2] [--compare-seed 0] [--n-resamples 2000]

RUNS holds the ``compat train`` output directories ``fmnist-<recipe>-s<seed>`` (test split) and
``val-*`` (validation runs), as the README's commands write them, and ``logs/<run>.time`` with each
run's wall and CPU time (``/usr/bin/time -f "wall_s %e user_s %U sys_s %S ..."``). Every figure
is read from the runs' reports, or computed from their feature sets by the library: update gains
with ``compat.compatibility.update_gain`` against an independently trained newest model of the same
seed, intervals with ``compat.comparison.compare_runs`` (whose reports are written under
``RUNS/compare/``). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from compat.adapters import load_adapter
from compat.comparison import compare_runs, write_reports
from compat.compatibility import update_gain
from compat.features import load_features
from compat.markdown import num, pct, pp, table
from compat.retrieval import RetrievalEvaluator

GROWTH = ["independent", "cores", "hoc", "cl2r", "bct", "bct-authors", "l2", "bt2"]
CLASSES = ["cores-classes", "bct-classes", "bt2-classes"]
METRICS = ("cmc@1", "map")


def report(run: Path) -> dict:
    return json.loads((run / "compat.json").read_text(encoding="utf-8"))


def corners(rep: dict, metric: str) -> tuple[float, float, float]:
    """old/old, new/old, new/new: the oldest and the newest version."""
    m = rep["metrics"][metric]
    return m[0][0], m[-1][0], m[-1][-1]


def self_value(features: Path, metric: str) -> float:
    """A feature set's own leave-one-out value (the update gain's reference)."""
    fs = load_features(features)
    return RetrievalEvaluator((metric,), device="cpu").evaluate(fs, fs)[metric]


def gain(rep: dict, metric: str, reference_self: float) -> float | None:
    """The newest upgrade's update gain against an independently trained newest model."""
    m = rep["metrics"][metric]
    return update_gain(m[-1][-2], m[-2][-2], reference_self)


def passes(rep: dict, metric: str) -> list[bool]:
    """The criterion on every pair j < i of a run."""
    ecc = rep["summary"][metric]["ecc"]
    return [bool(ecc[i][j]) for i in range(len(ecc)) for j in range(i)]


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _per_seed(values: list[float | None]) -> str:
    shown = " / ".join(num(v) for v in values)
    return num(values[0]) if len(set(shown.split(" / "))) == 1 else shown


def chain_table(root: Path, recipes: list[str], seeds: list[int], reference) -> list[str]:
    """old/old, new/old, new/new (mean over seeds), AC and update gain per metric, passes per seed."""
    rows = []
    for recipe in recipes:
        reps = [report(root / f"fmnist-{recipe}-s{s}") for s in seeds]
        row = [f"`fmnist-{recipe}`"]
        for metric in METRICS:
            cells = np.mean([corners(r, metric) for r in reps], axis=0)
            row += [pct(c) for c in cells]
        for metric in METRICS:
            row.append(_per_seed([r["summary"][metric]["ac"] for r in reps]))
        for metric in METRICS:
            refs = [reference(recipe, s, metric) for s in seeds]
            row.append(_per_seed([None if ref is None else gain(r, metric, ref) for r, ref in zip(reps, refs)]))
        ok = [all(passes(r, "cmc@1")) and all(passes(r, "map")) for r in reps]
        row.append(f"{sum(ok)}/{len(ok)}")
        rows.append(row)
    header = ["recipe", "old/old CMC@1", "new/old CMC@1", "new/new CMC@1", "old/old mAP", "new/old mAP",
              "new/new mAP", "AC CMC@1", "AC mAP", "update gain CMC@1", "update gain mAP", "seeds passing both"]
    return table(header, rows)


def compare(root: Path, a: str, b: str, seed: int, n_resamples: int):
    """``compat compare`` of the newest and oldest versions of two runs, reports under RUNS/compare/."""
    run_a, run_b = root / f"fmnist-{a}-s{seed}", root / f"fmnist-{b}-s{seed}"
    va, vb = report(run_a)["versions"], report(run_b)["versions"]
    result = compare_runs(run_a, run_b, metrics=METRICS, versions={va[0]: vb[0], va[-1]: vb[-1]},
                          n_resamples=n_resamples, progress=False)
    write_reports(result, root / "compare" / f"{a}-vs-{b}-s{seed}")
    role = {va[0]: "old", va[-1]: "new"}
    return {(c.metric, f"{role[c.cell_a[0]]}/{role[c.cell_a[1]]}"): c for c in result.cells}


def _interval(cell) -> str:
    d = cell.difference
    return f"{pp(d.value)} [{pp(d.low)}, {pp(d.high)}]"


def versus_table(root: Path, baseline: str, methods: list[str], seeds: list[int], seed: int,
                 n_resamples: int) -> list[str]:
    """Each method's new/old and new/new against the baseline: one seed with intervals, three-seed means."""
    rows = []
    for method in methods:
        cells = compare(root, method, baseline, seed, n_resamples)
        row = [f"`{method}`"]
        for metric in METRICS:
            for cell in ("new/old", "new/new"):
                row.append(_interval(cells[(metric, cell)]))
        for metric in METRICS:
            for k in (1, 2):
                diffs = [corners(report(root / f"fmnist-{method}-s{s}"), metric)[k]
                         - corners(report(root / f"fmnist-{baseline}-s{s}"), metric)[k] for s in seeds]
                row.append(pp(float(np.mean(diffs))))
        rows.append(row)
    header = [f"method - {baseline}", "new/old CMC@1", "new/new CMC@1", "new/old mAP", "new/new mAP",
              "mean new/old CMC@1", "mean new/new CMC@1", "mean new/old mAP", "mean new/new mAP"]
    return table(header, rows)


def pairs_table(root: Path, pairs: list[tuple[str, str]], seeds: list[int], n_resamples: int) -> list[str]:
    """A - B on new/old and new/new for every seed, with intervals."""
    rows = []
    for a, b in pairs:
        for s in seeds:
            cells = compare(root, a, b, s, n_resamples)
            rows.append([f"`{a}` - `{b}`", str(s)] + [_interval(cells[(m, c)]) for m in METRICS
                                                        for c in ("new/old", "new/new")])
    return table(["A - B", "seed", "new/old CMC@1", "new/new CMC@1", "new/old mAP", "new/new mAP"], rows)


def adapter_table(run_names: list[Path]) -> list[str]:
    """Cells of the adapter recipe per seed (CMC@1 / mAP, percent)."""
    summaries = [json.loads((r / "adapters" / "summary.json").read_text())["v1:v0"] for r in run_names]
    rows = [[cell] + [f"{pct(s['raw'][cell]['cmc@1'])} / {pct(s['raw'][cell]['map'])}" for s in summaries]
            for cell in ("old/old", "new/new", "new/old")]
    for name in summaries[0]["adapters"]:
        for cell in ("B(new)/old", "B(new)/F(old)", "B(new)/B(new)"):
            rows.append([f"{cell.replace('B(', f'B_{name}(')}"] + [
                f"{pct(s['adapters'][name]['cells'][cell]['cmc@1'])} / {pct(s['adapters'][name]['cells'][cell]['map'])}"
                for s in summaries])
    return table(["cell"] + [r.name for r in run_names], rows)


def lambda_table(runs: list[Path]) -> list[str]:
    """B_lambda on the validation split: cells, retention and the distance from orthogonality."""
    rows = []
    for run in runs:
        s = json.loads((run / "adapters" / "summary.json").read_text())["v1:v0"]
        for name, entry in s["adapters"].items():
            info = load_adapter(run / entry["path"]).info.to_json()
            cells = entry["cells"]
            rows.append([run.name, name, str(info["dim"])]
                        + [f"{pct(cells[c]['cmc@1'])} / {pct(cells[c]['map'])}"
                           for c in ("B(new)/old", "B(new)/F(old)", "B(new)/B(new)")]
                        + [num(entry["retention"]["cmc@1"]), num(info["training"].get("orthogonality_gap"))])
    header = ["run", "adapter", "d", "B(new)/old", "B(new)/F(old)", "B(new)/B(new)", "retention CMC@1",
              "||W W^T - I||_F"]
    return table(header, rows)


def times_table(root: Path, names: list[str]) -> list[str]:
    rows = []
    for name in names:
        path = root / "logs" / f"{name}.time"
        fields = path.read_text().split() if path.is_file() else []
        values = dict(zip(fields[::2], fields[1::2]))
        if "wall_s" in values:
            rows.append([name, f"{float(values['wall_s']) / 60:.1f}", f"{float(values['user_s']) / 60:.1f}"])
    return table(["run", "wall (min)", "CPU, one thread (min)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--compare-seed", type=int, default=0)
    parser.add_argument("--n-resamples", type=int, default=2000)
    args = parser.parse_args()
    root, seeds = args.runs, args.seeds
    print(f"<!-- python examples/fmnist_results.py {root} --seeds {' '.join(map(str, seeds))} -->\n")

    def growth_reference(recipe: str, seed: int, metric: str) -> float | None:
        return None if recipe == "independent" else corners(report(root / f"fmnist-independent-s{seed}"), metric)[2]

    def classes_reference(recipe: str, seed: int, metric: str) -> float:
        return self_value(root / f"fmnist-bt2-classes-s{seed}" / "features" / "v1-independent.npz", metric)

    sections = [
        ("Growth protocol", chain_table(root, GROWTH, seeds, growth_reference)),
        ("Against `independent`", versus_table(root, "independent", GROWTH[1:], seeds, args.compare_seed,
                                               args.n_resamples)),
        ("Against `bct`", versus_table(root, "bct", [m for m in GROWTH if m != "bct"], seeds, args.compare_seed,
                                       args.n_resamples)),
        ("BT^2 against BCT", pairs_table(root, [("bt2", "bct"), ("bt2", "bct-authors"), ("bct", "independent"),
                                                ("bct-authors", "independent"), ("bt2", "independent")],
                                         seeds, args.n_resamples)),
        ("Class-incremental", chain_table(root, CLASSES, seeds, classes_reference)),
        ("Architecture change", chain_table(root, ["bct-arch"], seeds, growth_reference)),
        ("Adapters", adapter_table([root / f"fmnist-adapters-s{s}" for s in seeds])),
        ("lambda on the validation split", lambda_table(sorted(root.glob("val-lambda-*")))),
        ("Run times", times_table(root, sorted(p.stem for p in (root / "logs").glob("fmnist-*.time")))),
    ]
    for title, lines in sections:
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
