"""The statistic of each gate check: which cells it compares, and how their per-query columns combine.

A check's cells are (query model, gallery model) pairs of the labels ``old``, ``new``,
``independent`` and the older galleries of ``chain``; its statistic maps the bootstrap's resampled
cell means (one row per resample, one column per cell, in the order ``check_cells`` gives) to the
value the check's rule bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compat.gate.bootstrap import Statistic
from compat.gate.policy import CheckKind, CheckSpec

__all__ = ["INDEPENDENT", "NEW", "OLD", "check_cells", "negative_flips"]

OLD, NEW, INDEPENDENT = "old", "new", "independent"


def _difference(means: np.ndarray) -> np.ndarray:
    return means[:, 0] - means[:, 1]


def _update_gain(means: np.ndarray) -> np.ndarray:
    gain, room = means[:, 0] - means[:, 1], means[:, 2] - means[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, gain / room, np.nan)


def _max_drop(means: np.ndarray) -> np.ndarray:
    return (means[:, 0::2] - means[:, 1::2]).max(axis=1)


def _first_column(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def negative_flips(columns: np.ndarray) -> np.ndarray:
    """(N, 1): 1 where the query is right at top-1 under (old, old) (column 1) and wrong under (new, old)."""
    return (columns[:, 1] * (1.0 - columns[:, 0]))[:, None]


def check_cells(spec: CheckSpec, older: Sequence[str]) -> tuple[list[tuple[str, str]], Statistic]:
    """The cells a check compares, in the column order its statistic expects."""
    if spec.kind is CheckKind.COMPATIBILITY:
        return [(NEW, OLD), (OLD, OLD)], _difference
    if spec.kind is CheckKind.IMPROVEMENT:
        return [(NEW, NEW), (OLD, OLD)], _difference
    if spec.kind is CheckKind.UPDATE_GAIN:
        return [(NEW, OLD), (OLD, OLD), (INDEPENDENT, INDEPENDENT)], _update_gain
    if spec.kind is CheckKind.NEGATIVE_FLIPS:
        return [(NEW, OLD), (OLD, OLD)], _first_column
    return [cell for g in older for cell in ((OLD, g), (NEW, g))], _max_drop
