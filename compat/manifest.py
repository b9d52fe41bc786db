"""Sharded feature sets: a JSON manifest over shards that are ``.npy`` feature directories.

A feature set too large for one directory (or written by several processes, ``compat extract``
under torchrun) is a directory holding ``manifest.json`` and its shards, each a directory in the
layout :func:`compat.features.save_features` writes::

    gallery/
      manifest.json
      shard-00000/  features.npy  labels.npy  ids.npy  meta.json
      shard-00001/  ...

``manifest.json`` (all keys required, no others)::

    {"format": "compat-sharded-features", "format_version": 1, "dim": 128, "dtype": "float32",
     "rows": 2000000,
     "shards": [{"path": "shard-00000", "rows": 1000000, "sha256": "<hex>"}, ...],
     "meta": {"model": ..., "version": ..., ...}}

``path`` is relative to the manifest's directory; ``sha256`` covers the bytes of the shard's
``features.npy``, ``labels.npy`` and ``ids.npy``, in that order (:func:`shard_digest`). Rows are
numbered across shards in manifest order. :func:`load_manifest` reads the headers, checks every
shard against the manifest (present, rows, dimension, dtypes, checksum, finite values) and the
ids for uniqueness across shards with an external sort (bounded memory), then memory-maps the
features (:class:`compat.sharded.ShardedArray`) and reads labels and ids (16 bytes per item).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compat._atomic import atomic_path
from compat.errors import CompatError
from compat.external_sort import ExternalSort, first_repeat
from compat.features import FeatureSet, check_finite, load_features, save_features
from compat.sharded import ShardedArray, partition_rows
from compat.stored import StoredFeatures, open_stored

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ShardInfo",
    "check_unique_ids",
    "is_manifest",
    "load_for_rank",
    "load_manifest",
    "open_stored_shards",
    "read_manifest",
    "save_sharded",
    "shard_digest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "compat-sharded-features"
FORMAT_VERSION = 1
SHARD_FILES = ("features.npy", "labels.npy", "ids.npy")
_KEYS = {"format", "format_version", "dim", "dtype", "rows", "shards", "meta"}
_SHARD_KEYS = {"path", "rows", "sha256"}
_SCAN_ROWS = 1 << 16
# Bytes per id record while sorting: the record (key + row), lexsort's index and the sorted copy.
_SORT_BYTES_PER_ID = 48
DEFAULT_SORT_BUDGET = 1 << 30


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its directory (relative to the manifest), its rows and its checksum (hex sha256)."""

    path: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The manifest of a sharded feature set: feature size, shards in row order, metadata."""

    dim: int
    shards: tuple[ShardInfo, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def offsets(self) -> np.ndarray:
        """(S + 1,) first global row of each shard, then the total."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "dim": self.dim, "dtype": "float32",
                "rows": self.rows, "shards": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in self.shards],
                "meta": self.meta}


def is_manifest(path: str | os.PathLike[str]) -> bool:
    """A ``manifest.json`` file (any ``.json`` file), or a directory holding one."""
    p = Path(path)
    try:
        return (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / MANIFEST_NAME).is_file())
    except OSError:  # cannot be looked at: the reader of the path names why
        return False


