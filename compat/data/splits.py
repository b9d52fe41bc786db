"""Splits of a dataset, as pure functions over its label array: class-incremental tasks, nested
fractions, class subsets. Everything is deterministic; whatever is random takes a seed.

Indices returned are positions in the label array (i.e. dataset indices), int64, sorted ascending.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from compat.errors import CompatError

__all__ = [
    "class_incremental",
    "class_schedule",
    "classes_up_to",
    "fraction_subsets",
    "hold_out",
    "per_class_subset",
    "subset_of_classes",
]


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise CompatError(f"labels: expected a 1-D integer array, got shape {array.shape} and dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _share(fraction: float, n: int) -> int:
    """``fraction`` of ``n`` items, rounded half up, at least one: one class's cut in a stratified split."""
    return max(1, int(np.floor(fraction * n + 0.5)))


def class_schedule(classes: Sequence[int] | np.ndarray, *, initial: int, increment: int) -> list[list[int]]:
    """Cut an ordered list of classes into tasks: ``initial`` classes, then ``increment`` per task.

    Args:
        classes: all classes, in the order they arrive.
        initial: classes of the first task (>= 1).
        increment: classes of every later task (>= 1); the remaining classes must divide evenly.

    Returns:
        The classes of each task; task t holds only the classes new at step t.
    """
    order = [int(c) for c in classes]
    if initial < 1 or increment < 1:
        raise CompatError(f"class_incremental: initial and increment must be >= 1, got {initial} and {increment}")
    if len(set(order)) != len(order):
        raise CompatError("class_incremental: class_order repeats a class")
    if initial > len(order):
        raise CompatError(f"class_incremental: initial={initial} but there are only {len(order)} classes")
    if (len(order) - initial) % increment:
        raise CompatError(
            f"class_incremental: {len(order)} classes do not split into {initial} initial + increments of {increment}"
        )
    return [order[:initial]] + [order[start : start + increment] for start in range(initial, len(order), increment)]


def classes_up_to(schedule: Sequence[Sequence[int]], task: int) -> list[int]:
    """All classes seen up to and including ``task``: what a model trained through that task knows.

    Args:
        schedule: the classes of each task, as :func:`class_schedule` returns them.
        task: task index, ``0 <= task < len(schedule)``.

    Returns:
        The classes of tasks ``0..task``, in arrival order.
    """
    if not 0 <= task < len(schedule):
        raise CompatError(f"classes_up_to: task {task} out of range; there are {len(schedule)} tasks")
    return [int(c) for step in schedule[: task + 1] for c in step]


