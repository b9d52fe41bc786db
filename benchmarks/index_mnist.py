"""Does compatibility survive the production index? Trained runs, exact and through faiss indexes.

For each run directory (``compat train`` output with ``features/v0.npz`` and ``features/v1.npz``)
and each factory string, the chain v0 -> v1 is evaluated exactly and through an index built on each
gallery version (``compat.compatibility.evaluate_chain`` with an ``IndexSetup``, the same as
``compat eval --index``). One Markdown row per (run, search): cmc@1 and map@10 of the cells
v0/v0, v1/v0, v1/v1, the criterion v1/v0 > v0/v0, and the index's recall@10 on v1/v0. A factory
that faiss cannot build for a run's feature size is reported with faiss's reason.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/index_mnist.py RUN_DIR [RUN_DIR ...] \\
        --index IVF64,PQ8 --index HNSW32 [--nprobe 8]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--index", action="append", required=True, help="faiss factory string (repeat)")
    p.add_argument("--nprobe", type=int, default=None, help="for the IVF factories (faiss default 1)")
    p.add_argument("--ef-search", type=int, default=None, help="for the HNSW factories (faiss default 16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print("$ " + " ".join(shlex.quote(a) for a in [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}",
                                                     "python", *sys.argv]))
    from compat.compatibility import Version, evaluate_chain
    from compat.compatibility.indexed import IndexSetup
    from compat.errors import CompatError
    from compat.features import load_features
    from compat.retrieval import RetrievalEvaluator
    from compat.retrieval.index import IndexSpec

    evaluator = RetrievalEvaluator(("cmc@1", "map@10"), device="cpu")
    print("| run | dim | search | cmc@1 v0/v0 | cmc@1 v1/v0 | cmc@1 v1/v1 | criterion | map@10 v0/v0 | map@10 v1/v0 "
          "| criterion | recall@10 v1/v0 | seconds |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---|---:|---:|")
    for run in args.runs:
        chain = [Version(f"v{t}", load_features(run / "features" / f"v{t}.npz")) for t in (0, 1)]
        dim = chain[0].gallery.dim
        exact = None
        for factory in args.index:
            nprobe = args.nprobe if "IVF" in factory else None
            ef = args.ef_search if "HNSW" in factory else None
            spec = IndexSpec(factory=factory, nprobe=nprobe, ef_search=ef, seed=args.seed)
            start = time.perf_counter()
            try:
                report = evaluate_chain(chain, evaluator, index=IndexSetup(spec))
            except CompatError as exc:
                print(f"| {run.name} | {dim} | {spec.label()} | {exc} |||||||||")
                continue
            seconds = time.perf_counter() - start
            if exact is None:
                exact = report
                print(_row(run.name, dim, "exact", report.matrices, report.summary, None, None))
            print(_row(run.name, dim, spec.label(), report.index.matrices, report.index.summary,
                       report.index.recall[1][0], seconds))


def _row(run, dim, search, m, s, recall, seconds) -> str:
    def pct(x):
        return f"{100 * x:.2f}"

    cmc, mp = m["cmc@1"], m["map@10"]
    ok = {True: "✓", False: "✗"}
    return (f"| {run} | {dim} | {search} | {pct(cmc[0][0])} | {pct(cmc[1][0])} | {pct(cmc[1][1])} | "
            f"{ok[s['cmc@1'].ecc[1][0]]} | {pct(mp[0][0])} | {pct(mp[1][0])} | {ok[s['map@10'].ecc[1][0]]} | "
            f"{'' if recall is None else pct(recall)} | {'' if seconds is None else f'{seconds:.0f}'} |")


if __name__ == "__main__":
    main()
