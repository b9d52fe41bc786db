"""Speed and memory of the retrieval evaluator against a raw ``faiss.knn`` top-k pass.

Both sides search the same cells of a two-version chain (v1/v1, v2/v1, v2/v2, leave-one-out) on
the same synthetic features, in the same run, with the same thread count; what is reported is
the evaluator's time as a ratio of the raw pass's time, never absolute seconds across runs.

- Case A: gallery 50k, D = 512; metrics cmc@1, cmc@5 (target <= 1.5x raw) and cmc@1, cmc@5, map
  (target <= 3x raw).
- Case B: gallery 200k, D = 128; cmc@1, cmc@5 (target <= 1.5x raw) and the evaluator's peak RSS
  beyond the features (target < 1.5 GiB), each phase measured in a fresh process that loads the
  features saved once with :func:`compat.features.save_features`.

Data (``--data clustered``, the default): C unit-norm class centres in D dims, an item is its
centre plus isotropic Gaussian noise, normalised (v1, the old model). v2, the new model, sees the
same centres through a small random rotation, with less noise (half of it shared with the item's
v1 noise), so v2/v1 retrieval is meaningful. ``--data random`` draws every feature as pure
Gaussian noise: the worst case for full-ranking metrics (positives are spread over the ranking).

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_evaluator.py --quick
    PYTHONPATH=. python benchmarks/bench_evaluator.py --case a
    PYTHONPATH=. python benchmarks/bench_evaluator.py --case b
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CMC = ("cmc@1", "cmc@5")
CMC_MAP = ("cmc@1", "cmc@5", "map")
RAW_K = 6  # max cmc k + 1: the query's own item comes back from the raw search
CELLS = (("v1", "v1"), ("v2", "v1"), ("v2", "v2"))  # (query version, gallery version)
MiB = 1 << 20


@dataclass(frozen=True)
class CaseSpec:
    name: str
    gallery: int
    dim: int
    quick_gallery: int
    noise: float  # norm of the v1 noise vector; calibrated so that v1/v1 cmc@1 is about 0.8
    time_map: bool  # also time cmc@1, cmc@5, map
    memory: bool  # measure peak RSS in fresh processes by default
    targets: dict[str, float] = field(default_factory=dict)


CASES = {
    "a": CaseSpec("a", 50_000, 512, 5_000, 2.75, time_map=True, memory=False,
                  targets={"cmc": 1.1, "map": 2.0}),
    "b": CaseSpec("b", 200_000, 128, 10_000, 1.85, time_map=False, memory=True,
                  targets={"cmc": 1.1, "memory_mib": 1536.0}),
}


# ----------------------------------------------------------------------------- data


def make_features(n: int, dim: int, classes: int, *, data: str, noise: float, seed: int,
                  chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded synthetic embeddings of two model versions, generated in float32 chunks.

    Returns:
        ``(v1, v2, labels)``: (n, dim) float32 unit-norm rows each, and (n,) int64 balanced labels.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % classes)
    v1 = np.empty((n, dim), dtype=np.float32)
    v2 = np.empty((n, dim), dtype=np.float32)
    if data == "random":
        for s in range(0, n, chunk):
            v1[s : s + chunk] = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        for s in range(0, n, chunk):
            v2[s : s + chunk] = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((classes, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        rotation = _small_rotation(dim, rng).astype(np.float32)
        centres2 = centres @ rotation.T
        scale1 = np.float32(noise / np.sqrt(dim))
        scale2 = np.float32(0.8 * noise / np.sqrt(dim))
        for s in range(0, n, chunk):
            rows = min(chunk, n - s)
            lab = labels[s : s + rows]
            z1 = rng.standard_normal((rows, dim), dtype=np.float32)
            z2 = rng.standard_normal((rows, dim), dtype=np.float32)
            v1[s : s + rows] = centres[lab] + scale1 * z1
            shared = z1 @ rotation.T
            v2[s : s + rows] = centres2[lab] + scale2 * (np.float32(0.5) * shared + np.float32(0.75**0.5) * z2)
    for x in (v1, v2):
        for s in range(0, n, chunk):
            x[s : s + chunk] /= np.linalg.norm(x[s : s + chunk], axis=1, keepdims=True)
    return v1, v2, labels


def _small_rotation(dim: int, rng: np.random.Generator, angle: float = 0.35) -> np.ndarray:
    """A random orthogonal matrix near the identity (Q of the QR of I + angle * G / sqrt(D))."""
    g = rng.standard_normal((dim, dim)) * (angle / np.sqrt(dim))
    q, r = np.linalg.qr(np.eye(dim) + g)
    return q * np.sign(np.diag(r))[None, :]


# ----------------------------------------------------------------------------- phases


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def normalized(x: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=np.float32, copy=True)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return out


def raw_pass(prepared: dict[str, np.ndarray]) -> tuple[float, dict[tuple[str, str], np.ndarray]]:
    """``faiss.knn`` top-k of every cell on L2-normalised float32 arrays; (seconds, cell -> I)."""
    import faiss

    out = {}
    t0 = time.perf_counter()
    for qv, gv in CELLS:
        _, idx = faiss.knn(prepared[qv], prepared[gv], RAW_K, metric=faiss.METRIC_INNER_PRODUCT)
        out[(qv, gv)] = idx
    return time.perf_counter() - t0, out


def evaluator_pass(versions: list, metrics: tuple[str, ...], threads: int, budget: str | None):
    """``evaluate_chain`` over the versions; (seconds, CompatibilityReport)."""
    from compat.compatibility.matrix import evaluate_chain
    from compat.retrieval.evaluator import RetrievalEvaluator

    kwargs = {} if budget is None else {"memory_budget": budget}
    t0 = time.perf_counter()
    evaluator = RetrievalEvaluator(metrics=metrics, device="cpu", threads=threads, **kwargs)
    report = evaluate_chain(versions, evaluator)
    return time.perf_counter() - t0, report


def raw_cmc(idx: np.ndarray, labels: np.ndarray, k: int) -> float:
    """CMC@k of a raw top-k, with each query's own item (same index: same id) left out."""
    n = len(idx)
    keep = (idx != np.arange(n)[:, None]) & (idx >= 0)
    within = keep & (np.cumsum(keep, axis=1) <= k)
    hits = (within & (labels[np.maximum(idx, 0)] == labels[:, None])).any(axis=1)
    return float(hits.mean())