def _manifest_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``manifest.json`` (or the one inside directory ``path``); shards are not opened.

    Raises:
        CompatError: unreadable JSON, a missing or unknown key, a wrong format or value.
    """
    f = _manifest_file(path)
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompatError(f"{f}: no such manifest file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompatError(f"{f}: not a readable JSON manifest ({exc})") from None
    if not isinstance(doc, dict):
        raise CompatError(f"{f}: a manifest must be a JSON object")
    unknown, missing = set(doc) - _KEYS, _KEYS - set(doc)
    if unknown or missing:
        what = f"unknown key {min(unknown)!r}" if unknown else f"missing key {min(missing)!r}"
        raise CompatError(f"{f}: {what}; expected the keys {', '.join(sorted(_KEYS))}")
    if doc["format"] != FORMAT or doc["format_version"] != FORMAT_VERSION:
        raise CompatError(f"{f}: field 'format': expected {FORMAT!r} version {FORMAT_VERSION}, "
                          f"got {doc['format']!r} version {doc['format_version']!r}")
    if doc["dtype"] != "float32":
        raise CompatError(f"{f}: field 'dtype': expected 'float32', got {doc['dtype']!r}")
    if not _positive_int(doc["dim"]):
        raise CompatError(f"{f}: field 'dim': expected a positive integer, got {doc['dim']!r}")
    if not isinstance(doc["meta"], dict):
        raise CompatError(f"{f}: field 'meta': expected a JSON object")
    if not isinstance(doc["shards"], list) or not doc["shards"]:
        raise CompatError(f"{f}: field 'shards': expected a non-empty list")
    shards = tuple(_shard_info(s, f, i) for i, s in enumerate(doc["shards"]))
    manifest = Manifest(int(doc["dim"]), shards, doc["meta"])
    if doc["rows"] != manifest.rows:
        raise CompatError(f"{f}: field 'rows' is {doc['rows']!r} but the shards hold {manifest.rows} rows")
    if len({s.path for s in shards}) != len(shards):
        raise CompatError(f"{f}: field 'shards': a shard path is listed twice")
    return manifest


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _shard_info(entry: Any, f: Path, i: int) -> ShardInfo:
    if not isinstance(entry, dict) or set(entry) != _SHARD_KEYS:
        raise CompatError(f"{f}: shards[{i}]: expected an object with the keys path, rows, sha256")
    path, rows, digest = entry["path"], entry["rows"], entry["sha256"]
    if not isinstance(path, str) or not path or Path(path).is_absolute() or ".." in Path(path).parts:
        raise CompatError(f"{f}: shards[{i}].path: expected a relative path inside the manifest's directory, got {path!r}")
    if not _positive_int(rows):
        raise CompatError(f"{f}: shard {path}: field 'rows': expected a positive integer, got {rows!r}")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CompatError(f"{f}: shard {path}: field 'sha256': expected 64 lowercase hex digits")
    return ShardInfo(path, rows, digest)


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` atomically to ``path`` (a ``.json`` file, or ``manifest.json`` in directory ``path``)."""
    p = Path(path)
    target = p if p.suffix == ".json" else p / MANIFEST_NAME
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True), encoding="utf-8")
    return target


