"""The GPU figures: one leave-one-out cell of 1M x 512 with the torch-CUDA backend, raw torch passes over
the same cell, one AMP training epoch of cifar100-cores on generated images, a two-process DDP step.

Every part prints one JSON line (``{"part": ..., ...}``); ``--table`` turns the JSON lines of a run
into one Markdown table. ``benchmarks/device_check.sh`` runs the parts with a time limit each.

- ``cell``: seeded clustered features (N x D, C classes) made on the GPU, kept in CPU memory as the
  evaluator reads them. Raw passes: ``q @ g.T`` and ``topk(6)`` per chunk of 8192 queries, the
  gallery resident on the GPU, in fp32, TF32 and FP16. Evaluator: CMC@1/5 over all N queries
  (``RetrievalEvaluator(backend="torch", device="cuda")``) with ``--search-precision`` fp32 and
  tf32 (and fp16), whose neighbours must agree; mAP over a seeded sample of ``--map-queries``
  queries (exact ranks are counted on the CPU). Seconds and peak GPU memory
  (``torch.cuda.max_memory_allocated``) per phase; times include the evaluator's host work.
- ``train``: the recipe's model, method, optimiser and AMP, ``train_version`` for one epoch over
  version 0's classes (50 x 500 generated 3 x 32 x 32 images, no augmentation): images per second.
- ``ddp``: under torchrun with 2 processes, one DistributedDataParallel step of the recipe's model.

    PYTHONPATH=. python benchmarks/bench_gpu.py --part cell
    PYTHONPATH=. python benchmarks/bench_gpu.py --part cell --device cpu --gallery 20000 --dim 64   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RAW_K = 6


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def make_cell(n: int, dim: int, classes: int, device: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit class centres plus Gaussian noise, normalised; float32 on the CPU."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, device=device)
    centres /= centres.norm(dim=1, keepdim=True)
    labels = torch.randint(0, classes, (n,), generator=g, device=device)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 1 << 16):
        lab = labels[s : s + (1 << 16)]
        x = centres[lab] + (1.2 / dim**0.5) * torch.randn(len(lab), dim, generator=g, device=device)
        out[s : s + len(lab)] = (x / x.norm(dim=1, keepdim=True)).cpu().numpy()
    return out, labels.cpu().numpy().astype(np.int64)


def raw_pass(x: np.ndarray, device: str, precision: str) -> float:
    """Seconds of q @ g.T + topk(6) over every query, the gallery on the device."""
    g = torch.from_numpy(x).to(device)
    dtype = {"fp16": torch.float16}.get(precision, torch.float32)
    g = g.to(dtype)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    _sync(device)
    t0 = time.perf_counter()
    for s in range(0, len(x), 8192):
        q = g[s : s + 8192]
        torch.topk(q @ g.T, RAW_K, dim=1)
    _sync(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    return time.perf_counter() - t0


def part_cell(args: argparse.Namespace) -> None:
    from compat.retrieval import RetrievalEvaluator

    x, labels = make_cell(args.gallery, args.dim, args.classes, args.device)
    ids = np.arange(len(x))
    emit(part="cell", phase="data", n=len(x), dim=args.dim, classes=args.classes, device=args.device,
         gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")
    for precision in ("fp32", "tf32", "fp16"):
        _reset_peak(args.device)
        emit(part="cell", phase=f"raw torch matmul+topk({RAW_K}) {precision}",
             seconds=raw_pass(x, args.device, precision), peak_mib=_peak_mib(args.device))
    cmc = {}
    for precision in args.precisions:
        _reset_peak(args.device)
        ev = RetrievalEvaluator(("cmc@1", "cmc@5"), backend="torch", device=args.device,
                                memory_budget=args.memory_budget, search_precision=precision)
        t0 = time.perf_counter()
        r = ev.evaluate_arrays(x, labels, ids, x, labels, ids)
        _sync(args.device)
        cmc[precision] = r.values
        emit(part="cell", phase=f"evaluator cmc@1,cmc@5 {precision} ({len(x)} queries)",
             seconds=time.perf_counter() - t0, peak_mib=_peak_mib(args.device), values=r.values,
             same_as_fp32=r.values == cmc["fp32"])
    _reset_peak(args.device)
    ev = RetrievalEvaluator(("cmc@1", "cmc@5", "map"), backend="torch", device=args.device,
                            memory_budget=args.memory_budget, query_sample=args.map_queries)
    t0 = time.perf_counter()
    r = ev.evaluate_arrays(x, labels, ids, x, labels, ids)
    emit(part="cell", phase=f"evaluator cmc@1,cmc@5,map ({args.map_queries} sampled queries)",
         seconds=time.perf_counter() - t0, peak_mib=_peak_mib(args.device), values=r.values)


def _recipe_model(num_classes: int, device: str):
    from compat.methods import build_method
    from compat.models import build_model
    from compat.train import load_recipe, model_spec

    recipe = load_recipe(ROOT / "recipes" / "cifar100-cores.yaml")
    method = build_method(recipe.method.name, **recipe.method.options)
    model = build_model(**model_spec(recipe, 0, num_classes, method.head)).to(device)
    return recipe, method, model


class _Generated(torch.utils.data.Dataset):
    """``n`` seeded random 3 x 32 x 32 images (already normalised tensors) and their labels."""

    def __init__(self, n: int, classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.labels = torch.arange(n) % classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def part_train(args: argparse.Namespace) -> None:
    from compat.train import train_version

    classes = 50
    recipe, method, model = _recipe_model(100, args.device)
    method.prepare(n_old_classes=0, n_new_classes=classes, old_model=None, old_classes=None,
                   old_train_features=None, train_labels=None)
    data = _Generated(classes * args.per_class, classes)
    cfg = recipe.train.model_copy(update={"epochs": 1})
    out = Path(args.tmp) / "train"
    _reset_peak(args.device)
    _sync(args.device)
    t0 = time.perf_counter()
    train_version(model, method, dataset=data, new_indices=np.arange(len(data)), memory_indices=np.empty(0, np.int64),
                  old_model=None, cfg=cfg, seed=0, device=args.device, checkpoint_path=out / "checkpoint.pt",
                  resume=False, num_workers=args.workers, progress=False)
    _sync(args.device)
    seconds = time.perf_counter() - t0
    emit(part="train", phase=f"cifar100-cores v0, 1 epoch, AMP {cfg.amp}, batch {cfg.batch_size}",
         seconds=seconds, images_per_s=len(data) / seconds, peak_mib=_peak_mib(args.device))


def part_ddp(args: argparse.Namespace) -> None:
    from compat.distributed import DistributedContext
    from compat.train.optim import build_optimizer
    from compat.train.step import backward_step

    dist = DistributedContext.from_env(args.device)
    device = dist.device(args.device)
    recipe, method, model = _recipe_model(100, device)
    method.prepare(n_old_classes=0, n_new_classes=100, old_model=None, old_classes=None, old_train_features=None,
                   train_labels=None)
    wrapped = dist.wrap(model)
    optimizer = build_optimizer(model, recipe.train)
    images = torch.randn(recipe.train.batch_size, 3, 32, 32, device=device)
    labels = torch.arange(recipe.train.batch_size, device=device) % 100
    _sync(device)
    t0 = time.perf_counter()
    out = wrapped(images)
    backward_step(method.loss(out.features, out.logits, labels).total, optimizer)
    _sync(device)
    seconds = time.perf_counter() - t0
    dist.close()
    if dist.is_main:
        emit(part="ddp", phase=f"one DDP step on {dist.world_size} GPUs (batch {recipe.train.batch_size} each)",
             seconds=seconds, peak_mib=_peak_mib(device))


def table(paths: list[str]) -> None:
    """One Markdown table from the JSON lines in ``paths`` (other lines are ignored)."""
    print("| part | phase | seconds | peak GPU MiB | result |")
    print("|---|---|---:|---:|---|")
    for path in paths:
        if not Path(path).is_file():
            continue
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or "part" not in row:
                continue
            result = {k: v for k, v in row.items() if k not in ("part", "phase", "seconds", "peak_mib")}
            seconds = "-" if row.get("seconds") is None else f"{row['seconds']:.2f}"
            peak = "-" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}"
            print(f"| {row['part']} | {row['phase']} | {seconds} | {peak} | {json.dumps(result)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("cell", "train", "ddp"))
    p.add_argument("--table", nargs="+", metavar="LOG", help="print one table from these logs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--map-queries", type=int, default=10_000)
    p.add_argument("--memory-budget", default="48GiB")
    p.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "fp16"])
    p.add_argument("--per-class", type=int, default=500, help="generated training images per class (train)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--tmp", default="/tmp")
    args = p.parse_args()
    if args.table:
        table(args.table)
        return
    print("$ python " + " ".join(sys.argv), file=sys.stderr)
    {"cell": part_cell, "train": part_train, "ddp": part_ddp}[args.part](args)


if __name__ == "__main__":
    main()
