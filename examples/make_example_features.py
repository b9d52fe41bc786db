"""Write the small synthetic feature sets used by the README's first command.

Three versions of a toy retriever over the same 2,000 items (20 classes, 64-d):
- v1: the old model;
- v2: a new model trained for compatibility: the same class geometry as v1, less noise;
- v3: a new model trained independently: as good as v2 on its own gallery, but in a rotated space,
  so its queries cannot search the old gallery.

    python examples/make_example_features.py examples/features
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compat.features import FeatureSet, save_features


def main(out: Path, *, n: int = 2000, classes: int = 20, dim: int = 64, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    item_offsets = rng.standard_normal((n, dim)) / np.sqrt(dim)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    versions = {
        "v1": centres[labels] + 2.2 * item_offsets + 1.6 * rng.standard_normal((n, dim)) / np.sqrt(dim),
        "v2": centres[labels] + 2.0 * item_offsets + 0.8 * rng.standard_normal((n, dim)) / np.sqrt(dim),
    }
    versions["v3"] = (
        centres[labels] + 2.0 * item_offsets + 0.8 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    ) @ rotation
    ids = np.arange(n, dtype=np.int64)
    for name, feats in versions.items():
        meta = {"model": f"toy-{name}", "version": name, "dataset": "synthetic", "split": "test", "normalized": False}
        path = save_features(FeatureSet.from_arrays(feats, labels, ids, meta=meta), out / f"{name}.npz")
        print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/features"))
