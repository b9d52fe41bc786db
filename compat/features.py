"""Feature sets: the embeddings of one model version over one dataset split.

A feature set holds ``features`` (float32, N x D), ``labels`` (int64, N), ``ids`` (N, unique; integers
or strings), ``meta`` (a JSON object: model, version, dataset, split, normalized, checkpoint digest,
preprocessing) and, optionally, ``groups`` (int64, N: e.g. the camera of a re-identification image,
for the query-gallery protocol's ``same-group`` exclusion).

On disk it is either a ``.npz`` file (always read with ``allow_pickle=False``) or a directory of
``.npy`` files plus ``meta.json`` that is memory-mapped, for galleries larger than RAM::

    gallery/
      features.npy   float32 (N, D)
      labels.npy     int64   (N,)
      ids.npy        int64 or unicode (N,)
      groups.npy     int64 (N,), optional
      meta.json      {"model": ..., "version": ..., ...}

or a sharded set: a ``manifest.json`` over several such directories (:mod:`compat.manifest`), whose
features are memory-mapped shard by shard and seen as one array (:class:`compat.sharded.ShardedArray`).

Writes are atomic: everything is written under a temporary name next to the target and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compat._atomic import atomic_path, umask
from compat._files import input_file, is_input_dir
from compat._npz import read_npz_member
from compat.errors import CompatError
from compat.sharded import ShardedArray

__all__ = ["FeatureSet", "check_finite", "load_features", "read_npz_member", "save_features"]

_ARRAYS = ("features", "labels", "ids")
_OPTIONAL = "groups"
# Rows checked for NaN/inf per step, so a memory-mapped gallery is never read into RAM whole.
_SCAN_ROWS = 1 << 16


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Embeddings of one model version, validated on construction.

    Args:
        features: (N, D) float32; may be a read-only memory map, or a :class:`ShardedArray` over the
            shards of a manifest (whose loader has already checked values and ids shard by shard).
        labels: (N,) int64 class labels.
        ids: (N,) unique item ids (int64 or unicode strings); they match items across versions.
        meta: JSON-serialisable description (model, version, dataset, split, normalized, digest).
        source: where the set came from, used in error messages.
        groups: optional (N,) int64 group of each item (a camera, a shop); ``None`` when absent.
    """

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_arrays(
        cls,
        features: Any,
        labels: Any,
        ids: Any = None,
        *,
        meta: dict[str, Any] | None = None,
        source: str = "<memory>",
        groups: Any = None,
    ) -> FeatureSet:
        """Build from any array-likes: features cast to float32, labels and groups to int64, ids default
        0..N-1."""
        feats = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        labs = np.asarray(labels)
        if labs.dtype.kind in "iu":
            labs = labs.astype(np.int64, copy=False)
        if ids is None:
            ids = np.arange(len(feats), dtype=np.int64)
        ids = np.asarray(ids)
        if ids.dtype.kind in "iu":
            ids = ids.astype(np.int64, copy=False)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.dtype.kind in "iu":
                groups = groups.astype(np.int64, copy=False)
        return cls(feats, labs, ids, dict(meta or {}), source, groups)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FeatureSet(n={self.n}, dim={self.dim}, source={self.source!r})"


def _validate(fs: FeatureSet) -> None:
    src = fs.source
    f, labels, ids = fs.features, fs.labels, fs.ids
    if not isinstance(f, np.ndarray | ShardedArray) or f.ndim != 2:
        raise CompatError(f"{src}: field 'features' must be a 2-D array (N x D), got shape {np.shape(f)}")
    if f.dtype != np.float32:
        raise CompatError(f"{src}: field 'features' must be float32, got {f.dtype}")
    n, d = f.shape
    if n == 0:
        raise CompatError(f"{src}: the feature set is empty (0 rows); expected at least one item")
    if d == 0:
        raise CompatError(f"{src}: field 'features' has 0 columns; expected D >= 1")
    if not isinstance(labels, np.ndarray) or labels.shape != (n,):
        raise CompatError(f"{src}: field 'labels' must have shape ({n},), got {np.shape(labels)}")
    if labels.dtype != np.int64:
        raise CompatError(f"{src}: field 'labels' must be int64, got {labels.dtype}")
    if not isinstance(ids, np.ndarray) or ids.shape != (n,):
        raise CompatError(f"{src}: field 'ids' must have shape ({n},), got {np.shape(ids)}")
    if ids.dtype != np.int64 and ids.dtype.kind != "U":
        raise CompatError(f"{src}: field 'ids' must be int64 or unicode strings, got {ids.dtype}")
    groups = fs.groups
    if groups is not None:
        if not isinstance(groups, np.ndarray) or groups.shape != (n,):
            raise CompatError(f"{src}: field 'groups' must have shape ({n},), got {np.shape(groups)}")
        if groups.dtype != np.int64:
            raise CompatError(f"{src}: field 'groups' must be int64, got {groups.dtype}")
    if not (isinstance(f, ShardedArray) and f.checked):
        _check_values(f, ids, src)
    if not isinstance(fs.meta, dict):
        raise CompatError(f"{src}: field 'meta' must be a JSON object, got {type(fs.meta).__name__}")
    try:
        json.dumps(fs.meta)
    except (TypeError, ValueError) as exc:
        raise CompatError(f"{src}: field 'meta' is not JSON-serialisable ({exc})") from None


