"""The adapter maps: backward ``B`` (new -> old space) and forward ``F`` (old -> the space of B(new)).

``B`` is square, ``d x d`` with ``d = min(d_new, d_old)`` (docs/methods.md: when the sizes differ the
larger feature is truncated to its first ``d`` coordinates). Three kinds:

- ``perp``: exactly orthogonal, ``Q = Q0 exp(A - A^T)`` through torch's orthogonal
  parametrisation with the matrix exponential; no bias, so cosine similarities among new features
  are kept exactly.
- ``lambda``: affine ``W x + b``, trained with the lambda-orthogonality regulariser.
- ``procrustes``: the closed-form orthogonal map that best sends new features onto old ones.

``F`` is affine or a small MLP from the old feature (all ``d_old`` coordinates) to ``d``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from compat.adapters.config import DEFAULT_ALPHA, BackwardKind, ForwardKind
from compat.adapters.losses import lambda_orthogonality
from compat.errors import CompatError

__all__ = [
    "BackwardKind",
    "ForwardKind",
    "LambdaAdapter",
    "LinearMap",
    "PerpAdapter",
    "build_forward",
    "procrustes",
]


def _start(dim: int, init: Tensor | np.ndarray | None) -> Tensor:
    if init is None:
        return torch.eye(dim)
    w = torch.as_tensor(np.asarray(init), dtype=torch.float32)
    if w.shape != (dim, dim):
        raise CompatError(f"adapter init: expected a ({dim}, {dim}) matrix, got {tuple(w.shape)}")
    return w


class PerpAdapter(nn.Module):
    """``B_perp(x) = Q x`` with ``Q`` orthogonal to float precision at every step.

    Args:
        dim: d.
        init: (d, d) orthogonal starting matrix ``Q0`` (default the identity). A matrix that is
            not orthogonal is orthogonalised first (QR).
    """

    def __init__(self, dim: int, *, init: Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        from torch.nn.utils.parametrizations import orthogonal

        linear = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            linear.weight.copy_(_start(dim, init))
        # use_trivialization (the default) keeps Q0 as a base and trains A around it.
        self.linear = orthogonal(linear, orthogonal_map="matrix_exp")

    @property
    def weight(self) -> Tensor:
        """(d, d) orthogonal ``Q``."""
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        """(N, d) -> (N, d)."""
        return self.linear(x)

    def regularizer(self) -> Tensor:
        return self.weight.new_zeros(())


class LambdaAdapter(nn.Module):
    """``B_lambda(x) = W x + b`` with the lambda-orthogonality regulariser on ``W``.

    Args:
        dim: d.
        lam: radius around the orthogonal matrices inside which ``W`` is free (0: soft
            orthogonality; ``math.inf``: unconstrained).
        alpha: steepness of the switch.
        init: (d, d) starting ``W`` (default the identity); ``b`` starts at 0.
    """

    def __init__(
        self, dim: int, *, lam: float, alpha: float = DEFAULT_ALPHA, init: Tensor | np.ndarray | None = None
    ) -> None:
        super().__init__()
        if not lam >= 0:
            raise CompatError(f"lambda: expected a radius >= 0 (or inf), got {lam!r}")
        self.lam, self.alpha = float(lam), float(alpha)
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(_start(dim, init))
            self.linear.bias.zero_()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor:
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        """(N, d) -> (N, d)."""
        return self.linear(x)

    def regularizer(self) -> Tensor:
        """``L_lambda`` of ``W``."""
        return lambda_orthogonality(self.weight, self.lam, alpha=self.alpha)


class LinearMap(nn.Module):
    """A fixed ``x -> W x + b`` (the Procrustes solution, or any backward map loaded from a file)."""

    def __init__(self, weight: Tensor | np.ndarray, bias: Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        # contiguous copies: the same matmul kernel (and rounding) whether built here or loaded from a file
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight), dtype=torch.float32).contiguous().clone())
        b = None if bias is None else torch.as_tensor(np.asarray(bias), dtype=torch.float32).contiguous().clone()
        self.register_buffer("bias", b)

    def forward(self, x: Tensor) -> Tensor:
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias

    def regularizer(self) -> Tensor:
        return self.weight.new_zeros(())


def build_forward(kind: ForwardKind | str, in_dim: int, out_dim: int, *, hidden: int = 256) -> nn.Sequential | None:
    """``F``: ``affine`` (one linear layer) or ``mlp`` (linear, ReLU, linear); ``none`` gives None."""
    kind = ForwardKind(kind)
    if kind is ForwardKind.NONE:
        return None
    if kind is ForwardKind.AFFINE:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    if hidden < 1:
        raise CompatError(f"forward hidden size: expected >= 1, got {hidden}")
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def procrustes(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The orthogonal ``W`` minimising ``sum_i ||W new_i - old_i||^2`` (closed form, via SVD).

    Args:
        new: (N, d) source features. old: (N, d) target features, row i matching row i.

    Returns:
        (d, d) float64 orthogonal matrix, to apply as ``W @ x``.
    """
    from scipy.linalg import orthogonal_procrustes

    if new.shape != old.shape or new.ndim != 2:
        raise CompatError(f"procrustes: expected two (N, d) arrays of one shape, got {new.shape} and {old.shape}")
    # scipy solves min ||A R - B|| for rows: A R = B  <=>  R^T a_i = b_i.
    r, _ = orthogonal_procrustes(np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64))
    return np.ascontiguousarray(r.T)