def shard_digest(shard_dir: str | os.PathLike[str]) -> str:
    """Hex sha256 of a shard's ``features.npy``, ``labels.npy`` and ``ids.npy`` bytes, in that order."""
    h = hashlib.sha256()
    for name in SHARD_FILES:
        with open(Path(shard_dir) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def check_unique_ids(
    parts: Iterable[tuple[str, np.ndarray]],
    key_dtype: np.dtype,
    *,
    source: str,
    tmp_dir: str | os.PathLike[str] | None = None,
    memory_budget: int = DEFAULT_SORT_BUDGET,
) -> None:
    """Raise naming both shards when an id appears twice, holding at most about ``memory_budget`` bytes.

    Args:
        parts: (shard name, its ids) in row order, read one at a time.
        key_dtype: int64, or a unicode dtype wide enough for every id.
        source: names the set in the message.
        tmp_dir: where sorted runs go when the ids do not fit the budget (default: the system's).

    The ids are sorted in runs of ``memory_budget / 48`` records (id, row) written to disk, then
    merged (:class:`compat.external_sort.ExternalSort`); two equal neighbours are a duplicate.
    """
    names: list[str] = []
    starts = [0]
    dtype = np.dtype([("key", key_dtype), ("row", np.int64)])
    run_rows = max(1 << 10, memory_budget // _SORT_BYTES_PER_ID)
    with ExternalSort(dtype, tmp_dir or tempfile.gettempdir(), run_rows=run_rows, merge_rows=run_rows // 4) as sorter:
        for name, ids in parts:
            for s in range(0, len(ids), run_rows):
                chunk = ids[s : s + run_rows]
                records = np.empty(len(chunk), dtype=dtype)
                records["key"], records["row"] = chunk, np.arange(starts[-1] + s, starts[-1] + s + len(chunk))
                sorter.add(records)
            names.append(name)
            starts.append(starts[-1] + len(ids))
        repeat = first_repeat(sorter.merged())
    if repeat is not None:
        a, b = repeat
        offsets = np.asarray(starts)
        raise CompatError(f"{source}: field 'ids' must be unique across shards; id {a['key'].item()!r} appears in "
                          f"{_describe_row(int(a['row']), names, offsets)} and {_describe_row(int(b['row']), names, offsets)}")


def _describe_row(row: int, names: list[str], starts: np.ndarray) -> str:
    s = int(np.searchsorted(starts, row, side="right") - 1)
    return f"shard {names[s]} row {row - int(starts[s])}"


@dataclass(frozen=True)
class _Shard:
    info: ShardInfo
    path: Path
    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


def _check_shard(f: Path, manifest: Manifest, info: ShardInfo, *, verify: bool) -> Path:
    """Check one shard's headers (and checksum) against the manifest; every message names the shard."""
    where = f"{f}: shard {info.path}"
    path = f.parent / info.path
    if not path.is_dir():
        raise CompatError(f"{where}: missing (no directory {path})")
    try:
        stored = open_stored(path)
    except CompatError as exc:
        raise CompatError(f"{where}: {exc}") from None
    if stored.dim != manifest.dim:
        raise CompatError(f"{where}: features have dimension {stored.dim}; the manifest says {manifest.dim}")
    if stored.n != info.rows:
        raise CompatError(f"{where}: holds {stored.n} rows; the manifest says {info.rows}")
    if verify:
        digest = shard_digest(path)
        if digest != info.sha256:
            raise CompatError(f"{where}: checksum mismatch (sha256 {digest[:12]}..., the manifest says "
                              f"{info.sha256[:12]}...); the shard changed or is incomplete")
    return path


def _open_shard(f: Path, manifest: Manifest, info: ShardInfo, *, verify: bool) -> _Shard:
    """Open one shard, checked against the manifest, with its features memory-mapped."""
    where = f"{f}: shard {info.path}"
    path = _check_shard(f, manifest, info, verify=verify)
    features = np.load(path / "features.npy", mmap_mode="r", allow_pickle=False)
    if verify:
        for start in range(0, info.rows, _SCAN_ROWS):
            check_finite(features[start : start + _SCAN_ROWS], where, start=start)
    labels = np.load(path / "labels.npy", allow_pickle=False)
    ids = np.load(path / "ids.npy", allow_pickle=False)
    return _Shard(info, path, features, labels, ids)


def open_stored_shards(path: str | os.PathLike[str]) -> StoredFeatures:
    """A sharded set for block reads (:func:`compat.stored.open_stored`): each shard's headers, rows,
    dimension and checksum are checked against the manifest; values and ids are checked as they are
    read (finite values per block; id uniqueness by the reader's own sort)."""
    f = _manifest_file(path)
    manifest = read_manifest(f)
    parts = []
    for info in manifest.shards:
        _check_shard(f, manifest, info, verify=True)
        parts.append(open_stored(f.parent / info.path))
    kinds = {p.ids_dtype.kind for p in parts}
    if len(kinds) > 1:
        raise CompatError(f"{f}: shards hold ids of different kinds ({', '.join(sorted(str(p.ids_dtype) for p in parts))})")
    ids_dtype = np.result_type(*[p.ids_dtype for p in parts])
    source = str(f.parent if f.name == MANIFEST_NAME else f)
    return StoredFeatures(source, manifest.rows, manifest.dim, ids_dtype, dict(manifest.meta), None, None, tuple(parts))


def load_manifest(
    path: str | os.PathLike[str],
    *,
    verify: bool | Iterable[int] = True,
    check_ids: bool = True,
    tmp_dir: str | os.PathLike[str] | None = None,
    memory_budget: int = DEFAULT_SORT_BUDGET,
) -> FeatureSet:
    """A sharded feature set as one :class:`FeatureSet` (features memory-mapped shard by shard).

    Args:
        path: ``manifest.json`` or the directory holding it.
        verify: check every shard's checksum and finite values (``True``), none (``False``), or only
            the shards at these indices (a rank of a distributed evaluation checks its own).
        check_ids: check that ids are unique across shards (external sort, ``memory_budget`` bytes).
        tmp_dir: where the id sort may spill sorted runs.

    Raises:
        CompatError: naming the shard: missing, unreadable, of another dimension or row count, a
            checksum mismatch, a NaN, ids of another kind, an id that another shard also holds.
    """
    f = _manifest_file(path)
    manifest = read_manifest(f)
    checked = set(range(len(manifest.shards))) if verify is True else set() if verify is False else set(verify)
    shards = [_open_shard(f, manifest, info, verify=i in checked) for i, info in enumerate(manifest.shards)]
    kinds = {s.ids.dtype.kind for s in shards}
    if len(kinds) > 1:
        other = next(s for s in shards if s.ids.dtype.kind != shards[0].ids.dtype.kind)
        raise CompatError(f"{f}: shard {other.info.path}: ids are {other.ids.dtype} but shard "
                          f"{shards[0].info.path} has {shards[0].ids.dtype}; ids must be of one kind")
    key_dtype = np.result_type(*[s.ids.dtype for s in shards])
    if check_ids:
        check_unique_ids(((s.info.path, s.ids) for s in shards), key_dtype, source=str(f), tmp_dir=tmp_dir,
                         memory_budget=memory_budget)
    features = ShardedArray([s.features for s in shards], checked=True)
    labels = np.concatenate([s.labels for s in shards])
    ids = np.concatenate([s.ids.astype(key_dtype, copy=False) for s in shards])
    source = str(f.parent if f.name == MANIFEST_NAME else f)
    return FeatureSet(features, labels, ids, dict(manifest.meta), source)


def save_sharded(fs: FeatureSet, path: str | os.PathLike[str], *, shard_rows: int) -> Path:
    """Write ``fs`` as a sharded set under directory ``path``: shards of ``shard_rows`` rows, then the manifest.

    Returns:
        The manifest file written.
    """
    if shard_rows < 1:
        raise CompatError(f"shard_rows: expected a positive number of rows, got {shard_rows}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, fs.n, shard_rows)):
        stop = min(fs.n, start + shard_rows)
        name = f"shard-{k:05d}"
        part = FeatureSet(np.asarray(fs.features[start:stop]), fs.labels[start:stop], fs.ids[start:stop], fs.meta,
                          f"{root / name}")
        save_features(part, root / name)
        shards.append(ShardInfo(name, stop - start, shard_digest(root / name)))
    return write_manifest(Manifest(fs.dim, tuple(shards), dict(fs.meta)), root)


def load_for_rank(path: str | os.PathLike[str], rank: int, world_size: int) -> FeatureSet:
    """A feature set as one of ``world_size`` ranks loads it for a distributed evaluation.

    A sharded set's checksums and values are checked only for the shards of this rank's part of
    the rows (the split :func:`compat.retrieval.sharding.local_part` makes; every shard is checked
    by some rank) and its ids only by rank 0; any other set is loaded by
    :func:`compat.features.load_features`. The caller makes the ranks agree on errors
    (:meth:`compat.distributed.DistributedContext.agree`).
    """
    if not is_manifest(path) or world_size <= 1:
        return load_features(path)
    manifest = read_manifest(path)
    offsets = manifest.offsets
    by_shard = len(manifest.shards) >= world_size
    parts = partition_rows(manifest.rows, world_size, offsets if by_shard else None)
    lo, hi = parts[rank], parts[rank + 1]
    mine = [i for i in range(len(manifest.shards)) if offsets[i] < hi and offsets[i + 1] > lo]
    return load_manifest(path, verify=mine, check_ids=rank == 0)