def class_incremental(
    labels: Sequence[int] | np.ndarray,
    *,
    initial: int,
    increment: int,
    class_order: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Class-incremental tasks (CL2R): each task brings new classes, and holds only their items.

    Args:
        labels: (N,) labels of the dataset.
        initial: classes of the first task.
        increment: classes of every later task.
        class_order: order in which classes arrive, a permutation of the classes in ``labels``;
            None means ascending label order.

    Returns:
        One (n_t,) int64 index array per task. ``class_schedule(order, ...)`` gives their classes.
    """
    labels = _labels(labels)
    present = np.unique(labels)
    order = present.tolist() if class_order is None else [int(c) for c in class_order]
    if class_order is not None and sorted(set(order)) != present.tolist():
        missing = sorted(set(present.tolist()) - set(order))
        extra = sorted(set(order) - set(present.tolist()))
        raise CompatError(
            f"class_incremental: class_order must be a permutation of the labels' classes (missing {missing}, "
            f"not in the labels {extra})"
        )
    schedule = class_schedule(order, initial=initial, increment=increment)
    return [np.flatnonzero(np.isin(labels, step)).astype(np.int64) for step in schedule]


def fraction_subsets(
    labels: Sequence[int] | np.ndarray,
    fractions: Sequence[float],
    *,
    seed: int,
    stratified: bool = True,
) -> list[np.ndarray]:
    """Nested random subsets of growing size: each subset contains all the smaller ones.

    One seeded permutation (per class when stratified) is cut at every fraction, so ``[0.1, 0.4, 1.0]``
    gives a 10% subset inside a 40% subset inside everything. Stratified: every class contributes
    ``round(f * n_c)`` items, at least one.

    Args:
        labels: (N,) labels of the dataset.
        fractions: strictly increasing fractions in (0, 1].
        seed: seed of the permutation.
        stratified: keep the class proportions (per-class cut) or cut one permutation of all items.

    Returns:
        One int64 index array per fraction.
    """
    labels = _labels(labels)
    fracs = [float(f) for f in fractions]
    if not fracs or any(not 0.0 < f <= 1.0 for f in fracs) or any(b <= a for a, b in itertools.pairwise(fracs)):
        raise CompatError(f"fraction_subsets: fractions must be strictly increasing in (0, 1], got {fracs}")
    if seed < 0:
        raise CompatError(f"fraction_subsets: seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratified else [np.arange(len(labels))]
    subsets: list[list[np.ndarray]] = [[] for _ in fracs]
    for members in groups:
        order = rng.permutation(members)
        for position, fraction in enumerate(fracs):
            count = _share(fraction, len(order)) if len(order) else 0
            subsets[position].append(order[:count])
    return [np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, np.int64) for parts in subsets]


def hold_out(labels: Sequence[int] | np.ndarray, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Set aside a seeded, class-stratified share of a split as a validation set.

    Every class gives ``round(fraction * n_c)`` of its items, at least one, to the held-out part and
    keeps at least one. Tune hyperparameters on the held-out part and train on the rest, so that
    the test split is measured once, with the settings already chosen.

    Args:
        labels: (N,) labels of the split.
        fraction: share held out, in (0, 1).
        seed: seed of the per-class permutation.

    Returns:
        ``(rest, held_out)``: two disjoint int64 index arrays, ascending, covering the split.
    """
    labels = _labels(labels)
    if not 0.0 < fraction < 1.0:
        raise CompatError(f"hold_out: fraction must be in (0, 1), got {fraction}")
    if seed < 0:
        raise CompatError(f"hold_out: seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, 1])  # a stream of its own: not the one fraction_subsets cuts
    rest, held = [], []
    for c in np.unique(labels):
        order = rng.permutation(np.flatnonzero(labels == c))
        if len(order) < 2:
            raise CompatError(f"hold_out: class {int(c)} has {len(order)} item; two are needed to hold one out")
        count = min(len(order) - 1, _share(fraction, len(order)))
        held.append(order[:count])
        rest.append(order[count:])
    if not held:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.sort(np.concatenate(rest)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)


def subset_of_classes(labels: Sequence[int] | np.ndarray, classes: Sequence[int] | np.ndarray) -> np.ndarray:
    """Indices of the items whose label is one of ``classes``.

    Args:
        labels: (N,) labels of the dataset.
        classes: the classes to keep; every one must occur in ``labels``.

    Returns:
        (M,) int64 indices, ascending.
    """
    labels = _labels(labels)
    wanted = np.unique(np.asarray(list(classes), dtype=np.int64))
    absent = np.setdiff1d(wanted, labels)
    if absent.size:
        raise CompatError(f"subset_of_classes: classes {absent.tolist()} do not occur in the labels")
    return np.flatnonzero(np.isin(labels, wanted)).astype(np.int64)


def per_class_subset(labels: Sequence[int] | np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
    """A seeded choice of ``per_class`` items of every class (all of a class that has fewer).

    Args:
        labels: (N,) labels of the split.
        per_class: items kept per class, >= 1.
        seed: seed of the per-class permutation (a stream of its own).

    Returns:
        (M,) int64 indices, ascending.
    """
    labels = _labels(labels)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise CompatError(f"per_class_subset: per_class must be a positive integer, got {per_class!r}")
    rng = np.random.default_rng([seed, 2])
    kept = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.empty(0, np.int64)
