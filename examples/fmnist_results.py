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
from compat.comparison import compare_runs, paired_difference, write_reports
from compat.compatibility import evaluate_cell, update_gain
from compat.features import load_features
from compat.markdown import num, pct, pp, table
from compat.retrieval import RetrievalEvaluator

GROWTH = ["independent", "cores", "hoc", "cl2r", "bct", "bct-authors", "l2", "bt2"]
CLASSES = ["cores-classes", "bct-classes", "bt2-classes"]
METRICS = ("cmc@1", "map")


def report(run: Path) -> dict:
    return json.loads((run / "compat.json").read_text(encoding="utf-8"))


def finished(run: Path) -> bool:
    """A run that wrote its report (and, for an adapter recipe, its adapters' summary)."""
    if not (run / "compat.json").is_file():
        return False
    return not (run / "adapters").is_dir() or (run / "adapters" / "summary.json").is_file()


def seeds_of(root: Path, recipe: str, seeds: list[int]) -> list[int]:
    """The seeds of ``fmnist-<recipe>`` that finished."""
    return [s for s in seeds if finished(root / f"fmnist-{recipe}-s{s}")]


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
    """old/old, new/old, new/new (mean over the finished seeds), AC and update gain per metric (per seed
    where they differ), and the seeds whose every pair passes the criterion on both metrics."""
    rows = []
    for recipe in recipes:
        done = seeds_of(root, recipe, seeds)
        if not done:
            continue
        reps = [report(root / f"fmnist-{recipe}-s{s}") for s in done]
        row = [f"`fmnist-{recipe}`", " ".join(map(str, done))]
        for metric in METRICS:
            cells = np.mean([corners(r, metric) for r in reps], axis=0)
            row += [pct(c) for c in cells]
        for metric in METRICS:
            row.append(_per_seed([r["summary"][metric]["ac"] for r in reps]))
        for metric in METRICS:
            refs = [reference(recipe, s, metric) for s in done]
            row.append(_per_seed([None if ref is None else gain(r, metric, ref) for r, ref in zip(reps, refs)]))
        for metric in METRICS:
            ok = [all(passes(r, metric)) for r in reps]
            row.append(f"{sum(ok)}/{len(ok)}")
        rows.append(row)
    header = ["recipe", "seeds", "old/old CMC@1", "new/old CMC@1", "new/new CMC@1", "old/old mAP", "new/old mAP",
              "new/new mAP", "AC CMC@1", "AC mAP", "update gain CMC@1", "update gain mAP", "criterion CMC@1",
              "criterion mAP"]
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
    """Each method's new/old and new/new against the baseline: one seed with intervals, and the mean
    difference over the seeds both finished."""
    rows = []
    for method in methods:
        if not (finished(root / f"fmnist-{method}-s{seed}") and finished(root / f"fmnist-{baseline}-s{seed}")):
            continue
        cells = compare(root, method, baseline, seed, n_resamples)
        row = [f"`{method}`"]
        for metric in METRICS:
            for cell in ("new/old", "new/new"):
                row.append(_interval(cells[(metric, cell)]))
        both = [s for s in seeds_of(root, method, seeds) if s in seeds_of(root, baseline, seeds)]
        row.append(" ".join(map(str, both)))
        for metric in METRICS:
            for k in (1, 2):
                diffs = [corners(report(root / f"fmnist-{method}-s{s}"), metric)[k]
                         - corners(report(root / f"fmnist-{baseline}-s{s}"), metric)[k] for s in both]
                row.append(pp(float(np.mean(diffs))))
        rows.append(row)
    header = [f"method - {baseline}", f"new/old CMC@1, seed {seed}", f"new/new CMC@1, seed {seed}",
              f"new/old mAP, seed {seed}", f"new/new mAP, seed {seed}", "seeds", "mean new/old CMC@1",
              "mean new/new CMC@1", "mean new/old mAP", "mean new/new mAP"]
    return table(header, rows)


def pairs_table(root: Path, pairs: list[tuple[str, str]], seeds: list[int], n_resamples: int) -> list[str]:
    """A - B on new/old and new/new for every seed both finished, with intervals."""
    rows = []
    for a, b in pairs:
        for s in seeds:
            if not (finished(root / f"fmnist-{a}-s{s}") and finished(root / f"fmnist-{b}-s{s}")):
                continue
            cells = compare(root, a, b, s, n_resamples)
            rows.append([f"`{a}` - `{b}`", str(s)] + [_interval(cells[(m, c)]) for m in METRICS
                                                        for c in ("new/old", "new/new")])
    return table(["A - B", "seed", "new/old CMC@1", "new/new CMC@1", "new/old mAP", "new/new mAP"], rows)


