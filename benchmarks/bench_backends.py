"""Which kNN backend is faster on this device: ``compat.retrieval.knn`` with torch vs faiss.

Same data, same process, interleaved repeats; prints the ratio torch / faiss (what ``auto`` relies on).

    PYTHONPATH=. python benchmarks/bench_backends.py [--gallery 50000] [--queries 4096] [--dim 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("$ python " + " ".join(sys.argv))

    from compat.retrieval.knn import knn

    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.gallery, args.dim)).astype(np.float32)
    query = gallery[: args.queries]
    exclude = np.arange(args.queries)
    times: dict[str, list[float]] = {"torch": [], "faiss": []}
    results = {}
    for _ in range(args.repeat):
        for backend, spent in times.items():
            start = time.perf_counter()
            results[backend] = knn(query, gallery, args.k, backend=backend, device=args.device, exclude=exclude)
            spent.append(time.perf_counter() - start)
    same = np.array_equal(results["torch"][1], results["faiss"][1])
    t, f = min(times["torch"]), min(times["faiss"])
    print(f"queries {args.queries} x gallery {args.gallery} x D {args.dim}, k {args.k}, device {args.device}")
    print(f"| backend | best of {args.repeat} (s) | ratio to faiss |")
    print("|---|---:|---:|")
    print(f"| faiss | {f:.2f} | 1.00x |")
    print(f"| torch | {t:.2f} | {t / f:.2f}x |")
    print(f"identical neighbours: {same}")


if __name__ == "__main__":
    main()
