"""The whole stored gallery's re-extraction order, streamed into ``plan.csv`` in bounded memory.

Two passes over the stored gallery (:class:`compat.stored.StoredFeatures`, read in blocks) and
two external sorts (:class:`compat.adapters.external_sort.ExternalSort`):

1. ids and labels (and the features, for ``farthest`` and ``uncertainty``): where each item of the
   evaluation sample sits in the gallery, the id runs of the uniqueness check, and the class sums
   of the indexed features (:class:`compat.adapters.orderings.ClassSums`). ``random`` keys depend
   on the ids only, so its records are sorted in this pass and the features are never read.
2. (``farthest``, ``uncertainty``) every item's key from the class means of the whole gallery
   (:func:`compat.adapters.orderings.order_keys`), into the order's runs.

The merged order is written to ``plan.csv`` (a header ``id``, then one id per line, first to
re-extract first) and the position of every sample item in it is kept: that is how far into the
plan each sample item gets re-extracted, which the prediction uses. The order is the one
:func:`compat.adapters.orderings.backfill_order` gives the whole gallery in memory.

Memory: a block of rows, one run buffer and the merge's chunks, each sized from
``memory_budget``, plus the sample and the (C, d) class sums; nothing grows with the gallery
except the number of runs (one per ``run_rows`` items, each with a chunk while merging). Disk:
the runs, 16 to 24 bytes per item for each sort (more for string ids).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compat.adapters.adapter import normalize_rows
from compat.adapters.config import Ordering
from compat.adapters.orderings import ClassMeans, ClassSums, order_keys, parse_ordering
from compat.errors import CompatError
from compat.external_sort import ExternalSort, first_repeat
from compat.features import FeatureSet
from compat.progress import progress as progress_bar
from compat.stored import Block, StoredFeatures

__all__ = ["PLAN_HEADER", "PlanOrder", "StreamSizes", "write_plan_order"]

PLAN_HEADER = "id"

# (n, D) stored features -> (n, d) features as the gallery is searched before backfilling.
GalleryMap = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class StreamSizes:
    """Rows per block read, records per sorted run, records held while merging.

    Each gets a quarter of the memory budget, with room for its temporaries.
    """

    budget: int
    dim: int
    block_rows: int
    run_rows: int
    merge_rows: int

    @classmethod
    def from_budget(cls, budget: int, *, dim: int, record_bytes: int) -> StreamSizes:
        quarter = max(1, budget // 4)
        records = max(1024, quarter // (3 * record_bytes))
        return cls(budget, dim, cls._rows(quarter, 16 * dim + 64), records, records)

    @staticmethod
    def _rows(quarter: int, row_bytes: int) -> int:
        return int(np.clip(quarter // row_bytes, 256, 1 << 20))

    def key_rows(self, classes: int) -> int:
        """Rows per block of the key pass: ``uncertainty`` holds a few (rows, C) float64 arrays."""
        return self._rows(max(1, self.budget // 4), 16 * self.dim + 32 * classes + 64)


@dataclass(frozen=True)
class PlanOrder:
    """What streaming the order found.

    Attributes:
        n: gallery items, the rows of ``plan.csv``.
        positions: (n_sample,) 0-based position in the plan of each sample item (in sample order).
        runs: sorted runs written by the order's external sort (1 when it fit in memory).
        run_bytes: bytes of sorted runs written to disk by both sorts (the ids' and the order's).
        max_difference: the largest difference between a sample item's old features and the
            gallery's stored row of that item, relative to the row's norm (None when the
            ordering read no features).
    """

    n: int
    positions: np.ndarray
    runs: int
    run_bytes: int
    max_difference: float | None


def _id_records(ids: np.ndarray, start: int) -> np.ndarray:
    out = np.empty(len(ids), dtype=[("key", ids.dtype), ("row", np.int64)])
    out["key"], out["row"] = ids, np.arange(start, start + len(ids))
    return out


def _order_records(keys: np.ndarray, start: int, ids: np.ndarray) -> np.ndarray:
    out = np.empty(len(keys), dtype=[("key", keys.dtype), ("row", np.int64), ("id", ids.dtype)])
    out["key"], out["row"], out["id"] = keys, np.arange(start, start + len(keys)), ids
    return out


class _Sample:
    """The sample's ids, matched against gallery blocks; the gallery row of each sample item."""

    def __init__(self, sample: FeatureSet, gallery: StoredFeatures) -> None:
        if (sample.ids.dtype.kind == "U") != (gallery.ids_dtype.kind == "U"):
            raise CompatError(f"{sample.source}: field 'ids' are {sample.ids.dtype} but the gallery "
                              f"{gallery.source} has {gallery.ids_dtype} ids; they must be of one kind to match")
        self.fs = sample
        self.by_id = np.argsort(sample.ids, kind="stable")
        self.sorted_ids = sample.ids[self.by_id]
        self.rows = np.full(sample.n, -1, dtype=np.int64)
        self.max_difference: float | None = None

    def match(self, block: Block) -> None:
        pos = np.minimum(np.searchsorted(self.sorted_ids, block.ids), len(self.sorted_ids) - 1)
        hit = self.sorted_ids[pos] == block.ids
        items = self.by_id[pos[hit]]
        self.rows[items] = block.start + np.flatnonzero(hit)
        if block.features is not None and len(items):
            stored = block.features[hit].astype(np.float64)
            diff = np.abs(stored - self.fs.features[items]).max(axis=1) / np.maximum(np.linalg.norm(stored, axis=1), 1e-12)
            self.max_difference = max(self.max_difference or 0.0, float(diff.max()))

    def check_found(self, gallery: StoredFeatures) -> None:
        missing = np.flatnonzero(self.rows < 0)
        if len(missing):
            raise CompatError(f"{self.fs.source}: {len(missing)} of the {self.fs.n} sample items are not in the gallery "
                              f"{gallery.source} (first: id {self.fs.ids[missing[0]].item()!r}); the sample must be "
                              "drawn from the stored gallery")


