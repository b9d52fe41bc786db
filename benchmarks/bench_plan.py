"""Memory and time of the streamed backfill order against ordering the gallery in memory.

A synthetic stored gallery (a ``.npy`` directory written block by block: N items, D dims, C
classes, class centres plus Gaussian noise, a seeded permutation of int64 ids) is ordered twice,
each phase in a fresh process:

- **streamed**: :func:`compat.adapters.plan_order.write_plan_order` on
  :func:`compat.stored.open_stored` (two passes of block reads, two external sorts, ``plan.csv``);
  the sample is the gallery's first 1,000 items.
- **in memory** (the baseline): the features read into RAM, labels and ids too,
  :func:`compat.adapters.orderings.backfill_order` (the same order, as ``compat eval`` computes it),
  then the ids written one per line.

Reported per N: seconds, the ratio streamed / in memory, the peak resident memory of the phase
beyond the process after its imports (VmHWM after ``clear_refs``, Linux), and the bytes of sorted
runs the streamed phase wrote. The streamed plan is checked to equal the in-memory order. Then an
extrapolation to 10^8 items from the largest N measured: time per item times 10^8 (the passes are
linear; the sorts add a log factor, so this is a lower bound), peak memory unchanged (the streamed
phase's blocks and runs are sized from ``--memory-budget``, not from N), and the runs' disk space
times 10^8 / N.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_plan.py --quick                      # 10^5 items, seconds
    PYTHONPATH=. python benchmarks/bench_plan.py --items 1000000 10000000     # ~15 min on 2 loaded cores
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_evaluator import _proc_status, _reset_peak  # the same peak-memory probe

MiB = 1 << 20
BLOCK = 1 << 18


def write_gallery(path: Path, n: int, dim: int, classes: int, seed: int) -> None:
    """The synthetic gallery as a .npy directory, written block by block (never whole in memory)."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    features = np.lib.format.open_memmap(path / "features.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    labels = np.lib.format.open_memmap(path / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
    for start in range(0, n, BLOCK):
        k = min(BLOCK, n - start)
        y = rng.integers(0, classes, k)
        features[start : start + k] = centres[y] + 1.5 * rng.normal(size=(k, dim)).astype(np.float32)
        labels[start : start + k] = y
    features.flush()
    labels.flush()
    del features, labels
    np.save(path / "ids.npy", rng.permutation(n).astype(np.int64) + 10**9)
    (path / "meta.json").write_text("{}", encoding="utf-8")


def child(args: argparse.Namespace) -> None:
    """One phase in a fresh process; prints one JSON line."""
    import torch  # noqa: F401  (imported before the baseline, as the library imports it)

    from compat.adapters.orderings import backfill_order
    from compat.adapters.plan_order import write_plan_order
    from compat.features import FeatureSet
    from compat.retrieval.knn import parse_memory_budget
    from compat.stored import open_stored

    gallery, out = Path(args._gallery), Path(args._out)
    gc.collect()
    reset = _reset_peak()
    base = _proc_status()
    start = time.perf_counter()
    runs_bytes = 0
    if args._child == "streamed":
        stored = open_stored(gallery)
        first = next(stored.blocks(1000))
        sample = FeatureSet(first.features, first.labels, first.ids)
        tmp = Path(tempfile.mkdtemp(dir=out.parent))
        order = write_plan_order(stored, args.ordering, out, sample=sample, gallery_map=lambda x: x, seed=0,
                                 tmp_dir=tmp, memory_budget=parse_memory_budget(args.memory_budget))
        shutil.rmtree(tmp, ignore_errors=True)
        runs_bytes, extra = order.run_bytes, {"runs": order.runs}
    else:
        features = np.load(gallery / "features.npy")
        labels, ids = np.load(gallery / "labels.npy"), np.load(gallery / "ids.npy")
        order = backfill_order(args.ordering, features, labels, ids=ids)
        with open(out, "w", encoding="utf-8") as fh:
            fh.write("id\n")
            fh.writelines("\n".join(map(str, ids[order[s : s + BLOCK]].tolist())) + "\n" for s in range(0, len(order), BLOCK))
        extra = {}
    seconds = time.perf_counter() - start
    end = _proc_status()
    print(json.dumps({"phase": args._child, "seconds": seconds, "peak_mib": (end["VmHWM"] - base["VmRSS"]) / 1024,
                      "peak_reset": reset, "runs_bytes": runs_bytes, **extra}))


def run_child(phase: str, gallery: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_child", phase, "--_gallery", str(gallery), "--_out", str(out),
           "--ordering", args.ordering, "--memory-budget", args.memory_budget]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {phase} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--ordering", default="farthest", choices=["random", "farthest", "uncertainty"])
    p.add_argument("--memory-budget", default="1GiB")
    p.add_argument("--no-baseline", action="store_true", help="Streamed phase only (for sizes beyond RAM).")
    p.add_argument("--quick", action="store_true", help="10^5 items.")
    p.add_argument("--tmp", default=None, help="Where the galleries and plans go (default: a temporary directory).")
    p.add_argument("--_child"), p.add_argument("--_gallery"), p.add_argument("--_out")
    args = p.parse_args(argv)
    if args._child:
        child(args)
        return
    items = [100_000] if args.quick else args.items
    print("command: PYTHONPATH=. python benchmarks/bench_plan.py " + shlex.join(sys.argv[1:]))
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus {os.cpu_count()}; "
          f"dim {args.dim}, classes {args.classes}, ordering {args.ordering}, memory budget {args.memory_budget}")
    root = Path(tempfile.mkdtemp(prefix="bench-plan-", dir=args.tmp))
    rows = []
    try:
        for n in items:
            gallery = root / f"gallery-{n}"
            write_gallery(gallery, n, args.dim, args.classes, seed=0)
            streamed = run_child("streamed", gallery, root / f"streamed-{n}.csv", args)
            memory = None if args.no_baseline else run_child("in-memory", gallery, root / f"memory-{n}.csv", args)
            same = None if memory is None else \
                (root / f"streamed-{n}.csv").read_bytes() == (root / f"memory-{n}.csv").read_bytes()
            rows.append((n, streamed, memory, same, (gallery / "features.npy").stat().st_size))
            shutil.rmtree(gallery)
            for f in root.glob(f"*-{n}.csv"):
                f.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rows)


