"""Several row blocks seen as one array, without concatenating them.

A sharded feature set (:mod:`compat.manifest`) keeps each shard's ``features.npy`` memory-mapped;
:class:`ShardedArray` shows them to the evaluator as one ``(N, D)`` array. Everything that reads a
gallery slices it in blocks of rows (``x[start:stop]``), gathers a few rows by index (``x[rows]``)
or keeps leading columns (``x[:, :d]``), so the view supports exactly that: a slice inside one
shard is that shard's own view, a slice across a shard boundary copies those rows only, and
``np.asarray(x)`` copies everything (what a transform that needs the whole matrix asks for).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ShardedArray", "partition_rows", "release"]


class ShardedArray:
    """Rows of ``parts`` (each ``(n_i, D)``, same D and dtype) as one ``(sum n_i, D)`` array.

    Args:
        parts: the blocks in order; memory maps stay memory maps.
        columns: keep only these columns (a slice with step 1), applied on every read.
        checked: the parts' values were validated where they were opened (finite values and
            unique ids, checked shard by shard by :func:`compat.manifest.load_manifest`), so a
            :class:`compat.features.FeatureSet` over this view does not scan them again.
    """

    ndim = 2

    def __init__(self, parts: Sequence[np.ndarray], *, columns: slice | None = None, checked: bool = False):
        if not parts:
            raise ValueError("ShardedArray: at least one part is needed")
        widths = {p.shape[1] for p in parts}
        dtypes = {p.dtype for p in parts}
        if any(p.ndim != 2 for p in parts) or len(widths) != 1 or len(dtypes) != 1:
            raise ValueError("ShardedArray: parts must be 2-D with one width and one dtype")
        self.parts = list(parts)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.columns = columns
        self.checked = checked
        full = widths.pop()
        self._width = len(range(full)[columns]) if columns is not None else full
        self.dtype = dtypes.pop()

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), self._width

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, parts={len(self.parts)}, dtype={self.dtype})"

    def _cols(self, x: np.ndarray) -> np.ndarray:
        return x if self.columns is None else x[:, self.columns]

    def part_of(self, rows: np.ndarray) -> np.ndarray:
        """Index of the part holding each global row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            rows, cols = key
            if rows == slice(None) and isinstance(cols, slice) and cols.step in (None, 1):
                return self._with_columns(cols)
            return np.asarray(self[rows])[:, cols]
        if isinstance(key, slice):
            return self._rows(key)
        if isinstance(key, int | np.integer):
            n = len(self)
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            p = int(self.part_of(np.array([i]))[0])
            return self._cols(self.parts[p][i - self.offsets[p] : i - self.offsets[p] + 1])[0]
        return self._gather(np.asarray(key))

    def row_range(self, start: int, stop: int) -> ShardedArray:
        """Rows ``start:stop`` as a view over the parts (nothing is read or copied)."""
        start, stop = max(0, start), min(len(self), stop)
        parts = [p[max(start, a) - a : min(stop, b) - a] for p, a, b in zip(self.parts, self.offsets[:-1],
                                                                             self.offsets[1:], strict=True)
                 if min(stop, b) > max(start, a)]
        if not parts:
            parts = [self.parts[0][:0]]
        return ShardedArray(parts, columns=self.columns, checked=self.checked)

    def _with_columns(self, cols: slice) -> ShardedArray:
        base = range(self.parts[0].shape[1])
        kept = base[self.columns] if self.columns is not None else base
        chosen = kept[cols]
        if len(chosen) and chosen.step != 1:
            raise ValueError("ShardedArray: only contiguous column ranges are supported")
        start = chosen.start if len(chosen) else 0
        return ShardedArray(self.parts, columns=slice(start, start + len(chosen)), checked=self.checked)

    def _rows(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(len(self))
        if step != 1:
            return self._gather(np.arange(start, stop, step))
        if stop <= start:
            return np.empty((0, self._width), dtype=self.dtype)
        first = int(self.part_of(np.array([start]))[0])
        last = int(self.part_of(np.array([stop - 1]))[0])
        pieces = [
            self._cols(self.parts[p][max(start, self.offsets[p]) - self.offsets[p] : min(stop, self.offsets[p + 1])
                                     - self.offsets[p]])
            for p in range(first, last + 1)
        ]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.int64, copy=False).ravel()
        n = len(self)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((len(rows), self._width), dtype=self.dtype)
        part = self.part_of(rows)
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            out[sel] = self._cols(self.parts[p][rows[sel] - self.offsets[p]])
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[0 : len(self)]
        if len(self.parts) == 1:
            out = np.array(out)  # a copy, never the shard's memory map itself
        return out if dtype is None else out.astype(dtype, copy=False)


def partition_rows(n: int, world: int, boundaries: np.ndarray | None = None) -> np.ndarray:
    """(world + 1,) row offsets of each rank's contiguous part, balanced by rows.

    Args:
        boundaries: allowed cut points (a sharded set's shard offsets, from 0 to n); any row if None.
    """
    targets = np.round(np.arange(world + 1) * n / world).astype(np.int64)
    if boundaries is None:
        return targets
    cuts = np.asarray(boundaries, dtype=np.int64)
    nearest = cuts[np.abs(cuts[None, :] - targets[:, None]).argmin(1)]
    nearest[0], nearest[-1] = 0, n
    return np.maximum.accumulate(nearest)


_MADV_DONTNEED = 4  # Linux


def release(x: Any, start: int, stop: int) -> None:
    """Drop rows ``start:stop`` of a memory-mapped array (a ``ShardedArray``'s shards, an ``np.memmap``)
    from this process's resident memory; the file's pages stay in the page cache, and reading them
    again maps them back. Streaming a gallery larger than memory this way keeps the process's memory
    to the blocks it holds. Does nothing for arrays in memory or off Linux."""
    if isinstance(x, ShardedArray):
        for part, a, b in zip(x.parts, x.offsets[:-1], x.offsets[1:], strict=True):
            if min(stop, b) > max(start, a):
                release(part, max(start, a) - a, min(stop, b) - a)
        return
    if not isinstance(x, np.memmap) or not sys.platform.startswith("linux") or stop <= start:
        return
    view = x[start:stop]
    page = mmap.PAGESIZE
    first = view.ctypes.data // page * page
    length = view.ctypes.data + view.nbytes - first
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(length), _MADV_DONTNEED)
