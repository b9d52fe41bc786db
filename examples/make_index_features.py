"""Write a synthetic upgrade that is compatible under exact search but not through an IVF index.

Two versions of a toy retriever over the same items (10 query classes of ``per_class`` items, 32-d,
compared with squared L2 distance):

- ``old``: each query class is a compact cloud around its centre ``c_k``; the gallery also holds,
  for each class, a cloud of distractor items (other labels) centred at ``c_k + 6 u_k`` but spread
  widely, so that its items are far from everything while its centre is not;
- ``new``: a better model for the query classes (less noise), whose embedding of class k has moved
  by ``0.7 * 6 u_k`` toward that distractor centre; the distractors are embedded as before.

Under exact search the new queries still find their own class first, and more often than the old
ones do: compatible. An IVF index trained on the old gallery puts a coarse centroid at each
distractor centre; with ``nprobe 1`` a new query is routed to the distractors' list, where none
of its class is. Probing more lists (or an HNSW graph) restores it.

    python examples/make_index_features.py /tmp/index-example

writes ``old.npz``, ``new.npz`` (galleries: every item) and ``old-queries.npz``,
``new-queries.npz`` (the query classes only; leave-one-out by id against the galleries).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compat.features import FeatureSet, save_features

DIM = 32
CLASSES = 10


def make(*, per_class: int = 200, seed: int = 0) -> dict[str, FeatureSet]:
    """The four feature sets (``old``, ``new``, ``old-queries``, ``new-queries``), seeded."""
    rng = np.random.default_rng(seed)
    half = DIM // 2
    centres = np.zeros((CLASSES, DIM))  # class centres in the first half of the coordinates
    centres[:, :half] = rng.normal(size=(CLASSES, half))
    centres *= 3 / np.linalg.norm(centres, axis=1, keepdims=True)
    away = np.zeros((CLASSES, DIM))  # orthonormal directions in the second half, one per class
    away[:, half:] = np.linalg.qr(rng.normal(size=(half, half)))[0][:CLASSES]
    labels = np.repeat(np.arange(CLASSES), per_class)
    distractor_labels = 100 + labels
    shift = 6.0
    old_queries = centres[labels] + 0.9 * rng.normal(size=(len(labels), DIM))
    new_queries = centres[labels] + 0.7 * shift * away[labels] + 0.35 * rng.normal(size=(len(labels), DIM))
    distractors = centres[labels] + shift * away[labels] + 3.0 * rng.normal(size=(len(labels), DIM))
    all_labels = np.concatenate([labels, distractor_labels])
    ids = np.arange(len(all_labels), dtype=np.int64)
    n = len(labels)
    sets = {}
    for name, queries in (("old", old_queries), ("new", new_queries)):
        meta = {"model": f"toy-{name}", "version": name, "dataset": "synthetic", "split": "test", "normalized": False}
        sets[name] = FeatureSet.from_arrays(np.vstack([queries, distractors]), all_labels, ids, meta=meta)
        sets[f"{name}-queries"] = FeatureSet.from_arrays(queries, labels, ids[:n], meta=meta)
    return sets


def main(out: Path) -> None:
    for name, fs in make().items():
        print(save_features(fs, out / f"{name}.npz"))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "index-example"))
