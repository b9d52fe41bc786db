"""Training throughput: each method against ``independent``, and the trainer against a bare PyTorch loop.

Methods (the default): each method runs the real training step (forward, the frozen old model's
forward when the method needs one per batch, a lookup of cached old / teacher features when it
caches them, its loss, backward, optimiser step) on fixed MNIST-shaped batches; methods are
interleaved over ``--repeat`` rounds and the best round is kept. Prints images/s and the time ratio
to ``independent`` (what matters: the cost of compatibility).

``--vs-bare``: one epoch of ``compat.train.loop.train_version`` (the ``independent`` method, its
batch plan, schedule, statistics and end-of-epoch checkpoint) against the loop below, with the same
model (same initial weights), dataset (mnist-mini's 5,000 training images through the dataset's
transforms), batch size and optimiser (SGD, the trainer's settings); interleaved, best of
``--repeat``. Prints seconds per step of each and their ratio.

    PYTHONPATH=. python benchmarks/bench_train.py [--backbone smallcnn] [--batch 128] [--steps 30] [--device cpu]
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_train.py --vs-bare --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def bare_epoch(model, dataset, batch: int, lr: float, momentum: float, weight_decay: float, seed: int) -> int:
    """The bare loop: a DataLoader, forward, cross-entropy, backward, step. Returns the steps taken."""
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=False,
                                         generator=torch.Generator().manual_seed(seed))
    model.train()
    steps = 0
    for images, labels in loader:
        out = model(images)
        loss = F.cross_entropy(out.logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def vs_bare(args: argparse.Namespace) -> None:
    """One epoch of the trainer against one epoch of the bare loop (same model, data, batch, optimiser)."""
    import copy
    import tempfile
    from pathlib import Path

    import numpy as np

    from compat.data import build_dataset
    from compat.methods import build_method
    from compat.models import build_model
    from compat.train.config import TrainConfig
    from compat.train.loop import train_version

    dataset = build_dataset("mnist-mini", split="train", train_transform=True)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, schedule="constant")
    torch.manual_seed(0)
    initial = build_model(args.backbone, feature_dim=128, head="linear", num_classes=10)
    best = {"trainer": float("inf"), "bare": float("inf")}
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name in ("trainer", "bare"):
                model = copy.deepcopy(initial)
                start = time.perf_counter()
                if name == "trainer":
                    train_version(model, build_method("independent"), dataset=dataset,
                                  new_indices=np.arange(len(dataset)), memory_indices=np.empty(0, np.int64),
                                  old_model=None, cfg=cfg, seed=0, device=args.device,
                                  checkpoint_path=Path(tmp) / "checkpoint.pt", resume=False, progress=False)
                    steps[name] = -(-len(dataset) // args.batch)
                else:
                    steps[name] = bare_epoch(model, dataset, args.batch, cfg.lr, cfg.momentum, cfg.weight_decay, 0)
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"backbone {args.backbone}, batch {args.batch}, mnist-mini train ({len(dataset)} images), one epoch, "
          f"best of {args.repeat}, device {args.device}, torch threads {torch.get_num_threads()}")
    print("| loop | steps | s per step | images/s | ratio to bare |")
    print("|---|---:|---:|---:|---:|")
    for name, t in best.items():
        per_step = t / steps[name]
        print(f"| {name} | {steps[name]} | {per_step * 1e3:.1f} ms | {len(dataset) / t:.0f} | "
              f"{per_step / (best['bare'] / steps['bare']):.3f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smallcnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", default="1x28x28", help="CxHxW of the synthetic images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--vs-bare", action="store_true", help="the trainer against a bare PyTorch loop")
    args = parser.parse_args()
    print("$ python " + " ".join(sys.argv))
    if args.vs_bare:
        vs_bare(args)
        return

    from compat.methods import build_method, list_methods
    from compat.models import build_model
    from compat.train.config import TrainConfig
    from compat.train.optim import build_optimizer
    from compat.train.step import backward_step

    c, h, w = (int(x) for x in args.image.split("x"))
    torch.manual_seed(0)
    images = torch.randn(args.batch, c, h, w, device=args.device)
    labels = torch.randint(0, args.classes, (args.batch,), device=args.device)
    memory = torch.arange(args.batch, device=args.device) < args.batch // 2
    kwargs = {"in_channels": c} if args.backbone == "smallcnn" else {}
    runs = {}
    for name in ["independent"] + [m for m in list_methods() if m != "independent"]:
        method = build_method(name)
        feature_dim = args.classes - 1 if method.head == "simplex" else 128
        extra = {"to_add_dim": 32} if method.needs_teacher else {}  # BT^2: 128 + 32 coordinates
        model = build_model(args.backbone, feature_dim=feature_dim, head=method.head, num_classes=args.classes,
                            backbone_kwargs=kwargs, **extra).to(args.device)
        old = None
        if method.needs_old_model:
            old = build_model(args.backbone, feature_dim=feature_dim, head=method.head, num_classes=args.classes,
                              backbone_kwargs=kwargs).to(args.device).eval()
            for p in old.parameters():
                p.requires_grad_(False)
        # Cached features (BCT, L2, BT^2) are looked up, as the trainer does: computed once per version.
        with torch.no_grad():
            cached_old = old.embed(images) if old is not None else None
        method.prepare(n_old_classes=args.classes // 2, n_new_classes=args.classes // 2, old_model=old,
                       old_classes=list(range(args.classes // 2)), old_train_features=cached_old,
                       train_labels=labels)
        runs[name] = (model, method, old, build_optimizer(model, TrainConfig()), cached_old)

    def step(model, method, old, optimizer, cached_old) -> None:
        out = model(images)
        old_features = teacher = None
        if method.old_features == "batch":
            with torch.no_grad():
                old_features = old.embed(images)
        elif method.old_features == "cached" and old is not None:
            old_features = cached_old[torch.arange(len(labels))]
        if method.needs_teacher:
            teacher = cached_old[torch.arange(len(labels))]
        loss = method.loss(out.features, out.logits, labels, old_features=old_features, from_memory=memory,
                           teacher_features=teacher, head_features=out.head_features)
        backward_step(loss.total, optimizer)

    best = {name: float("inf") for name in runs}
    for name, run in runs.items():  # warm-up
        for _ in range(3):
            step(*run)
    for _ in range(args.repeat):
        for name, run in runs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*run)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    base = best["independent"]
    print(f"backbone {args.backbone}, batch {args.batch}, {args.steps} steps x best of {args.repeat}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print("| method | images/s | time ratio to independent |")
    print("|---|---:|---:|")
    for name, t in best.items():
        print(f"| {name} | {args.batch * args.steps / t:.0f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
