"""A sharded gallery of memory-mapped shards: leave-one-out CMC@1/5 and mAP for a sample of queries,
in 1 process and in 2 gloo processes, against a raw ``faiss.knn`` pass over the same shards; and the
time to check ids unique across shards (benchmarks/README.md, "bench_manifest.py").

- **data**: ``--rows`` x ``--dim`` seeded clustered features (``--rows / 1000`` classes, so about
  1000 positives per query), written shard by shard (``--shard-rows``) as a manifest
  (:mod:`compat.manifest`) under ``--dir``; ``--queries`` gallery items drawn with the seed are the
  queries (a ``.npz`` in memory).
- **raw**: a fresh process memory-maps each shard, runs ``faiss.knn(queries, shard, k=6)`` on
  L2-normalised queries (the shards are stored normalised) and merges the shards' lists: nothing else.
- **compat, 1 process**: a fresh process runs ``load_features`` on the manifest (every shard's
  checksum and values, ids unique across shards) then ``RetrievalEvaluator(("cmc@1", "cmc@5", "map"))``
  on the queries against it; the load and the evaluation are timed apart.
- **compat, 2 processes**: the same under ``torch.distributed.run --nproc_per_node 2`` (gloo): each
  rank loads with :func:`compat.manifest.load_for_rank` and searches its shards; rank 0's times.

Peak memory of a phase, per process, beyond what it held once the queries were loaded: its own
memory (``RssAnon``, sampled every 50 ms: the kernel keeps no peak of it), and ``VmHWM`` (after
``/proc/self/clear_refs``), in which the resident pages of the memory-mapped shards count too (the
kernel's page cache, which it drops under pressure).

``--ids N`` times :func:`compat.manifest.check_unique_ids` on N shuffled int64 ids in 10 shards, with the
default sort budget (1 GiB) and with a tenth of it (more sorted runs spilled to disk).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_manifest.py --rows 10000000 --dir /tmp/gallery
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_manifest.py --rows 0 --ids 100000000   # the id check only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("cmc@1", "cmc@5", "map")
K = 6


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) * 1024
    return out


class _AnonPeak:
    """The highest ``RssAnon`` (memory the process owns, not pages of mapped files) seen by sampling
    ``/proc/self/status`` every 50 ms in a thread: the kernel keeps no high-water mark of it."""

    def __init__(self) -> None:
        import threading

        self.peak = _status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _status()["RssAnon"])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status()["RssAnon"])


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _status()["VmRSS"]


def make_gallery(root: Path, rows: int, dim: int, shard_rows: int, queries: int, seed: int) -> None:
    from compat.features import FeatureSet, save_features
    from compat.manifest import Manifest, ShardInfo, shard_digest, write_manifest

    rng = np.random.default_rng(seed)
    classes = max(2, rows // 1000)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = rng.permutation(rows).astype(np.int64) * 3 + 1
    shards = []
    for k, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        labels = rng.integers(0, classes, n)
        x = centres[labels] + np.float32(3.0 / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        name = f"shard-{k:05d}"
        save_features(FeatureSet.from_arrays(x, labels, ids[start : start + n]), root / name)
        shards.append(ShardInfo(name, n, shard_digest(root / name)))
    write_manifest(Manifest(dim, tuple(shards), {"version": "bench"}), root)
    picked = np.sort(rng.choice(rows, queries, replace=False))
    from compat.manifest import load_manifest

    fs = load_manifest(root, verify=False, check_ids=False)
    q = FeatureSet.from_arrays(np.asarray(fs.features[picked]), fs.labels[picked], fs.ids[picked])
    save_features(q, root.parent / f"{root.name}-queries.npz")


def child(phase: str, root: Path, threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    from compat.features import load_features

    queries = load_features(root.parent / f"{root.name}-queries.npz")
    base = _reset_peak()
    anon_base, anon = _status()["RssAnon"], _AnonPeak()
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    if phase == "raw":
        from compat.manifest import load_manifest

        fs = load_manifest(root, verify=False, check_ids=False)
        q = queries.features / np.linalg.norm(queries.features, axis=1, keepdims=True)
        best_s, best_i = None, None
        for part, offset in zip(fs.features.parts, fs.features.offsets[:-1], strict=True):
            s, i = faiss.knn(q, np.asarray(part), K, metric=faiss.METRIC_INNER_PRODUCT)
            i = i + offset
            if best_s is None:
                best_s, best_i = s, i
            else:
                s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
                order = np.argsort(-s, axis=1, kind="stable")[:, :K]
                best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        out["search"] = time.perf_counter() - t0
    else:
        from compat.distributed import DistributedContext
        from compat.manifest import load_for_rank
        from compat.retrieval import RetrievalEvaluator

        dist = DistributedContext.from_env("cpu")
        gallery = load_for_rank(root, dist.rank, dist.world_size)
        out["load"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = RetrievalEvaluator(METRICS, device="cpu", threads=threads, dist=dist).evaluate(queries, gallery)
        out["search"] = time.perf_counter() - t1
        out.update({m: result.values[m] for m in METRICS})
        if not dist.is_main:
            dist.close()
            return
        dist.close()
    out["peak_mib"] = (_status()["VmHWM"] - base) / (1 << 20)
    out["anon_peak_mib"] = (anon.stop() - anon_base) / (1 << 20)
    print("RESULT " + json.dumps(out), flush=True)


def run_phase(phase: str, root: Path, threads: int, ranks: int = 1) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    script = [str(Path(__file__).resolve()), "--_child", phase, "--dir", str(root), "--threads", str(threads)]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
    else:
        cmd = [sys.executable, *script]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "wall": wall}


def time_id_check(n: int, seed: int) -> list[tuple[str, float, int]]:
    from compat.manifest import DEFAULT_SORT_BUDGET, check_unique_ids

    ids = np.random.default_rng(seed).permutation(n).astype(np.int64) * 5 + 1
    parts = np.array_split(ids, 10)
    out = []
    for label, budget in (("default budget", DEFAULT_SORT_BUDGET), ("a tenth of it", DEFAULT_SORT_BUDGET // 10)):
        t0 = time.perf_counter()
        check_unique_ids(((f"shard-{k}", p) for k, p in enumerate(parts)), np.dtype(np.int64), source="bench",
                         memory_budget=budget)
        out.append((label, time.perf_counter() - t0, budget))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--shard-rows", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dir", type=Path, default=Path("/tmp/compat-bench-gallery"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ids", type=int, default=0, help="also time the id check on this many ids")
    p.add_argument("--keep", action="store_true", help="reuse (and keep) the gallery in --dir")
    p.add_argument("--_child", choices=("raw", "compat"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        child(args._child, args.dir, args.threads)
        return
    print("$ " + shlex.join(["python", *sys.argv]), flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f}; cores: {os.cpu_count()}", flush=True)
    if args.ids:
        for label, seconds, budget in time_id_check(args.ids, args.seed):
            print(f"id check, {args.ids:,} ids in 10 shards, {label} ({budget >> 20} MiB): {seconds:.2f} s", flush=True)
    if args.rows == 0:  # the id check only
        return
    if not (args.dir / "manifest.json").exists():
        t0 = time.perf_counter()
        args.dir.mkdir(parents=True, exist_ok=True)
        make_gallery(args.dir, args.rows, args.dim, args.shard_rows, args.queries, args.seed)
        print(f"gallery written in {time.perf_counter() - t0:.0f} s", flush=True)
    raw = run_phase("raw", args.dir, args.threads)
    print(f"raw: {raw}", flush=True)
    rows = []
    for ranks in args.ranks:
        got = run_phase("compat", args.dir, args.threads, ranks)
        print(f"compat, {ranks} process(es): {got}", flush=True)
        rows.append((ranks, got))
    print(f"\n{args.rows:,} x {args.dim} in shards of {args.shard_rows:,}, {args.queries:,} queries, "
          f"{args.threads} thread(s) per process")
    print("| processes | load + checks s | search + metrics s | raw faiss.knn s | search / raw | (load + search) / raw "
          "| peak MiB beyond queries, own memory (rank 0) | the same with mapped shard pages | cmc@1 | cmc@5 | map |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ranks, got in rows:
        print(f"| {ranks} | {got['load']:.1f} | {got['search']:.1f} | {raw['search']:.1f} | "
              f"{got['search'] / raw['search']:.2f}x | {(got['load'] + got['search']) / raw['search']:.2f}x | "
              f"{got['anon_peak_mib']:.0f} | {got['peak_mib']:.0f} | {got['cmc@1']:.4f} | {got['cmc@5']:.4f} | "
              f"{got['map']:.4f} |")
    print(f"raw pass peak beyond the queries: {raw['anon_peak_mib']:.0f} MiB own memory, {raw['peak_mib']:.0f} MiB "
          "with mapped shard pages")


if __name__ == "__main__":
    main()
