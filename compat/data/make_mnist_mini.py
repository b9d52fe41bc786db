"""Build ``mnist_mini.npz``, the MNIST subset shipped inside the package, from the full MNIST.

    python -m compat.data.make_mnist_mini --data-root DATA_ROOT --out compat/data/mnist_mini.npz

Selection: for each split and each class, a seeded random choice of ``per_class`` images without
replacement (default 500 per class from the 60,000 training images, 100 per class from the 10,000
test images), kept in their original order. The file stores the images (uint8, 28 x 28), their labels
and their original indices (``ids``). Same inputs, seed and counts give the same file contents.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compat.errors import CompatError

__all__ = ["balanced_selection", "main", "make_mnist_mini"]

DEFAULT_OUT = Path(__file__).with_name("mnist_mini.npz")


def balanced_selection(labels: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` items of every class, chosen at random without replacement.

    Args:
        labels: (N,) integer labels.
        per_class: items per class.
        seed: seed of the choice; classes draw in ascending order from one generator.

    Returns:
        (per_class * C,) int64 indices, sorted ascending.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise CompatError(f"class {cls} has {len(members)} items, fewer than per_class={per_class}")
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def make_mnist_mini(
    data_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    train_per_class: int = 500,
    test_per_class: int = 100,
    seed: int = 0,
) -> Path:
    """Select the subset from MNIST under ``data_root`` (torchvision layout) and write it atomically.

    Args:
        data_root: directory holding ``MNIST/raw`` (never downloaded here).
        out: the ``.npz`` file to write.
        train_per_class: training images per class.
        test_per_class: test images per class.
        seed: selection seed (the test split uses ``seed + 1``).

    Returns:
        The path written.
    """
    from torchvision.datasets import MNIST

    if not (Path(data_root) / "MNIST" / "raw").is_dir():
        raise CompatError(f"--data-root: no MNIST/raw under {data_root}")
    arrays: dict[str, np.ndarray] = {}
    for offset, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
        full = MNIST(root=str(data_root), train=split == "train", download=False)
        labels = full.targets.numpy().astype(np.int64)
        ids = balanced_selection(labels, per_class=per_class, seed=seed + offset)
        arrays[f"{split}_images"] = full.data.numpy()[ids].astype(np.uint8)
        arrays[f"{split}_labels"] = labels[ids]
        arrays[f"{split}_ids"] = ids
    arrays["seed"] = np.asarray(seed, dtype=np.int64)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the packaged file is world-readable
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat.data.make_mnist_mini", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True, help="directory holding MNIST/raw (torchvision layout)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output .npz (default: the packaged file)")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = make_mnist_mini(
            args.data_root,
            args.out,
            train_per_class=args.train_per_class,
            test_per_class=args.test_per_class,
            seed=args.seed,
        )
    except CompatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