def _check_unique(chunks: Iterator[np.ndarray], source: str) -> None:
    """Raise on the first id that two rows share (the chunks are sorted by id, then row)."""
    repeat = first_repeat(chunks)
    if repeat is not None:
        a, b = repeat
        raise CompatError(f"{source}: field 'ids' must be unique; id {a['key'].item()!r} appears in rows "
                          f"{int(a['row'])} and {int(b['row'])}")


def _write_csv(chunks: Iterator[np.ndarray], path: Path, sample_rows: np.ndarray) -> np.ndarray:
    """Write the ids of the merged records; return the position of each sample row."""
    by_row = np.argsort(sample_rows)
    sorted_rows = sample_rows[by_row]
    positions = np.full(len(sample_rows), -1, dtype=np.int64)
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(PLAN_HEADER + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        for chunk in chunks:
            ids = chunk["id"]
            if ids.dtype.kind == "U":
                writer.writerows((i,) for i in ids.tolist())
            else:
                buffer = io.StringIO()
                buffer.write("\n".join(map(str, ids.tolist())))
                buffer.write("\n")
                fh.write(buffer.getvalue())
            if len(sorted_rows):
                pos = np.minimum(np.searchsorted(sorted_rows, chunk["row"]), len(sorted_rows) - 1)
                hit = sorted_rows[pos] == chunk["row"]
                positions[by_row[pos[hit]]] = written + np.flatnonzero(hit)
            written += len(chunk)
    return positions


def write_plan_order(
    gallery: StoredFeatures,
    ordering: Ordering | str,
    csv_path: Path,
    *,
    sample: FeatureSet,
    gallery_map: GalleryMap,
    seed: int,
    tmp_dir: Path,
    memory_budget: int,
    progress: bool = False,
    sizes: StreamSizes | None = None,
) -> PlanOrder:
    """Order the whole stored gallery, write ``plan.csv`` and find the sample's positions in it.

    Args:
        gallery: the stored gallery (old features), read in blocks.
        ordering: ``random``, ``farthest`` or ``uncertainty``.
        csv_path: where ``plan.csv`` goes.
        sample: the evaluation sample's old features; every id must be a gallery item.
        gallery_map: stored features -> features as searched before backfilling (the dimension
            policy, or the adapter's ``old_space`` / ``upgrade``); the orderings are decided on these.
        seed: of the ``random`` ordering.
        tmp_dir: where the sorted runs go.
        memory_budget: bytes for a block, a run and the merge (see :class:`StreamSizes`).
        progress: bars over the passes, on a terminal.
        sizes: the block, run and merge sizes instead of those ``memory_budget`` gives.

    Raises:
        CompatError: a gallery id repeats, a sample item is not in the gallery, a bad block.
    """
    ordering = parse_ordering(ordering)
    needs_means = ordering is not Ordering.RANDOM
    key_bytes = 8 if gallery.ids_dtype.kind != "U" else gallery.ids_dtype.itemsize
    sizes = sizes or StreamSizes.from_budget(memory_budget, dim=gallery.dim, record_bytes=16 + key_bytes)
    matched = _Sample(sample, gallery)
    id_dtype = [("key", gallery.ids_dtype), ("row", np.int64)]
    order_dtype = [("key", np.float64 if needs_means else np.uint64), ("row", np.int64), ("id", gallery.ids_dtype)]
    sort_args = {"run_rows": sizes.run_rows, "merge_rows": sizes.merge_rows}
    with ExternalSort(id_dtype, tmp_dir, **sort_args) as id_sort, ExternalSort(order_dtype, tmp_dir, **sort_args) as order:
        sums: ClassSums | None = None
        blocks = progress_bar(gallery.blocks(sizes.block_rows, features=needs_means), desc="gallery: ids",
                              total=-(-gallery.n // sizes.block_rows), enabled=progress)
        for block in blocks:
            matched.match(block)
            id_sort.add(_id_records(block.ids, block.start))
            if needs_means:
                x = normalize_rows(gallery_map(block.features))
                sums = sums or ClassSums(x.shape[1])
                sums.add(x, block.labels)
            else:
                keys = order_keys(ordering, None, block.labels, block.ids, seed=seed)
                order.add(_order_records(keys, block.start, block.ids))
        _check_unique(id_sort.merged(), gallery.source)
        matched.check_found(gallery)
        if needs_means:
            _key_pass(gallery, ordering, order, sums.means(), gallery_map, sizes, progress)
        positions = _write_csv(order.merged(), csv_path, matched.rows)
        return PlanOrder(gallery.n, positions, max(order.runs, 1), id_sort.bytes_written + order.bytes_written,
                         matched.max_difference)


def _key_pass(gallery: StoredFeatures, ordering: Ordering, order: ExternalSort, means: ClassMeans,
              gallery_map: GalleryMap, sizes: StreamSizes, progress: bool) -> None:
    """Pass 2: every item's key from the whole gallery's class means, into the order's runs."""
    rows = sizes.key_rows(len(means.classes))
    blocks = progress_bar(gallery.blocks(rows), desc=f"gallery: {ordering.value}", total=-(-gallery.n // rows),
                          enabled=progress)
    for block in blocks:
        keys = order_keys(ordering, gallery_map(block.features), block.labels, block.ids, means=means)
        order.add(_order_records(keys, block.start, block.ids))
