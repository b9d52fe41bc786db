"""What the query-gallery protocol costs against a leave-one-out cell of the same size, and how fast a
large relevance file loads.

1. **Cell cost.** A leave-one-out cell (N queries that are the N gallery items, each left out by id)
   and a query-gallery cell (N separate queries, a gallery of N items) on seeded synthetic features
   of the same sizes, through the same :class:`~compat.retrieval.RetrievalEvaluator`. The phases are
   interleaved and each is timed ``--repeat`` times, in wall-clock and in CPU seconds of the process
   (all its threads: the cost, less sensitive than wall-clock time to other work on a shared
   machine); the minima are kept and the ratios query-gallery / loo printed, for CMC only and for
   CMC + full mAP. Also timed: the query-gallery
   cell with camera groups and ``exclude=same-group`` (each query ignores the same-identity items of
   its own camera, as in Market-1501), as a ratio to the same loo cell.
2. **Relevance files.** ``--qrels-rows`` rows (default 1M; 1/4 positive, the rest junk) written to a
   CSV, then :func:`compat.retrieval.qrels.load_qrels` (parse and validate), the id check against the
   feature sets, and the judgement of one cell (ids resolved, positives and junk per query), in seconds.

Run from the repository root::

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_query_gallery.py
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_query_gallery.py --quick
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CMC = ("cmc@1", "cmc@5")
CMC_MAP = ("cmc@1", "cmc@5", "map")


def make_sets(n: int, dim: int, identities: int, cameras: int, seed: int, noise: float):
    """Gallery and queries of one model: identity centres plus noise of norm about ``noise``; the camera of
    each item."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int):
        labels = rng.integers(0, identities, m).astype(np.int64)
        x = centres[labels] + (noise / np.sqrt(dim)) * rng.standard_normal((m, dim)).astype(np.float32)
        return x.astype(np.float32), labels, rng.integers(0, cameras, m).astype(np.int64)

    g, g_labels, g_cams = draw(n)
    q, q_labels, q_cams = draw(n)
    return (g, g_labels, np.arange(n, dtype=np.int64), g_cams), (q, q_labels, np.arange(n, 2 * n, dtype=np.int64), q_cams)


def time_cells(args: argparse.Namespace, metrics: tuple[str, ...]) -> dict[str, float]:
    from compat.retrieval import RetrievalEvaluator

    (g, gl, gi, gc), (q, ql, qi, qc) = make_sets(args.n, args.dim, args.identities, args.cameras, args.seed,
                                                 args.noise)
    common = {"device": "cpu", "threads": args.threads}
    loo = RetrievalEvaluator(metrics, protocol="loo", **common)
    qg = RetrievalEvaluator(metrics, protocol="query-gallery", **common)
    qg_cam = RetrievalEvaluator(metrics, protocol="query-gallery", exclude="same-group", **common)
    phases = {
        "loo": lambda: loo.evaluate_arrays(g, gl, gi, g, gl, gi),
        "query-gallery": lambda: qg.evaluate_arrays(q, ql, qi, g, gl, gi),
        "query-gallery, same-group": lambda: qg_cam.evaluate_arrays(q, ql, qi, g, gl, gi, query_groups=qc,
                                                                     gallery_groups=gc),
    }
    wall = {name: np.inf for name in phases}
    cpu = {name: np.inf for name in phases}
    values = {}
    loo.evaluate_arrays(g[:500], gl[:500], gi[:500], g[:500], gl[:500], gi[:500])  # warm-up: imports, pools
    for _ in range(args.repeat):
        for name, run in phases.items():  # interleaved, so that load changes hit every phase alike
            start, start_cpu = time.perf_counter(), time.process_time()
            result = run()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            values[name] = result.values
    for name in phases:
        shown = ", ".join(f"{m} {v:.4f}" for m, v in values[name].items())
        print(f"  {name:28s} {wall[name]:8.2f} s wall {cpu[name]:8.2f} s cpu   {shown}")
    return wall, cpu


def time_qrels(args: argparse.Namespace) -> None:
    from compat.retrieval.qrels import check_qrels_ids, load_qrels
    from compat.retrieval.query_gallery import judge

    rng = np.random.default_rng(args.seed)
    n_queries, n_gallery = 10_000, 1_000_000
    rows = args.qrels_rows
    flat = rng.choice(n_queries * n_gallery, rows, replace=False)  # distinct (query, gallery) pairs
    q, g = flat // n_gallery, flat % n_gallery
    rel = np.where(rng.random(rows) < 0.25, "positive", "junk")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qrels.csv"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("query_id,gallery_id,relevance\n")
            fh.writelines(f"q{a},g{b},{r}\n" for a, b, r in zip(q, g, rel, strict=True))
        size = path.stat().st_size
        start = time.perf_counter()
        qrels = load_qrels(path)
        loaded = time.perf_counter() - start
    query_ids = np.array([f"q{i}" for i in range(n_queries)])
    gallery_ids = np.array([f"g{i}" for i in range(n_gallery)])
    start = time.perf_counter()
    check_qrels_ids(qrels, [query_ids], [gallery_ids])
    checked = time.perf_counter() - start
    labels_q, labels_g = np.zeros(n_queries, np.int64), np.zeros(n_gallery, np.int64)
    start = time.perf_counter()
    judged = judge(labels_q, labels_g, query_ids=query_ids, gallery_ids=gallery_ids, qrels=qrels)
    judged_s = time.perf_counter() - start
    print(f"  {rows:,} rows ({size / 2**20:.1f} MiB; {n_queries:,} query ids, {n_gallery:,} gallery ids)")
    print(f"  load_qrels (parse + validate)       {loaded:6.2f} s")
    print(f"  ids checked against the sets        {checked:6.2f} s")
    print(f"  one cell judged (ids resolved)      {judged_s:6.2f} s   "
          f"{int(judged.n_pos.sum()):,} positives, {len(judged.ignored.indices):,} junk")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="queries = gallery items per cell")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--identities", type=int, default=5_000)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--noise", type=float, default=2.5, help="norm of an item's noise (its centre has norm 1)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--qrels-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="n = 5,000, 100k qrels rows, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.identities, args.qrels_rows, args.repeat = 5_000, 500, 100_000, 1
    import torch

    torch.set_num_threads(args.threads)
    print("$ " + shlex.join(["python", "benchmarks/bench_query_gallery.py", *(argv or sys.argv[1:])]))
    print(f"N = {args.n:,} queries x {args.n:,} gallery items, D = {args.dim}, {args.identities:,} identities, "
          f"{args.cameras} cameras, {args.threads} threads, minimum of {args.repeat}")
    for metrics in (CMC, CMC_MAP):
        print(f"metrics {', '.join(metrics)}:")
        wall, cpu = time_cells(args, metrics)
        for name in ("query-gallery", "query-gallery, same-group"):
            print(f"  ratio {name} / loo: {wall[name] / wall['loo']:.3f} wall, {cpu[name] / cpu['loo']:.3f} cpu")
    print("relevance file:")
    time_qrels(args)


if __name__ == "__main__":
    main()
