"""Adapter files: tensors and JSON metadata in one ``.npz`` archive, read without pickle.

Layout (every array float32; ``meta`` a 0-d unicode array holding a JSON object)::

    backward.weight   (d, d)           B's matrix (for perp the orthogonal Q itself)
    backward.bias     (d,)             lambda kind only
    forward.<name>    F's state dict   e.g. forward.0.weight, forward.0.bias, forward.2.weight, ...
    meta              {"format": "compat-adapter", "format_version": 1, "kind": ..., "forward": ...,
                       "new_dim": ..., "old_dim": ..., "dim": ..., "new_version": ..., "old_version": ...,
                       "lam": ..., "alpha": ..., "hidden": ..., "training": {...}}

Loading uses ``numpy.load(allow_pickle=False)`` only: a pickle (or a torch checkpoint) is refused.
Writes are atomic.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compat._atomic import atomic_path
from compat._files import input_file
from compat._npz import read_npz_member
from compat.adapters.adapter import Adapter, AdapterInfo
from compat.adapters.modules import BackwardKind, ForwardKind, LinearMap, build_forward
from compat.choices import parse_choice
from compat.errors import CompatError

__all__ = ["FORMAT", "FORMAT_VERSION", "load_adapter", "save_adapter"]

FORMAT = "compat-adapter"
FORMAT_VERSION = 1
_META_KEYS = {"format", "format_version", "kind", "forward", "new_dim", "old_dim", "dim", "new_version",
              "old_version", "lam", "alpha", "hidden", "training"}


def save_adapter(adapter: Adapter, path: str | os.PathLike[str]) -> Path:
    """Write ``adapter`` to ``path`` (a ``.npz`` file), atomically.

    Returns:
        The path written.
    """
    p = Path(path)
    if p.suffix != ".npz":
        raise CompatError(f"{p}: an adapter file must end in .npz")
    arrays: dict[str, np.ndarray] = {"backward.weight": _np(adapter.backward.weight)}
    bias = getattr(adapter.backward, "bias", None)
    if bias is not None:
        arrays["backward.bias"] = _np(bias)
    if adapter.forward is not None:
        for name, value in adapter.forward.state_dict().items():
            arrays[f"forward.{name}"] = _np(value)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **adapter.info.to_json()}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(p) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return p


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def load_adapter(path: str | os.PathLike[str]) -> Adapter:
    """Read an adapter file written by :func:`save_adapter`.

    Raises:
        CompatError: missing or unreadable file, a pickle, unknown metadata, wrong shapes or
            non-finite weights.
    """
    p = input_file(path, "adapter file")
    arrays, meta = _read(p)
    info = _info(meta, p)
    unexpected = sorted(k for k in arrays if k not in ("backward.weight", "backward.bias")
                        and not k.startswith("forward."))
    if unexpected:
        raise CompatError(f"{p}: unexpected array(s) {', '.join(unexpected)}")
    d = info.dim
    weight = _array(arrays, "backward.weight", (d, d), p)
    bias = None
    if info.kind is BackwardKind.LAMBDA:
        bias = _array(arrays, "backward.bias", (d,), p)
    elif "backward.bias" in arrays:
        raise CompatError(f"{p}: array 'backward.bias' is not expected for a {info.kind.value} adapter")
    backward = LinearMap(weight, bias)
    with torch.device("meta"):  # the shapes F would have, without allocating them: the meta may claim any size
        shapes = build_forward(info.forward, info.old_dim, d, hidden=info.hidden or 1)
    stored = {k.removeprefix("forward."): v for k, v in arrays.items() if k.startswith("forward.")}
    if shapes is None:
        if stored:
            raise CompatError(f"{p}: forward arrays are present but the forward kind is 'none'")
        return Adapter(info, backward, None)
    expected = {k: tuple(v.shape) for k, v in shapes.state_dict().items()}
    if set(stored) != set(expected):
        raise CompatError(f"{p}: forward arrays {sorted(stored)} do not match a {info.forward.value} "
                          f"adapter ({sorted(expected)})")
    state = {k: torch.from_numpy(_array(arrays, f"forward.{k}", shape, p)) for k, shape in expected.items()}
    forward = build_forward(info.forward, info.old_dim, d, hidden=info.hidden or 1)  # as large as the file's arrays
    forward.load_state_dict(state)
    forward.requires_grad_(False)
    return Adapter(info, backward, forward)


def _read(p: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        loaded = np.load(p, allow_pickle=False)
    except ValueError:
        raise CompatError(f"{p}: not an adapter file (not a .npz archive; pickles are never loaded)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CompatError(f"{p}: not a readable adapter file ({exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise CompatError(f"{p}: not an adapter file (a single array, expected a .npz archive)")
    try:
        with loaded as z:
            if "meta" not in z.files:
                raise CompatError(f"{p}: not an adapter file (no 'meta' array; pickles are never loaded)")
            arrays = {k: read_npz_member(z, k, p) for k in z.files}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CompatError(f"{p}: not a readable adapter file ({exc})") from None
    raw = arrays.pop("meta")
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise CompatError(f"{p}: array 'meta' must be a JSON string")
    try:
        meta = json.loads(str(raw.item()))
    except json.JSONDecodeError as exc:
        raise CompatError(f"{p}: array 'meta' is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise CompatError(f"{p}: array 'meta' must hold a JSON object")
    return arrays, meta


def _info(meta: dict[str, Any], p: Path) -> AdapterInfo:
    if meta.get("format") != FORMAT:
        raise CompatError(f"{p}: not an adapter file (meta 'format' is {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CompatError(f"{p}: meta 'format_version' {meta.get('format_version')!r} is not supported "
                          f"(expected {FORMAT_VERSION})")
    unknown = sorted(set(meta) - _META_KEYS)
    if unknown:
        raise CompatError(f"{p}: meta has unknown key(s) {', '.join(unknown)}")
    kind = parse_choice(BackwardKind, meta.get("kind"), f"{p}: meta 'kind'")
    forward = parse_choice(ForwardKind, meta.get("forward"), f"{p}: meta 'forward'")
    dims = {k: meta.get(k) for k in ("new_dim", "old_dim", "dim")}
    if not all(_positive_int(v) for v in dims.values()):
        raise CompatError(f"{p}: meta new_dim, old_dim and dim must be positive integers, got {dims}")
    if dims["dim"] != min(dims["new_dim"], dims["old_dim"]):
        raise CompatError(f"{p}: meta 'dim' must be min(new_dim, old_dim), got {dims}")
    lam = meta.get("lam")
    if lam == "inf":
        lam = math.inf
    if lam is not None and (not isinstance(lam, int | float) or isinstance(lam, bool) or lam < 0):
        raise CompatError(f"{p}: meta 'lam' must be a number >= 0, 'inf' or null, got {lam!r}")
    hidden = meta.get("hidden")
    needed = forward is ForwardKind.MLP
    if (hidden is None and needed) or (hidden is not None and not _positive_int(hidden)):
        raise CompatError(f"{p}: meta 'hidden' must be a positive integer (required for an mlp forward adapter), "
                          f"got {hidden!r}")
    training = meta.get("training") or {}
    if not isinstance(training, dict):
        raise CompatError(f"{p}: meta 'training' must be a JSON object")
    names = {k: meta.get(k) for k in ("new_version", "old_version")}
    if not all(v is None or isinstance(v, str) for v in names.values()):
        raise CompatError(f"{p}: meta new_version / old_version must be strings or null")
    alpha = meta.get("alpha")
    if alpha is not None and (not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0
                              or math.isinf(alpha)):
        raise CompatError(f"{p}: meta 'alpha' must be a positive number or null, got {alpha!r}")
    return AdapterInfo(kind, forward, dims["new_dim"], dims["old_dim"], names["new_version"], names["old_version"],
                       None if lam is None else float(lam), None if alpha is None else float(alpha), hidden, training)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _array(arrays: dict[str, np.ndarray], key: str, shape: tuple[int, ...], p: Path) -> np.ndarray:
    if key not in arrays:
        raise CompatError(f"{p}: missing array '{key}'")
    a = arrays[key]
    if a.dtype != np.float32:
        raise CompatError(f"{p}: array '{key}' must be float32, got {a.dtype}")
    if a.shape != shape:
        raise CompatError(f"{p}: array '{key}' must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise CompatError(f"{p}: array '{key}' has NaN or infinite values")
    return a