_BT2_CHOICE = "BT^2 as published: C = 2, their prototypes, head on norm(f) (over C = 3, normalised means, raw head)"
def class_split_table(root: Path, recipes: list[str], seed: int) -> list[str]:
    """Class-incremental runs: old/old, new/old and new/new over the queries of the classes the old
    model trained on (0-4) and of the others (5-9), from the runs' feature sets."""
    evaluator = RetrievalEvaluator(METRICS, device="cpu")
    rows = []
    for recipe in recipes:
        run = root / f"fmnist-{recipe}-s{seed}"
        if not finished(run):
            continue
        versions = report(run)["versions"]
        old, new = (load_features(run / "features" / f"{v}.npz") for v in (versions[0], versions[-1]))
        cells = {"old/old": evaluate_cell(evaluator, old, old), "new/old": evaluate_cell(evaluator, new, old),
                 "new/new": evaluate_cell(evaluator, new, new)}
        row = [f"`fmnist-{recipe}`"]
        for metric in METRICS:
            for name, cell in cells.items():
                seen = new.labels < 5 if name != "old/old" else old.labels < 5
                row.append(" / ".join(pct(float(cell.per_query[metric][part & cell.counted].mean()))
                                      for part in (seen, ~seen)))
        rows.append(row)
    header = ["recipe"] + [f"{c} {m}" for m in ("CMC@1", "mAP") for c in ("old/old", "new/old", "new/new")]
    return table(header, rows)


# The choices made on the validation split: (chosen run, the alternative, what was chosen).
VALIDATION = [
    ("val-independent-lr0.1-s0", "val-independent-lr0.05-s0", "SGD at 0.1 (over 0.05) for every growth recipe"),
    ("val-hoc-authors-s0", "val-hoc-masked-s0", "HOC in the authors' form (over the paper's masked form)"),
    ("val-bt2-authors-s0", "val-bt2-former-s0", _BT2_CHOICE),
]


def validation_table(root: Path, n_resamples: int) -> list[str]:
    """Chosen minus alternative on the newest version's cells, with intervals (reports under RUNS/compare/)."""
    rows = []
    for chosen, other, what in VALIDATION:
        if not (finished(root / chosen) and finished(root / other)):
            continue
        result = compare_runs(root / chosen, root / other, metrics=METRICS, n_resamples=n_resamples, progress=False)
        write_reports(result, root / "compare" / f"{chosen}-vs-{other}")
        newest = report(root / chosen)["versions"][-1]
        cells = {(c.metric, c.cell_a[1] == newest): c for c in result.cells if c.cell_a[0] == newest}
        rows.append([what, f"`{chosen}` - `{other}`"] + [_interval(cells[(m, own)]) for m in METRICS
                                                           for own in (False, True)])
    return table(["choice", "runs", "new/old CMC@1", "new/new CMC@1", "new/old mAP", "new/new mAP"], rows)


def adapter_table(runs: list[Path]) -> list[str]:
    """Cells of the adapter recipe per seed (CMC@1 / mAP, percent)."""
    runs = [r for r in runs if finished(r)]
    if not runs:
        return []
    summaries = [json.loads((r / "adapters" / "summary.json").read_text())["v1:v0"] for r in runs]
    rows = [[cell] + [f"{pct(s['raw'][cell]['cmc@1'])} / {pct(s['raw'][cell]['map'])}" for s in summaries]
            for cell in ("old/old", "new/new", "new/old")]
    for name in summaries[0]["adapters"]:
        for cell in ("B(new)/old", "B(new)/F(old)", "B(new)/B(new)"):
            if cell not in summaries[0]["adapters"][name]["cells"]:
                continue
            rows.append([f"{cell.replace('B(', f'B_{name}(')}"] + [
                f"{pct(s['adapters'][name]['cells'][cell]['cmc@1'])} / {pct(s['adapters'][name]['cells'][cell]['map'])}"
                for s in summaries])
    return table(["cell"] + [r.name for r in runs], rows)