# ----------------------------------------------------------------------------- memory (child)


def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in KiB (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _load_in_ram(path: Path):
    """Load a saved feature set and copy its features into anonymous memory, dropping the map."""
    from compat.features import FeatureSet, load_features

    mapped = load_features(path)
    feats = np.empty(mapped.features.shape, dtype=np.float32)
    for s in range(0, len(feats), 1 << 15):
        feats[s : s + (1 << 15)] = mapped.features[s : s + (1 << 15)]
    fs = FeatureSet(feats, mapped.labels, mapped.ids, mapped.meta, str(path))
    del mapped
    gc.collect()
    return fs


def child_main(args: argparse.Namespace) -> None:
    """One measured phase in a fresh process; prints one JSON line."""
    from compat.compatibility.matrix import Version

    set_threads(args.threads)  # imports torch and faiss before the baseline: not the phase's memory
    data = Path(args._data)
    sets = {name: _load_in_ram(data / name) for name in ("v1", "v2")}
    feature_mib = sum(fs.features.nbytes + fs.labels.nbytes + fs.ids.nbytes for fs in sets.values()) / MiB
    if args._child == "raw":
        for fs in sets.values():  # preprocessing is not timed: normalise in place, no extra copy
            feats = fs.features
            feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    gc.collect()
    reset = _reset_peak()
    base = _proc_status()
    if args._child == "raw":
        seconds, _ = raw_pass({name: fs.features for name, fs in sets.items()})
        values = None
    else:
        metrics = CMC_MAP if args._child == "eval-map" else CMC
        versions = [Version(name, fs) for name, fs in sets.items()]
        seconds, report = evaluator_pass(versions, metrics, args.threads, args.memory_budget)
        values = report.matrices
    end = _proc_status()
    peak_kib = end["VmHWM"] - base["VmRSS"]
    print(json.dumps({
        "phase": args._child, "seconds": seconds, "peak_beyond_mib": peak_kib / 1024,
        "rss_after_load_mib": base["VmRSS"] / 1024, "feature_mib": feature_mib,
        "peak_reset": reset, "values": values,
    }))


def run_child(script: Path, phase: str, data_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(script), "--_child", phase, "--_data", str(data_dir), "--threads", str(args.threads)]
    if args.memory_budget is not None:
        cmd += ["--memory-budget", args.memory_budget]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child phase {phase!r} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- one case


@dataclass
class Row:
    case: str
    phase: str
    seconds: float
    ratio: float | None
    peak_mib: float | None
    target: str
    passed: bool | None


def run_case(spec: CaseSpec, args: argparse.Namespace) -> list[Row]:
    from compat.compatibility.matrix import Version
    from compat.features import FeatureSet, save_features

    n = args.gallery or (spec.quick_gallery if args.quick else spec.gallery)
    dim = args.dim or spec.dim
    full_classes = args.classes
    classes = max(2, round(full_classes * n / spec.gallery)) if args.quick and not args.gallery else full_classes
    noise = args.noise if args.noise is not None else spec.noise
    memory = spec.memory if args.memory is None else args.memory
    print(f"\n## case {spec.name}: gallery {n}, D {dim}, {classes} classes, data {args.data}"
          + (f", noise {noise}" if args.data == "clustered" else "") + f", threads {args.threads}, repeat {args.repeat}")

    t0 = time.perf_counter()
    f1, f2, labels = make_features(n, dim, classes, data=args.data, noise=noise, seed=args.seed)
    print(f"generated 2 x {f1.nbytes / MiB:.0f} MiB of features in {time.perf_counter() - t0:.1f} s")
    sets = {name: FeatureSet.from_arrays(f, labels, meta={"model": f"synthetic-{name}", "version": name,
                                                            "dataset": args.data, "normalized": True})
            for name, f in (("v1", f1), ("v2", f2))}
    versions = [Version(name, fs) for name, fs in sets.items()]
    prepared = {name: normalized(fs.features) for name, fs in sets.items()}

    phases = [("raw", None), ("eval-cmc", CMC)] + ([("eval-map", CMC_MAP)] if spec.time_map or args.map else [])
    best: dict[str, float] = {}
    results: dict[str, object] = {}
    for rep in range(args.repeat):  # phases interleaved, so that machine noise hits them alike
        for phase, metrics in phases:
            gc.collect()
            if phase == "raw":
                seconds, out = raw_pass(prepared)
            else:
                seconds, out = evaluator_pass(versions, metrics, args.threads, args.memory_budget)
            results[phase] = out
            best[phase] = min(best.get(phase, float("inf")), seconds)
            print(f"  repeat {rep + 1}: {phase:9s} {seconds:8.2f} s", flush=True)
    _print_cells(results, labels)

    raw_s = best["raw"]
    rows = [Row(spec.name, f"raw faiss.knn k={RAW_K}", raw_s, 1.0, None, "-", None)]
    for phase, metrics in phases[1:]:
        key = "map" if "map" in metrics else "cmc"
        limit = spec.targets.get(key, 3.0 if key == "map" else 1.5)
        ratio = best[phase] / raw_s
        rows.append(Row(spec.name, "evaluator " + ",".join(metrics), best[phase], ratio, None,
                        f"<= {limit:g}x", ratio <= limit))

    if memory:
        tmp = Path(tempfile.mkdtemp(prefix="bench_evaluator_"))
        try:
            for name, fs in sets.items():
                save_features(fs, tmp / name)
            del sets, versions, prepared, f1, f2
            gc.collect()
            mem_phases = ["raw", "eval-cmc"] + (["eval-map"] if spec.time_map or args.map else [])
            child = {p: run_child(Path(__file__).resolve(), p, tmp, args) for p in mem_phases}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        c_raw = child["raw"]
        print(f"fresh processes: features {c_raw['feature_mib']:.0f} MiB, RSS after loading "
              f"{c_raw['rss_after_load_mib']:.0f} MiB (interpreter, torch, faiss, features); "
              f"peak reset with clear_refs: {c_raw['peak_reset']}")
        limit_mib = spec.targets.get("memory_mib", 1536.0)
        for p in mem_phases:
            c = child[p]
            label = "raw faiss.knn" if p == "raw" else "evaluator " + ",".join(CMC_MAP if p == "eval-map" else CMC)
            is_eval = p != "raw"
            rows.append(Row(spec.name, f"{label} [fresh process]", c["seconds"], c["seconds"] / c_raw["seconds"],
                            c["peak_beyond_mib"], f"< {limit_mib:g} MiB" if is_eval else "-",
                            (c["peak_beyond_mib"] < limit_mib) if is_eval else None))
    return rows


def _print_cells(results: dict, labels: np.ndarray) -> None:
    print("\ncell values (query/gallery):")
    header = ["cell", "raw cmc@1", "raw cmc@5"]
    reports = {p: r for p, r in results.items() if p != "raw"}
    full = reports.get("eval-map") or reports.get("eval-cmc")
    header += [f"eval {m}" for m in full.metrics]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for qv, gv in CELLS:
        idx = results["raw"][(qv, gv)]
        i, j = int(qv[1]) - 1, int(gv[1]) - 1
        vals = [raw_cmc(idx, labels, 1), raw_cmc(idx, labels, 5)] + [full.matrices[m][i][j] for m in full.metrics]
        print(f"| {qv}/{gv} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")


def print_table(rows: list[Row]) -> None:
    print("\n| case | phase | seconds | ratio vs raw | peak MiB beyond features | target | result |")
    print("|---|---|---:|---:|---:|---|---|")
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        verdict = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
        print(f"| {r.case} | {r.phase} | {r.seconds:.2f} | {ratio} | {peak} | {r.target} | {verdict} |")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=("a", "b", "all"), default="all", help="which case to run (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes (a: 5k gallery, b: 10k) for a smoke run")
    p.add_argument("--data", choices=("clustered", "random"), default="clustered",
                   help="clustered class structure (default) or pure Gaussian (worst case for ranking)")
    p.add_argument("--repeat", type=int, default=1, help="timed repetitions; the minimum is reported")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch, faiss (OpenMP) and evaluator threads (default: os.cpu_count())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=1000, help="classes at full size (scaled down by --quick)")
    p.add_argument("--gallery", type=int, default=None, help="override the case's gallery size")
    p.add_argument("--dim", type=int, default=None, help="override the case's feature size")
    p.add_argument("--noise", type=float, default=None, help="norm of the v1 noise (default: per case, cmc@1 ~0.8)")
    p.add_argument("--memory-budget", default=None, help="evaluator memory budget (default: the library's)")
    p.add_argument("--map", action="store_true", help="also time cmc@1,cmc@5,map where the case does not")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory", dest="memory", action="store_true", default=None,
                     help="measure peak RSS in fresh processes (default: case b only)")
    mem.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--_child", choices=("raw", "eval-cmc", "eval-map"), help=argparse.SUPPRESS)
    p.add_argument("--_data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.threads < 1:
        p.error("--repeat and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._child:
        child_main(args)
        return
    import faiss
    import torch

    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"cwd {os.getcwd()}; python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"faiss {faiss.__version__}; {os.cpu_count()} CPUs; threads {args.threads}")
    print("Times are ratios to a raw faiss.knn pass in the same run; compare ratios, not seconds, across runs.")
    set_threads(args.threads)
    rows: list[Row] = []
    for name in ("a", "b") if args.case == "all" else (args.case,):
        rows += run_case(CASES[name], args)
    print_table(rows)


if __name__ == "__main__":
    main()
