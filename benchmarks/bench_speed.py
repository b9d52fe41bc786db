"""The speed targets of the evaluator at one process, each against a raw ``faiss.knn`` top-k pass
over the same cells in the same run (benchmarks/README.md, "bench_speed.py").

Cases (data from :func:`bench_evaluator.make_features`, seeded; cosine; leave-one-out by id):

- ``inproc``: 50k x 512, 1000 classes, the 3 cells of a 2-version chain inside one process:
  ``evaluate_chain`` with cmc@1, cmc@5 (target 1.1x) and with cmc@1, cmc@5, map (target 2x) against
  ``faiss.knn(k=6)`` on L2-normalised arrays prepared beforehand;
- ``process``: 40k x 256, 100 classes, the same 3 cells as whole processes: ``compat eval`` on the
  two ``.npy`` directories against a Python process that loads them, normalises and runs
  ``faiss.knn`` (targets 1.1x CMC, 2x with map);
- ``small``: 20k x 128, 100 classes, one cell (v1 on v1) with full mAP against a raw top-6 pass
  (target 3x);
- ``worst``: the same size with random features (every label is random with respect to the
  features, so positives are spread over the whole ranking), one cell with full mAP (target 3x).

Each side runs ``--repeat`` times, interleaved, and the fastest run counts. Thread count: ``--threads``
for torch, faiss and the evaluator (and ``OMP_NUM_THREADS`` of the processes).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_speed.py --threads 1 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluator import make_features, normalized, set_threads

CMC = ("cmc@1", "cmc@5")
CMC_MAP = ("cmc@1", "cmc@5", "map")
CELLS = (("v1", "v1"), ("v2", "v1"), ("v2", "v2"))
RAW_K = 6
# case -> (gallery, dim, classes, data, noise, cells, [(label, metrics, target)])
CASES = {
    "inproc": (50_000, 512, 1000, "clustered", 2.75, CELLS, [("cmc", CMC, 1.1), ("map", CMC_MAP, 2.0)]),
    "process": (40_000, 256, 100, "clustered", 2.2, CELLS, [("cmc", CMC, 1.1), ("map", CMC_MAP, 2.0)]),
    "small": (20_000, 128, 100, "clustered", 1.85, CELLS[:1], [("map", CMC_MAP, 3.0)]),
    "worst": (20_000, 128, 100, "random", 0.0, CELLS[:1], [("map", CMC_MAP, 3.0)]),
}

RAW_SCRIPT = """
import sys, numpy as np, faiss
faiss.omp_set_num_threads({threads})
x = {{}}
for v in ("v1", "v2"):
    f = np.load(f"{{sys.argv[1]}}/{{v}}/features.npy")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30)
    x[v] = np.ascontiguousarray(f, dtype=np.float32)
for q, g in {cells!r}:
    faiss.knn(x[q], x[g], {k}, metric=faiss.METRIC_INNER_PRODUCT)
"""


def _versions(v1: np.ndarray, v2: np.ndarray, labels: np.ndarray):
    from compat.compatibility.matrix import Version
    from compat.features import FeatureSet

    ids = np.arange(len(labels), dtype=np.int64)
    return [Version("v1", FeatureSet.from_arrays(v1, labels, ids)), Version("v2", FeatureSet.from_arrays(v2, labels, ids))]


def _raw(prepared: dict[str, np.ndarray], cells) -> float:
    import faiss

    t0 = time.perf_counter()
    for q, g in cells:
        faiss.knn(prepared[q], prepared[g], RAW_K, metric=faiss.METRIC_INNER_PRODUCT)
    return time.perf_counter() - t0


def _compat(versions, cells, metrics: tuple[str, ...], threads: int) -> float:
    from compat.compatibility.matrix import evaluate_chain
    from compat.retrieval.evaluator import RetrievalEvaluator

    t0 = time.perf_counter()
    ev = RetrievalEvaluator(metrics, device="cpu", threads=threads)
    if len(cells) == len(CELLS):
        evaluate_chain(versions, ev)
    else:
        ev.evaluate(versions[0].gallery, versions[0].gallery)
    return time.perf_counter() - t0


def in_process(case: str, args) -> list[tuple]:
    n, dim, classes, data, noise, cells, phases = CASES[case]
    n = int(n * args.scale)
    v1, v2, labels = make_features(n, dim, classes, data=data, noise=noise, seed=args.seed)
    versions = _versions(v1, v2, labels)
    prepared = {"v1": normalized(v1), "v2": normalized(v2)}
    best = {"raw": np.inf, **{p[0]: np.inf for p in phases}}
    for r in range(args.repeat):
        order = ["raw", *[p[0] for p in phases]]
        for name in order if r % 2 == 0 else order[::-1]:
            if name == "raw":
                best["raw"] = min(best["raw"], _raw(prepared, cells))
            else:
                metrics = next(p[1] for p in phases if p[0] == name)
                best[name] = min(best[name], _compat(versions, cells, metrics, args.threads))
    return [(case, f"{n // 1000}k x {dim}", name, best["raw"], best[name], target) for name, _, target in phases]


def whole_processes(args) -> list[tuple]:
    from compat.features import FeatureSet, save_features

    n, dim, classes, data, noise, cells, phases = CASES["process"]
    n = int(n * args.scale)
    v1, v2, labels = make_features(n, dim, classes, data=data, noise=noise, seed=args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, x in (("v1", v1), ("v2", v2)):
            save_features(FeatureSet.from_arrays(x, labels, np.arange(n, dtype=np.int64)), Path(tmp) / name)
        raw_cmd = [sys.executable, "-c", RAW_SCRIPT.format(threads=args.threads, cells=cells, k=RAW_K), tmp]
        compat = [sys.executable, "-m", "compat.cli", "eval", "--version", f"v1={tmp}/v1", "--version",
                  f"v2={tmp}/v2", "--device", "cpu", "--quiet", "--out", f"{tmp}/report"]
        commands = {"raw": raw_cmd}
        for name, metrics, _ in phases:
            commands[name] = compat + [a for m in metrics for a in ("--metric", m)]
        best = dict.fromkeys(commands, np.inf)
        for r in range(args.repeat):
            names = list(commands) if r % 2 == 0 else list(commands)[::-1]
            for name in names:
                t0 = time.perf_counter()
                subprocess.run(commands[name], env=env, check=True, stdout=subprocess.DEVNULL)
                best[name] = min(best[name], time.perf_counter() - t0)
    return [("process", f"{n // 1000}k x {dim}", name, best["raw"], best[name], target) for name, _, target in phases]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", choices=tuple(CASES), help="repeatable; default: all")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="gallery sizes times this (a smoke run: 0.05)")
    args = p.parse_args(argv)
    print("$ " + shlex.join(["python", *sys.argv]), flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f}; cores: {os.cpu_count()}", flush=True)
    set_threads(args.threads)
    rows = []
    for case in args.case or list(CASES):
        rows += whole_processes(args) if case == "process" else in_process(case, args)
        print(f"  {case} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    print("\n| case | size | metrics | raw faiss.knn s | compat s | ratio | target | met |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for case, size, name, raw, got, target in rows:
        ratio = got / raw
        print(f"| {case} | {size} | {'cmc@1,5' if name == 'cmc' else 'cmc@1,5 + map'} | {raw:.2f} | {got:.2f} | "
              f"{ratio:.2f}x | {target:g}x | {'yes' if ratio <= target else 'no'} |")


if __name__ == "__main__":
    main()
