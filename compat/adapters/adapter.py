"""A trained adapter pair of one version upgrade, frozen and ready to map features.

Adapters work on L2-normalised features (retrieval is cosine by default): ``B`` takes the first
``d`` coordinates of a new feature, normalised, to the old space; the old gallery is compared in
that space as its first ``d`` coordinates, normalised; ``F`` takes a whole old feature,
normalised, to the space of ``B(new)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compat.adapters.modules import BackwardKind, ForwardKind
from compat.errors import CompatError
from compat.retrieval.normalize import unit_rows

__all__ = ["Adapter", "AdapterInfo", "normalize_rows"]

# Rows mapped per step, so a large gallery never builds one huge intermediate tensor.
_CHUNK = 1 << 16


def normalize_rows(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """The first ``dim`` columns of ``x`` (all when None), each row scaled to unit L2 norm (zero rows stay 0),
    exactly as the evaluator normalises for cosine (however large or small the values)."""
    return unit_rows(np.asarray(x[:, :dim] if dim is not None else x, dtype=np.float32))


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter maps between, stored as JSON next to its tensors.

    Attributes:
        kind: backward kind (``perp``, ``lambda``, ``procrustes``).
        forward: forward kind (``none``, ``affine``, ``mlp``).
        new_dim, old_dim: feature sizes of the new and old versions.
        dim: d = min(new_dim, old_dim), the size of B's input and output and F's output.
        new_version, old_version: version names the adapter maps between.
        lam: lambda radius (``lambda`` kind; None otherwise, ``inf`` as the string "inf" in JSON).
        alpha: steepness of the lambda switch (``lambda`` kind).
        hidden: hidden width of an MLP forward adapter.
        training: the training settings and final losses, for the record.
    """

    kind: BackwardKind
    forward: ForwardKind
    new_dim: int
    old_dim: int
    new_version: str | None = None
    old_version: str | None = None
    lam: float | None = None
    alpha: float | None = None
    hidden: int | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return min(self.new_dim, self.old_dim)

    @property
    def label(self) -> str:
        """``perp``, ``lambda=12``, ``procrustes``."""
        if self.kind is BackwardKind.LAMBDA:
            return f"lambda={_lam_text(self.lam)}"
        return self.kind.value

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(kind=self.kind.value, forward=self.forward.value, dim=self.dim, lam=_lam_json(self.lam))
        return out


def _lam_text(lam: float | None) -> str:
    if lam is None:
        return "n/a"
    return "inf" if np.isinf(lam) else f"{lam:g}"


def _lam_json(lam: float | None) -> float | str | None:
    if lam is None:
        return None
    return "inf" if np.isinf(lam) else float(lam)


@dataclass(frozen=True, eq=False)
class Adapter:
    """Frozen backward (and optional forward) maps of one upgrade ``new_version -> old_version``.

    Args:
        info: kinds, sizes and versions.
        backward: module (N, d) -> (N, d).
        forward: module (N, old_dim) -> (N, d), or None.
    """

    info: AdapterInfo
    backward: nn.Module
    forward: nn.Module | None = None

    def __post_init__(self) -> None:
        self.backward.eval()
        if self.forward is not None:
            self.forward.eval()
        if (self.forward is None) != (self.info.forward is ForwardKind.NONE):
            raise CompatError("adapter: the forward kind and the forward module disagree")

    @property
    def has_forward(self) -> bool:
        return self.forward is not None

    def check_dims(self, new_dim: int, old_dim: int, *, where: str = "adapter") -> None:
        """Raise when the adapter was not trained for features of these sizes."""
        if (new_dim, old_dim) != (self.info.new_dim, self.info.old_dim):
            raise CompatError(
                f"{where}: the adapter maps {self.info.new_dim}-d new features to a {self.info.old_dim}-d old "
                f"space, but the versions have {new_dim}-d and {old_dim}-d features"
            )

    def to_old(self, new: np.ndarray) -> np.ndarray:
        """``B(new)``: (N, new_dim) new features -> (N, d) in the old space."""
        self._check_width(new, self.info.new_dim, "new")
        return _apply(self.backward, normalize_rows, new, self.info.dim)

    def old_space(self, old: np.ndarray) -> np.ndarray:
        """The old features as ``B(new)`` is compared with them: (N, old_dim) -> (N, d)."""
        self._check_width(old, self.info.old_dim, "old")
        return normalize_rows(old, self.info.dim)

    def upgrade(self, old: np.ndarray) -> np.ndarray:
        """``F(old)``: (N, old_dim) stored old features -> (N, d) in the space of ``B(new)``."""
        if self.forward is None:
            raise CompatError("adapter: it has no forward adapter F (trained with --forward none)")
        self._check_width(old, self.info.old_dim, "old")
        return _apply(self.forward, normalize_rows, old, None)

    def _check_width(self, x: np.ndarray, want: int, which: str) -> None:
        if x.ndim != 2 or x.shape[1] != want:
            raise CompatError(f"adapter: expected (N, {want}) {which} features, got {tuple(x.shape)}")


@torch.no_grad()
def _apply(module: nn.Module, prepare, x: np.ndarray, dim: int | None) -> np.ndarray:
    param = next(iter(module.parameters()), None)
    if param is None:
        param = next(iter(module.buffers()))
    out = []
    for start in range(0, len(x), _CHUNK):
        block = torch.from_numpy(prepare(x[start : start + _CHUNK], dim)).to(param.device)
        out.append(module(block).float().cpu().numpy())
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
