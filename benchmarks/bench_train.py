"""Training throughput of each method against ``independent``: same backbone, same batch, same process.

Each method runs the real training step (forward, the frozen old model's forward when the method
needs one per batch, a lookup of cached old / teacher features when it caches them, its loss,
backward, optimiser step) on fixed MNIST-shaped batches; methods are
interleaved over ``--repeat`` rounds and the best round is kept. Prints images/s and the time ratio
to ``independent`` (what matters: the cost of compatibility).

    PYTHONPATH=. python benchmarks/bench_train.py [--backbone smallcnn] [--batch 128] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smallcnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", default="1x28x28", help="CxHxW of the synthetic images")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    print("$ python " + " ".join(sys.argv))

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
