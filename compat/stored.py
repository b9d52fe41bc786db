"""A stored feature set read block by block, for galleries larger than memory.

:func:`compat.features.load_features` validates a whole set at once (unique ids, finite values) and
keeps its labels and ids in memory: 1.6 GB for 10^8 items. :func:`open_stored` reads only the
headers of a ``.npy`` directory (``features.npy``, ``labels.npy``, ``ids.npy``, ``meta.json``, the
layout :func:`compat.features.save_features` writes) and checks dtypes and shapes;
:meth:`StoredFeatures.blocks` then reads rows ``[start, start + rows)`` of the three arrays with
plain file reads (no memory map, so the process holds one block at a time), checking each block's
features for NaN and infinity as it goes. Id uniqueness needs a sort of every id; the backfill plan
checks it with its external sort (:mod:`compat.adapters.plan_order`).

A sharded set (a ``manifest.json`` over ``.npy`` directories, :mod:`compat.manifest`) is opened
shard by shard, each checked against the manifest (rows, dimension, checksum), and read as one
sequence of rows: a block that crosses a shard boundary joins the two reads.

A ``.npz`` file cannot be read by rows (numpy reads an archive member whole): it is loaded and
validated by :func:`compat.features.load_features` and then served in blocks from memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compat._files import is_input_dir
from compat.errors import CompatError
from compat.features import FeatureSet, check_finite, load_features
from compat.jsontext import read_json_object

__all__ = ["Block", "StoredFeatures", "open_stored"]


@dataclass(frozen=True)
class Block:
    """Rows ``start .. start + len(labels)`` of a stored set; ``features`` is None when not read."""

    start: int
    features: np.ndarray | None
    labels: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True)
class _Array:
    """Where one ``.npy`` file's data starts, its dtype and its shape."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def rows(self, start: int, count: int) -> np.ndarray:
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * width * self.dtype.itemsize)
            out = np.fromfile(fh, dtype=self.dtype, count=count * width)
        if len(out) != count * width:
            raise CompatError(f"{self.path}: the file ends before row {start + count}; it is truncated")
        return out.reshape((count, *self.shape[1:]))


def _header(path: Path) -> _Array:
    if not path.is_file():
        raise CompatError(f"{path}: missing; a feature directory needs features.npy, labels.npy, ids.npy")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, OSError) as exc:
        raise CompatError(f"{path}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise CompatError(f"{path}: holds pickled Python objects; refusing to load it")
    if fortran and len(shape) > 1:
        raise CompatError(f"{path}: stored in Fortran order; expected a C-ordered array (numpy.save of a normal array)")
    return _Array(path, offset, dtype, tuple(shape))


@dataclass(frozen=True)
class StoredFeatures:
    """A feature set on disk, read in blocks; ``n`` items of ``dim`` features.

    Attributes:
        source: the path, for messages.
        n, dim: rows and feature size.
        ids_dtype: int64, or a unicode dtype for string ids.
        meta: the set's metadata.
    """

    source: str
    n: int
    dim: int
    ids_dtype: np.dtype
    meta: dict[str, Any]
    _arrays: dict[str, _Array] | None = field(default=None, repr=False)
    _loaded: FeatureSet | None = field(default=None, repr=False)
    _parts: tuple[StoredFeatures, ...] = field(default=(), repr=False)

    @classmethod
    def in_memory(cls, fs: FeatureSet) -> StoredFeatures:
        """A feature set already in memory, served in blocks the same way."""
        return cls(fs.source, fs.n, fs.dim, fs.ids.dtype, dict(fs.meta), None, fs)

    def blocks(self, rows: int, *, features: bool = True) -> Iterator[Block]:
        """Consecutive blocks of ``rows`` items (the last may be shorter), features checked finite.

        Args:
            rows: items per block.
            features: read the features too (an ordering of ids alone does not need them).
        """
        for start in range(0, self.n, rows):
            yield self._read(start, min(rows, self.n - start), features)

    def _read(self, start: int, count: int, features: bool) -> Block:
        if self._parts:
            pieces, offset = [], 0
            for part in self._parts:
                lo, hi = max(start, offset), min(start + count, offset + part.n)
                if lo < hi:
                    pieces.append(part._read(lo - offset, hi - lo, features))
                offset += part.n
            x = np.concatenate([b.features for b in pieces]) if features else None
            return Block(start, x, np.concatenate([b.labels for b in pieces]), np.concatenate([b.ids for b in pieces]))
        if self._loaded is not None:
            fs = self._loaded
            x = fs.features[start : start + count] if features else None
            return Block(start, x, fs.labels[start : start + count], fs.ids[start : start + count])
        arrays = self._arrays
        x = arrays["features"].rows(start, count) if features else None
        if x is not None:
            check_finite(x, str(arrays["features"].path), start=start)
        return Block(start, x, arrays["labels"].rows(start, count), arrays["ids"].rows(start, count))


def open_stored(path: str | os.PathLike[str]) -> StoredFeatures:
    """Open a stored feature set for reading in blocks (a ``.npy`` directory or a sharded set's manifest;
    a ``.npz`` is loaded whole).

    Raises:
        CompatError: a missing or unreadable file, a wrong dtype or shape, unreadable metadata.
    """
    p = Path(path)
    from compat.manifest import is_manifest, open_stored_shards

    directory = is_input_dir(p, "feature file or directory")  # (a FIFO or an unreadable path is refused there)
    if is_manifest(p):
        return open_stored_shards(p)
    if not directory:
        return StoredFeatures.in_memory(load_features(p))
    arrays = {key: _header(p / f"{key}.npy") for key in ("features", "labels", "ids")}
    f, labels, ids = arrays["features"], arrays["labels"], arrays["ids"]
    if len(f.shape) != 2 or f.dtype != np.float32 or 0 in f.shape:
        raise CompatError(f"{f.path}: field 'features' must be a non-empty 2-D float32 array (N x D), "
                          f"got {f.dtype} of shape {f.shape}")
    n = f.shape[0]
    if labels.shape != (n,) or labels.dtype != np.int64:
        raise CompatError(f"{labels.path}: field 'labels' must be int64 of shape ({n},), got {labels.dtype} {labels.shape}")
    if ids.shape != (n,) or not (ids.dtype == np.int64 or (ids.dtype.kind == "U" and ids.dtype.isnative)):
        raise CompatError(f"{ids.path}: field 'ids' must be int64 or unicode strings of shape ({n},), "
                          f"got {ids.dtype} {ids.shape}")
    return StoredFeatures(str(p), n, f.shape[1], ids.dtype, _read_meta(p / "meta.json"), arrays, None)


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return read_json_object(path, "field 'meta'")