def lambda_table(run: Path, n_resamples: int) -> list[str]:
    """Every backward adapter of a run on its evaluation split, computed from the run's feature sets and
    adapter files: B(new)/old and its difference from B_perp(new)/old with a paired interval, the
    criterion (B(new)/old above old/old), B(new)/B(new) against new/new, and the Frobenius norm of W W^T - I."""
    evaluator = RetrievalEvaluator(METRICS, device="cpu")
    old, new = load_features(run / "features" / "v0.npz"), load_features(run / "features" / "v1.npz")
    old_old, new_new = (evaluator.evaluate(fs, fs) for fs in (old, new))
    adapters = {f.stem.removeprefix("v1-v0-"): load_adapter(f) for f in sorted((run / "adapters").glob("v1-v0-*.npz"))}
    cells = {name: evaluate_cell(evaluator, new, old, transform=lambda q, g, a=a: (a.to_old(q), a.old_space(g)))
             for name, a in adapters.items()}
    rows = []
    for name in sorted(adapters, key=_lambda_order):
        a, cell = adapters[name], cells[name]
        own = evaluate_cell(evaluator, new, new, transform=lambda q, g, a=a: (a.to_old(q), a.to_old(g)))
        row = [name, str(a.info.dim), num(a.info.training.get("orthogonality_gap"))]
        for metric in METRICS:
            row.append(pct(cell.values[metric]) + (" ✓" if cell.values[metric] > old_old[metric] else " ✗"))
            _, _, d = paired_difference(cell, new.ids, cells["perp"], new.ids, metric, n_resamples=n_resamples)
            row.append("0" if name == "perp" else f"{pp(d.value)} [{pp(d.low)}, {pp(d.high)}]")
        row += [f"{100 * own.values[m] / new_new[m]:.2f}%" for m in METRICS]
        rows.append(row)
    header = ["adapter", "d", "orthogonality gap", "B(new)/old CMC@1", "- B_perp CMC@1", "B(new)/old mAP",
              "- B_perp mAP", "B(new)/B(new) of new/new, CMC@1", "mAP"]
    note = (f"old/old {pct(old_old['cmc@1'])} / {pct(old_old['map'])}, new/new {pct(new_new['cmc@1'])} / "
            f"{pct(new_new['map'])} (CMC@1 / mAP); ✓ / ✗: B(new)/old passes / fails the criterion; "
            "orthogonality gap: the trained W's distance from the orthogonal matrices, the Frobenius norm of W W^T - I")
    return [note, "", *table(header, rows)]


def _lambda_order(name: str) -> float:
    """perp first, then the lambda adapters by radius."""
    if name == "perp":
        return -1.0
    radius = name.removeprefix("lambda")
    return float("inf") if radius == "-inf" else float(radius) if radius.replace(".", "").isdigit() else 1e9


def times_table(root: Path, names: list[str]) -> list[str]:
    """Wall and CPU time of every finished run (one torch thread each; the CPU time is what the run
    itself used, the wall time depends on what else ran on the machine)."""
    rows = []
    for name in names:
        path = root / "logs" / f"{name}.time"
        fields = path.read_text().split() if path.is_file() and finished(root / name) else []
        values = dict(zip(fields[::2], fields[1::2]))
        if "wall_s" in values:
            rows.append([name, f"{float(values['wall_s']) / 60:.1f}", f"{float(values['user_s']) / 60:.1f}"])
    return table(["run", "wall (min)", "user CPU (min)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--compare-seed", type=int, default=0)
    parser.add_argument("--n-resamples", type=int, default=2000)
    parser.add_argument("--lambda-run", type=Path, action="append", default=None,
                        help="a run whose adapters to tabulate (default: RUNS/val-lambda-* that finished)")
    args = parser.parse_args()
    root, seeds = args.runs, args.seeds
    lambda_runs = args.lambda_run or [r for r in sorted(root.glob("val-lambda-*")) if finished(r)]
    print(f"<!-- python examples/fmnist_results.py {root} --seeds {' '.join(map(str, seeds))} -->\n")

    def growth_reference(recipe: str, seed: int, metric: str) -> float | None:
        independent = root / f"fmnist-independent-s{seed}"
        if recipe == "independent" or not finished(independent):
            return None
        return corners(report(independent), metric)[2]

    def classes_reference(recipe: str, seed: int, metric: str) -> float | None:
        teacher = root / f"fmnist-bt2-classes-s{seed}" / "features" / "v1-independent.npz"
        return self_value(teacher, metric) if teacher.is_file() else None

    sections = [
        ("Choices on the validation split", validation_table(root, args.n_resamples)),
        ("Growth protocol", chain_table(root, GROWTH, seeds, growth_reference)),
        ("Against `independent`", versus_table(root, "independent", GROWTH[1:], seeds, args.compare_seed,
                                               args.n_resamples)),
        ("Against `bct`", versus_table(root, "bct", [m for m in GROWTH if m != "bct"], seeds, args.compare_seed,
                                       args.n_resamples)),
        ("BT^2 against BCT", pairs_table(root, [("bt2", "bct"), ("bt2", "bct-authors"), ("bct", "independent"),
                                                ("bct-authors", "independent"), ("bt2", "independent")],
                                         seeds, args.n_resamples)),
        ("Class-incremental", chain_table(root, CLASSES, seeds, classes_reference)),
        ("Class-incremental by class", class_split_table(root, CLASSES, args.compare_seed)),
        ("Architecture change", chain_table(root, ["bct-arch"], seeds, growth_reference)),
        ("Adapters", adapter_table([root / f"fmnist-adapters-s{s}" for s in seeds])),
        *((f"Backward adapters of {run.name}", lambda_table(run, args.n_resamples)) for run in lambda_runs),
        ("Run times", times_table(root, sorted(p.stem for p in (root / "logs").glob("*.time")))),
    ]
    for title, lines in sections:
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