def _check_values(f: np.ndarray, ids: np.ndarray, src: str) -> None:
    """Unique ids and finite features (a sharded set's loader checks them shard by shard instead)."""
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        first = int(np.flatnonzero(counts > 1)[0])
        raise CompatError(f"{src}: field 'ids' must be unique; id {uniq[first].item()!r} appears {counts[first]} times")
    for start in range(0, len(f), _SCAN_ROWS):
        check_finite(f[start : start + _SCAN_ROWS], src, start=start)


def check_finite(block: np.ndarray, source: str, *, start: int = 0) -> None:
    """Raise naming the first row of ``block`` (rows ``start..``) with a NaN or infinite value."""
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite)[0])
        raise CompatError(f"{source}: field 'features' has a NaN or infinite value in row {row}; expected finite values")


def load_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Load and validate a feature set from a ``.npz`` file, a ``.npy`` directory (memory-mapped) or a
    sharded set's manifest (its directory or ``manifest.json``; :func:`compat.manifest.load_manifest`).

    Raises:
        CompatError: the path is missing or unreadable, holds a pickle, or fails validation.
    """
    p = Path(path)
    from compat.manifest import is_manifest, load_manifest

    if is_input_dir(p, "feature file or directory"):
        if is_manifest(p):
            return load_manifest(p)
        arrays, meta = _load_dir(p)
    else:
        f = input_file(p, "feature file or directory")
        if is_manifest(f):
            return load_manifest(f)
        arrays, meta = _load_npz(f)
    return FeatureSet(arrays["features"], arrays["labels"], arrays["ids"], meta, str(p), arrays.get(_OPTIONAL))


def _load_npz(p: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError:  # neither a zip archive nor an .npy header: numpy would have to unpickle it
        raise CompatError(f"{p}: not a .npz archive (unknown format; pickles are never loaded)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CompatError(f"{p}: not a readable .npz feature file ({exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise CompatError(f"{p}: expected a .npz archive (or a directory of .npy files), got a single array")
    try:
        with loaded as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise CompatError(f"{p}: missing array '{missing[0]}'; expected {', '.join(_ARRAYS)} (and meta)")
            arrays = {k: read_npz_member(z, k, p) for k in (*_ARRAYS, _OPTIONAL) if k in z.files}
            meta_raw = read_npz_member(z, "meta", p) if "meta" in z.files else None
    except CompatError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CompatError(f"{p}: not a readable .npz feature file ({exc})") from None
    meta = {} if meta_raw is None else _parse_meta(str(meta_raw.item()) if meta_raw.ndim == 0 else "", p)
    return arrays, meta


def _load_dir(p: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {}
    for key in _ARRAYS:
        f = p / f"{key}.npy"
        if not os.path.lexists(f):
            raise CompatError(f"{f}: missing; a feature directory needs {', '.join(k + '.npy' for k in _ARRAYS)}")
        input_file(f, "feature array")
        try:
            arrays[key] = np.load(f, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                raise CompatError(f"{f}: holds pickled Python objects; refusing to load it") from None
            raise CompatError(f"{f}: not a readable .npy array ({exc})") from None
        except OSError as exc:
            raise CompatError(f"{f}: not a readable .npy array ({exc})") from None
    groups = p / f"{_OPTIONAL}.npy"
    if groups.is_file():
        try:
            arrays[_OPTIONAL] = np.load(groups, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CompatError(f"{groups}: not a readable .npy array without pickled objects ({exc})") from None
    # labels and ids are small: read them fully so that sorting and indexing are cheap.
    arrays["labels"] = np.array(arrays["labels"])
    arrays["ids"] = np.array(arrays["ids"])
    meta_file = p / "meta.json"
    if not os.path.lexists(meta_file):
        return arrays, {}
    try:
        meta = _parse_meta(input_file(meta_file, "feature meta file").read_text(encoding="utf-8"), meta_file)
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatError(f"{meta_file}: not a readable UTF-8 JSON file ({exc})") from None
    return arrays, meta


def _parse_meta(text: str, where: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompatError(f"{where}: field 'meta' is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise CompatError(f"{where}: field 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta


def save_features(fs: FeatureSet, path: str | os.PathLike[str]) -> Path:
    """Write ``fs`` atomically: ``*.npz`` gives one file, any other path a ``.npy`` directory.

    Returns:
        The path written.
    """
    p = Path(path)
    if p.suffix == ".npz" and p.is_dir():
        raise CompatError(f"{p}: is a directory; cannot write a .npz feature file there")
    p.parent.mkdir(parents=True, exist_ok=True)
    meta_json = json.dumps(fs.meta, sort_keys=True)
    if p.suffix == ".npz":
        optional = {} if fs.groups is None else {_OPTIONAL: fs.groups}
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=fs.features, labels=fs.labels, ids=fs.ids, meta=np.array(meta_json), **optional)
        return p
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        for key in _ARRAYS:
            np.save(tmp_dir / f"{key}.npy", getattr(fs, key), allow_pickle=False)
        if fs.groups is not None:
            np.save(tmp_dir / f"{_OPTIONAL}.npy", fs.groups, allow_pickle=False)
        (tmp_dir / "meta.json").write_text(meta_json, encoding="utf-8")
        os.chmod(tmp_dir, 0o777 & ~umask())
        _replace_dir(tmp_dir, p)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return p


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst`` with one rename each way."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
