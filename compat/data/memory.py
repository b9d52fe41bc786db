"""Rehearsal memory and half-memory / half-new batches (CL2R, docs/methods.md).

Indices here are dataset indices of one indexable training set that holds both the memory items and
the new data (e.g. the full training split; take a task's items with ``class_incremental``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from compat.errors import CompatError

__all__ = ["HalfHalfBatchSampler", "RehearsalMemory"]


def _int_array(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise CompatError(f"{name}: expected a 1-D integer array, got shape {array.shape} and dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


class RehearsalMemory:
    """A fixed number of stored samples per class, chosen when the class first arrives.

    Selection is seeded per class (``default_rng([seed, class])``): the samples of a class do not depend on
    which other classes came before it, and classes already in memory keep their samples on every update.

    Args:
        per_class: samples kept per class (CL2R: 20); a class with fewer items keeps all of them.
        seed: selection seed.
    """

    def __init__(self, per_class: int = 20, *, seed: int) -> None:
        if per_class < 1:
            raise CompatError(f"memory: per_class must be >= 1, got {per_class}")
        if seed < 0:
            raise CompatError(f"memory: seed must be >= 0, got {seed}")
        self.per_class = int(per_class)
        self.seed = int(seed)
        self._memory: dict[int, np.ndarray] = {}

    def update(self, indices: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> list[int]:
        """Add ``per_class`` samples of every class not yet in memory.

        Args:
            indices: (N,) dataset indices of the new task's items.
            labels: (N,) their labels.

        Returns:
            The classes added (ascending); items of classes already in memory are ignored.
        """
        indices = _int_array(indices, "memory.update: indices")
        labels = _int_array(labels, "memory.update: labels")
        if len(indices) != len(labels):
            raise CompatError(f"memory.update: {len(indices)} indices but {len(labels)} labels")
        if labels.size and labels.min() < 0:
            raise CompatError("memory.update: labels must be >= 0")
        added = []
        for cls in np.unique(labels):
            cls = int(cls)
            if cls in self._memory:
                continue
            members = np.unique(indices[labels == cls])
            chosen = np.random.default_rng([self.seed, cls]).permutation(members)[: self.per_class]
            self._memory[cls] = np.sort(chosen).astype(np.int64)
            added.append(cls)
        return added

    @property
    def classes(self) -> list[int]:
        """Classes in memory, ascending."""
        return sorted(self._memory)

    @property
    def indices(self) -> np.ndarray:
        """(M,) int64 dataset indices of all stored samples, grouped by class (ascending)."""
        if not self._memory:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self._memory[c] for c in self.classes])

    @property
    def labels(self) -> np.ndarray:
        """(M,) int64 labels of :attr:`indices`."""
        if not self._memory:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([np.full(len(self._memory[c]), c, dtype=np.int64) for c in self.classes])

    def __len__(self) -> int:
        return sum(len(v) for v in self._memory.values())

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        return {
            "per_class": self.per_class,
            "seed": self.seed,
            "memory": {cls: self._memory[cls].tolist() for cls in self.classes},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the stored samples; ``per_class`` and ``seed`` must match this memory's."""
        if set(state) != {"per_class", "seed", "memory"}:
            raise CompatError(f"memory state: expected keys per_class, seed, memory; got {sorted(state)}")
        if int(state["per_class"]) != self.per_class or int(state["seed"]) != self.seed:
            raise CompatError(
                f"memory state: saved with per_class={state['per_class']}, seed={state['seed']}; "
                f"this memory has per_class={self.per_class}, seed={self.seed}"
            )
        memory = {}
        for cls, values in state["memory"].items():
            array = _int_array(values, f"memory state: class {cls}")
            if len(array) > self.per_class:
                raise CompatError(f"memory state: class {cls} holds {len(array)} samples > per_class={self.per_class}")
            memory[int(cls)] = np.sort(array)
        self._memory = memory


class HalfHalfBatchSampler:
    """Batches of ``batch_size // 2`` memory samples followed by new data (the rest), for ``DataLoader``.

    Use as ``DataLoader(dataset, batch_sampler=sampler)`` and call ``set_epoch(epoch)`` before each epoch.
    In every batch the first :attr:`memory_per_batch` indices are memory samples, the rest new data.
    Each epoch visits every new index exactly once, in a permutation seeded by ``(seed, epoch)``;
    the last batch may hold fewer new items. Memory is drawn from consecutive seeded permutations of
    the memory, so a memory smaller than what an epoch needs is reused (sampling with replacement
    across permutations). With an empty memory it is a plain shuffled batch sampler.

    Args:
        new_indices: (N,) dataset indices of the new data.
        memory_indices: (M,) dataset indices of the memory; may be empty.
        batch_size: total items per batch (>= 2 when the memory is not empty).
        seed: seed; the order depends on ``(seed, epoch)`` only.
    """

    def __init__(
        self,
        new_indices: Sequence[int] | np.ndarray,
        memory_indices: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int,
    ) -> None:
        self.new_indices = _int_array(new_indices, "sampler: new_indices")
        self.memory_indices = _int_array(memory_indices, "sampler: memory_indices")
        if len(self.new_indices) == 0:
            raise CompatError("sampler: new_indices is empty")
        minimum = 2 if len(self.memory_indices) else 1
        if batch_size < minimum:
            raise CompatError(f"sampler: batch_size must be >= {minimum}, got {batch_size}")
        if seed < 0:
            raise CompatError(f"sampler: seed must be >= 0, got {seed}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def memory_per_batch(self) -> int:
        """Memory samples at the head of every batch (0 with an empty memory)."""
        return self.batch_size // 2 if len(self.memory_indices) else 0

    @property
    def new_per_batch(self) -> int:
        return self.batch_size - self.memory_per_batch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        if epoch < 0:
            raise CompatError(f"sampler: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.new_indices) / self.new_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        new = rng.permutation(self.new_indices)
        batches = len(self)
        k = self.memory_per_batch
        if k:
            rounds = math.ceil(batches * k / len(self.memory_indices))
            memory = np.concatenate([rng.permutation(self.memory_indices) for _ in range(rounds)])
        for b in range(batches):
            part = new[b * self.new_per_batch : (b + 1) * self.new_per_batch]
            head = memory[b * k : (b + 1) * k] if k else part[:0]
            yield np.concatenate([head, part]).tolist()
