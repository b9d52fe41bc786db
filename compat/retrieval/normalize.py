"""Unit-length rows in float32, correct for any finite input.

``x / ||x||`` in float32 fails at both ends of the range: the sum of squares overflows above about
1.8e19 (a feature of 1e30 is a finite float32) and loses its digits below about 1e-19, so the
"normalised" row is zero, infinite or not of unit length, and every score after it is wrong. A row
whose norm leaves a safe range is divided by its largest absolute entry first, which changes
nothing mathematically; other rows are normalised exactly as before.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unit_rows"]

_SAFE_NORMS = (1e-15, 1e15)
_TINY = np.finfo(np.float32).tiny


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) float32 -> a new (N, D) float32 array of unit rows (an all-zero row stays zero)."""
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    out = x / np.maximum(norms, _TINY)
    unsafe = np.flatnonzero(~((norms[:, 0] >= _SAFE_NORMS[0]) & (norms[:, 0] <= _SAFE_NORMS[1])))
    if len(unsafe):
        rows = x[unsafe]
        rows = rows / np.maximum(np.abs(rows).max(axis=1, keepdims=True), _TINY)
        out[unsafe] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _TINY)
    return out
