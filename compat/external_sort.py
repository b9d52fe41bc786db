"""Sorting more records than memory holds: sorted runs on disk, then one k-way merge in blocks.

Records are rows of a numpy structured array with a field ``key`` (any orderable dtype: float64,
uint64, int64, unicode) and a field ``row`` (int64, unique): they are sorted by ``key``, ties by
``row``. :meth:`ExternalSort.add` buffers records; a full buffer is sorted and written to a file as
one run. :meth:`ExternalSort.merged` reads every run back in chunks and yields the records in
order, a block at a time: at each step it takes, from every run's chunk, the records not after the
smallest last record among the chunks of runs that still have records on disk; nothing later in
any run can come before them. Memory: one run buffer while adding, then ``merge_rows`` records
spread over the runs while merging (runs x chunk); files are read with plain reads, not mapped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import numpy as np

__all__ = ["ExternalSort", "first_repeat"]


def _sort(records: np.ndarray) -> np.ndarray:
    return records[np.lexsort((records["row"], records["key"]))]


class _Run:
    """One sorted run file, read back in chunks."""

    def __init__(self, path: Path, dtype: np.dtype, count: int) -> None:
        self.path, self.dtype, self.count, self.read = path, dtype, count, 0
        self.buffer = np.empty(0, dtype=dtype)

    @property
    def on_disk(self) -> bool:
        return self.read < self.count

    def refill(self, rows: int) -> None:
        take = min(rows, self.count - self.read)
        with open(self.path, "rb") as fh:
            fh.seek(self.read * self.dtype.itemsize)
            self.buffer = np.fromfile(fh, dtype=self.dtype, count=take)
        self.read += take


class ExternalSort:
    """Sort records by (``key``, ``row``) in bounded memory.

    Args:
        dtype: the records' structured dtype; it must have ``key`` and ``row`` fields.
        directory: where the run files go (a temporary directory is made inside it).
        run_rows: records sorted in memory per run.
        merge_rows: records held over all runs while merging.

    Use as a context manager (the run files are removed on exit)::

        with ExternalSort(dtype, tmp, run_rows=1 << 22, merge_rows=1 << 20) as sorter:
            for block in blocks:
                sorter.add(block)
            for chunk in sorter.merged():
                ...
    """

    def __init__(self, dtype: np.dtype, directory: str | os.PathLike[str], *, run_rows: int, merge_rows: int) -> None:
        self.dtype = np.dtype(dtype)
        if not {"key", "row"} <= set(self.dtype.names or ()):
            raise ValueError("external sort: records need 'key' and 'row' fields")
        self.run_rows, self.merge_rows = max(1, int(run_rows)), max(1, int(merge_rows))
        self._dir = Path(tempfile.mkdtemp(prefix=".compat-sort-", dir=directory))
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._runs: list[_Run] = []
        self.count = 0
        self.bytes_written = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def runs(self) -> int:
        return len(self._runs)

    def add(self, records: np.ndarray) -> None:
        """Buffer ``records`` (of :attr:`dtype`); a full buffer becomes a sorted run on disk."""
        pos = 0
        while pos < len(records):
            take = min(len(records) - pos, self.run_rows - self._pending_rows)
            self._pending.append(np.asarray(records[pos : pos + take], dtype=self.dtype))
            self._pending_rows += take
            pos += take
            if self._pending_rows == self.run_rows:
                self._spill()
        self.count += len(records)

    def _spill(self) -> None:
        if not self._pending_rows:
            return
        run = _sort(np.concatenate(self._pending))
        self._pending, self._pending_rows = [], 0
        path = self._dir / f"run{len(self._runs):05d}.bin"
        run.tofile(path)
        self.bytes_written += run.nbytes
        self._runs.append(_Run(path, self.dtype, len(run)))

    def merged(self) -> Iterator[np.ndarray]:
        """All records added, sorted by (``key``, ``row``), in consecutive blocks."""
        if not self._runs:  # everything fits in one buffer: no file needed
            if self._pending_rows:
                records = _sort(np.concatenate(self._pending))
                for start in range(0, len(records), self.merge_rows):
                    yield records[start : start + self.merge_rows]
            return
        self._spill()
        chunk = max(1, self.merge_rows // len(self._runs))
        for run in self._runs:
            run.refill(chunk)
        while True:
            live = [r for r in self._runs if len(r.buffer)]
            if not live:
                return
            bounded = [r for r in live if r.on_disk]
            taken = []
            if bounded:
                last = _sort(np.concatenate([r.buffer[-1:] for r in bounded]))[0]
                for r in live:
                    b = r.buffer
                    before = (b["key"] < last["key"]) | ((b["key"] == last["key"]) & (b["row"] <= last["row"]))
                    n = int(np.count_nonzero(before))  # a prefix: the buffer is sorted
                    taken.append(b[:n])
                    r.buffer = b[n:]
            else:
                taken = [r.buffer for r in live]
                for r in live:
                    r.buffer = r.buffer[:0]
            for r in live:
                if not len(r.buffer) and r.on_disk:
                    r.refill(chunk)
            yield _sort(np.concatenate(taken))


def first_repeat(chunks: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The first two records that share a ``key`` in chunks sorted by (``key``, ``row``), or None.

    Reads the chunks one at a time (the output of :meth:`ExternalSort.merged`), so checking keys for
    uniqueness holds one chunk in memory.
    """
    previous = None
    for chunk in chunks:
        if not len(chunk):
            continue
        if previous is not None and chunk["key"][0] == previous["key"]:
            return previous, chunk[0]
        same = np.flatnonzero(chunk["key"][1:] == chunk["key"][:-1])
        if len(same):
            return chunk[same[0]], chunk[same[0] + 1]
        previous = chunk[-1]
    return None
