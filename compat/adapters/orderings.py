"""Partial-backfill orderings: which gallery items to re-extract first, computed block by block.

Every ordering gives each gallery item a sort key from what is indexed before any backfilling
(so it never needs the new model); items are re-extracted in ascending key order, ties to the lower
gallery row:

- ``random``: a seeded 64-bit hash of the item's id (splitmix64 of the id, or FNV-1a of a string
  id, mixed with the seed). A uniformly random order that depends on the ids only: the same item
  gets the same key in any gallery, in any row, read in any block size.
- ``farthest``: farthest from the mean of its class first (cosine distance to the normalised class
  mean of the indexed features): the items the old space places worst.
- ``uncertainty``: least certain first, the old model's uncertainty in the manner of FastFill:
  entropy of a softmax over the cosine similarities to the class means (temperature 0.05).

The class means are sums of L2-normalised rows in float64, accumulated in chunks of
:data:`SUM_ROWS` rows counted from the first row, so that a gallery streamed in blocks of any size
gets the same means, to the bit, as the whole array at once (:class:`ClassSums`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compat.adapters.adapter import normalize_rows
from compat.adapters.config import Ordering
from compat.choices import parse_choice

__all__ = [
    "SUM_ROWS",
    "UNCERTAINTY_TEMPERATURE",
    "ClassMeans",
    "ClassSums",
    "backfill_order",
    "order_keys",
    "parse_ordering",
    "random_keys",
]

UNCERTAINTY_TEMPERATURE = 0.05
# Rows per chunk of the class sums (see the module docstring).
SUM_ROWS = 1 << 13

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def parse_ordering(value: Ordering | str) -> Ordering:
    return parse_choice(Ordering, value, "backfill ordering")


def _mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 that scatters nearby inputs."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _id_bits(ids: np.ndarray) -> np.ndarray:
    """(N,) uint64 of the ids: an int64 id's bits, or the FNV-1a hash of a string id's code points."""
    ids = np.asarray(ids)
    if ids.dtype.kind != "U":
        return ids.astype(np.int64, copy=False).view(np.uint64)
    width = ids.dtype.itemsize // 4
    points = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), max(width, 1)).astype(np.uint64)
    h = np.full(len(ids), _FNV_OFFSET, dtype=np.uint64)
    for column in points.T:  # trailing zeros are padding, as numpy reads them
        h = (h ^ column) * _FNV_PRIME
    return h


def random_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """(N,) uint64 keys of the ``random`` ordering; distinct integer ids always get distinct keys."""
    salt = _mix64(np.array([seed % (1 << 64)], dtype=np.uint64) + _GOLDEN)[0]
    return _mix64(_id_bits(ids) ^ salt)


@dataclass(frozen=True)
class ClassMeans:
    """Normalised class means (C, d) float32 of the classes ``classes`` (sorted)."""

    classes: np.ndarray
    means: np.ndarray

    def index(self, labels: np.ndarray) -> np.ndarray:
        """Each label's row in ``means`` (every label must be one of ``classes``)."""
        return np.searchsorted(self.classes, labels)


class ClassSums:
    """Running per-class float64 sums of normalised rows, fed block by block in gallery order.

    Rows are summed in chunks of :data:`SUM_ROWS` counted from the first row fed, whatever the
    blocks: memory is one pending chunk plus (C, d) sums.
    """

    def __init__(self, dim: int) -> None:
        self.classes = np.empty(0, dtype=np.int64)
        self.sums = np.zeros((0, dim), dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Feed the next rows: ``x`` (n, d) normalised features and their ``labels`` (n,)."""
        pos = 0
        while pos < len(x):
            take = min(len(x) - pos, SUM_ROWS - self._pending_rows)
            self._pending.append((x[pos : pos + take], labels[pos : pos + take]))
            self._pending_rows += take
            pos += take
            if self._pending_rows == SUM_ROWS:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = np.concatenate([p[0] for p in self._pending])
        labels = np.concatenate([p[1] for p in self._pending])
        self._pending, self._pending_rows = [], 0
        seen = np.unique(labels)
        if len(np.setdiff1d(seen, self.classes, assume_unique=True)):
            merged = np.union1d(self.classes, seen)
            sums = np.zeros((len(merged), self.sums.shape[1]), dtype=np.float64)
            sums[np.searchsorted(merged, self.classes)] = self.sums
            self.classes, self.sums = merged, sums
        index = np.searchsorted(self.classes, labels)
        size = len(self.classes)
        for j in range(x.shape[1]):  # bincount adds in float64, row after row
            self.sums[:, j] += np.bincount(index, weights=x[:, j], minlength=size)

    def means(self) -> ClassMeans:
        self._flush()
        return ClassMeans(self.classes.copy(), normalize_rows(self.sums.astype(np.float32)))


def order_keys(
    ordering: Ordering | str,
    features: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    *,
    means: ClassMeans | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Sort keys of a block of gallery items: ascending key = re-extracted first.

    Args:
        ordering: ``random``, ``farthest`` or ``uncertainty``.
        features: (n, d) features as indexed before backfilling (any scale; normalised here).
        labels, ids: (n,).
        means: the whole gallery's class means (farthest and uncertainty).
        seed: of the ``random`` ordering.

    Returns:
        (n,) uint64 (random) or float64 (minus the distance or the entropy) keys.
    """
    ordering = parse_ordering(ordering)
    if ordering is Ordering.RANDOM:
        return random_keys(ids, seed)
    if means is None:
        raise ValueError(f"the {ordering.value} ordering needs the class means")
    x = normalize_rows(features)
    index = means.index(labels)
    if ordering is Ordering.FARTHEST:
        return np.einsum("nd,nd->n", x, means.means[index], dtype=np.float64) - 1.0
    logits = (x @ means.means.T).astype(np.float64) / UNCERTAINTY_TEMPERATURE
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return (p * np.log(np.maximum(p, 1e-300))).sum(axis=1)


def backfill_order(
    ordering: Ordering | str,
    gallery: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """The order in which to re-extract gallery items, all in memory.

    Args:
        ordering: ``random``, ``farthest`` or ``uncertainty``.
        gallery: (N, d) features as indexed before backfilling.
        labels: (N,) their classes.
        seed: of the ``random`` ordering.
        ids: (N,) item ids, which the ``random`` ordering hashes (default ``0..N-1``).

    Returns:
        (N,) permutation of ``0..N-1``; its first items are re-extracted first. Ties go to the
        lower index. :mod:`compat.adapters.plan_order` gives the same order streamed.
    """
    ordering = parse_ordering(ordering)
    labels = np.asarray(labels)
    ids = np.arange(len(gallery), dtype=np.int64) if ids is None else np.asarray(ids)
    means = None
    if ordering is not Ordering.RANDOM:
        sums = ClassSums(gallery.shape[1])
        sums.add(normalize_rows(gallery), labels)
        means = sums.means()
    return np.argsort(order_keys(ordering, gallery, labels, ids, means=means, seed=seed), kind="stable")