def report(rows) -> None:
    print("\n| items | features on disk | streamed s | in memory s | ratio | streamed peak MiB | in-memory peak MiB "
          "| runs on disk | sorted runs | same order |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, s, m, same, size in rows:
        mem_s = "–" if m is None else f"{m['seconds']:.1f}"
        ratio = "–" if m is None else f"{s['seconds'] / m['seconds']:.2f}x"
        mem_peak = "–" if m is None else f"{m['peak_mib']:.0f}"
        print(f"| {n:,} | {size / MiB:.0f} MiB | {s['seconds']:.1f} | {mem_s} | {ratio} | {s['peak_mib']:.0f} | "
              f"{mem_peak} | {s['runs_bytes'] / MiB:.0f} MiB | {s['runs']} | {same} |")
    n, s, m, _, size = rows[-1]
    scale = 1e8 / n
    print(f"\nextrapolation to 100,000,000 items from {n:,}: streamed >= {s['seconds'] * scale / 60:.0f} min "
          f"(linear in N; the sorts add a log factor), peak memory about {s['peak_mib']:.0f} MiB (sized from the "
          f"budget, not N), features {size * scale / 2**30:.1f} GiB on disk, runs about "
          f"{s['runs_bytes'] * scale / 2**30:.1f} GiB"
          + ("" if m is None else f"; in memory it would need about {m['peak_mib'] * scale / 1024:.0f} GiB of RAM"))
    print(f"peak reset with clear_refs: {s['peak_reset']}")


if __name__ == "__main__":
    main()
