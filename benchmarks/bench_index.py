"""Speed of compat's index path against faiss doing the same build and search directly.

One gallery of N x D synthetic clustered features (seeded), Q of its items as queries (leave-one-out:
each query's own item is in the index). Both sides build the same ``index_factory`` index on the
same training sample with the same k-means seed, fill it with the whole gallery and search it with
the same ``nprobe`` for k + 1 neighbours:

- **faiss**: ``faiss.normalize_L2`` on copies, ``index_factory``, ``train``, ``add``, ``nprobe``,
  ``search`` — nothing else;
- **compat**: :func:`compat.retrieval.index.build_index` and :meth:`GalleryIndex.search` with
  ``exclude`` (the query's own item removed from the list), everything they do (checks,
  normalisation in blocks, parameter setting, the leave-one-out drop).

The ratio compat / faiss is reported for the build, the search and both together (target: at most
1.2x together), with the two sides' neighbours compared. ``--cell`` also times the whole index cell
(:func:`compat.compatibility.indexed.evaluate_index_cell`: the search, the metrics and the exact
top-k for the recall), for information.

Run from the repository root (the default is the issue's case: 200k x 128, 10k queries,
IVF1024,PQ16, nprobe 16)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_index.py
    PYTHONPATH=. python benchmarks/bench_index.py --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np


def make_gallery(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 class centres plus Gaussian noise, and (n,) labels; generated in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    feats = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        feats[s:e] = centres[labels[s:e]] + 1.2 * rng.standard_normal((e - s, dim), dtype=np.float32)
    return feats, labels


def faiss_direct(gallery, queries, rows, args):
    """The baseline: faiss's own calls only. Returns (build seconds, search seconds, I)."""
    import faiss

    t0 = time.perf_counter()
    x = gallery.copy()
    faiss.normalize_L2(x)
    index = faiss.index_factory(gallery.shape[1], args.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = args.seed
        pq = getattr(faiss.downcast_index(index), "pq", None)
        if pq is not None:
            pq.cp.seed = args.seed
    index.train(x[rows])
    index.add(x)
    if ivf is not None:
        ivf.nprobe = args.nprobe
    t1 = time.perf_counter()
    q = queries.copy()
    faiss.normalize_L2(q)
    _, found = index.search(q, args.k + 1)
    return t1 - t0, time.perf_counter() - t1, found


def compat_path(gallery, queries, own, args):
    """compat's functions. Returns (build seconds, search seconds, I, the index)."""
    from compat.retrieval.index import IndexSpec, build_index

    spec = IndexSpec(factory=args.factory, nprobe=args.nprobe, train_size=args.train_size, k=args.k, seed=args.seed)
    t0 = time.perf_counter()
    index = build_index(gallery, spec)
    t1 = time.perf_counter()
    _, found = index.search(queries, args.k, exclude=own)
    return t1 - t0, time.perf_counter() - t1, found, index


def drop_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    return np.array([[g for g in row if g != o][:k] for row, o in zip(found, own, strict=True)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--factory", default="IVF1024,PQ16")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--train-size", type=int, default=None, help="training sample (default: the whole gallery)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating which goes first; minimum kept")
    p.add_argument("--cell", action="store_true", help="also time the whole index cell (with exact recall)")
    p.add_argument("--quick", action="store_true", help="20k x 64, 2k queries, IVF64,PQ8np: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.gallery, args.dim, args.queries, args.factory, args.nprobe = 20_000, 64, 2_000, "IVF64,PQ8np", 8
    print("$ " + " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}",
                                                     "python", *sys.argv]))
    import faiss

    from compat.retrieval.index import training_rows

    print(f"python {platform.python_version()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"{os.cpu_count()} cores")
    gallery, labels = make_gallery(args.gallery, args.dim, args.classes, args.seed)
    own = np.random.default_rng(args.seed + 1).choice(args.gallery, args.queries, replace=False)
    queries = gallery[own]
    rows = training_rows(args.gallery, args.train_size, args.seed)
    print(f"gallery {args.gallery} x {args.dim}, {args.queries} queries, {args.factory}, nprobe {args.nprobe}, "
          f"k {args.k}, trained on {len(rows)}")
    runs: dict[str, list[tuple[float, float]]] = {"faiss": [], "compat": []}
    for r in range(args.repeat):
        for side in ("faiss", "compat") if r % 2 == 0 else ("compat", "faiss"):
            if side == "faiss":
                f_build, f_search, f_found = faiss_direct(gallery, queries, rows, args)
                runs["faiss"].append((f_build, f_search))
            else:
                c_build, c_search, c_found, index = compat_path(gallery, queries, own, args)
                runs["compat"].append((c_build, c_search))
    (f_build, f_search), (c_build, c_search) = (min(runs[s], key=sum) for s in ("faiss", "compat"))
    same = np.array_equal(c_found, drop_own(f_found, own, args.k))
    print("| phase | faiss (s) | compat (s) | compat / faiss |")
    print("|---|---:|---:|---:|")
    for name, f, c in (("build", f_build, c_build), ("search", f_search, c_search),
                       ("build + search", f_build + f_search, c_build + c_search)):
        print(f"| {name} | {f:.2f} | {c:.2f} | {c / f:.3f}x |")
    print(f"same neighbours: {same}; {args.repeat} run(s) each, the fastest kept; target: build + search at most 1.2x")
    if args.cell:
        from compat.compatibility.indexed import evaluate_index_cell
        from compat.features import FeatureSet
        from compat.retrieval import RetrievalEvaluator

        g = FeatureSet.from_arrays(gallery, labels)
        q = FeatureSet.from_arrays(queries, labels[own], own)
        evaluator = RetrievalEvaluator(("cmc@1",), device="cpu")  # imports torch: not timed
        t0 = time.perf_counter()
        cell = evaluate_index_cell(evaluator, q, g, index, k=args.k)
        seconds = time.perf_counter() - t0
        print(f"whole index cell (search, cmc@1, map@{args.k}, exact top-{args.k} for the recall): {seconds:.2f} s = "
              f"{seconds / f_search:.2f}x faiss's search; recall@{args.k} {cell.recall:.4f}, "
              f"cmc@1 {cell['cmc@1']:.4f}")


if __name__ == "__main__":
    main()
