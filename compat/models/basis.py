"""BT^2's basis transformation: a feature with the old dimension plus extra coordinates.

The backbone output is projected twice: ``f`` (D coordinates, classified and matched to an
independently trained teacher) and ``e`` (A extra coordinates). Both are normalised, then

    u       = [e, Q_new (C * f)]                      (D + A coordinates)
    feature = [Q_compatible u[:D], u[D:]]             (D + A coordinates)

with Q_new and Q_compatible exactly orthonormal (torch's orthogonal parametrisation) and C the scale
of the new-feature part (2 in the authors' published configs). The first D coordinates of the
feature are trained to be compatible with the old model; the whole feature is an orthonormal
transformation of ``[e, C * f]``, so nothing that ``f`` knows is lost (docs/methods.md, "BT^2").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from compat.errors import CompatError

__all__ = ["DEFAULT_BASIS_SCALE", "ORTHOGONAL_MAPS", "BasisTransform", "orthogonal_linear"]

ORTHOGONAL_MAPS = ("matrix_exp", "cayley", "householder")
DEFAULT_BASIS_SCALE = 2.0  # C of the BT^2 authors' published configs


def orthogonal_linear(dim: int, *, orthogonal_map: str = "matrix_exp") -> nn.Linear:
    """A bias-free ``dim x dim`` linear map whose weight stays exactly orthonormal while it trains."""
    if orthogonal_map not in ORTHOGONAL_MAPS:
        raise CompatError(f"orthogonal_map: unknown value {orthogonal_map!r}; expected one of {', '.join(ORTHOGONAL_MAPS)}")
    return orthogonal(nn.Linear(dim, dim, bias=False), orthogonal_map=orthogonal_map)


class BasisTransform(nn.Module):
    """Backbone output (N, in_dim) -> BT^2 feature (N, D + A) and the classified feature f (N, D).

    Args:
        in_dim: backbone output size.
        feature_dim: D, the old model's feature size (the compatible prefix).
        to_add_dim: A, extra coordinates (1 <= A <= D).
        orthogonal_map: ``matrix_exp`` (default), ``cayley`` or ``householder``.
        scale: C, the weight of ``f`` against ``e`` in the transformed feature (2 in the authors'
            published configs, 3 their code's default).
    """

    def __init__(self, in_dim: int, feature_dim: int, to_add_dim: int, *, orthogonal_map: str = "matrix_exp",
                 scale: float = DEFAULT_BASIS_SCALE) -> None:
        super().__init__()
        if isinstance(to_add_dim, bool) or not isinstance(to_add_dim, int) or not 1 <= to_add_dim <= feature_dim:
            raise CompatError(f"to_add_dim: expected an integer in [1, feature_dim = {feature_dim}], got {to_add_dim!r}")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < float("inf"):
            raise CompatError(f"basis_scale: expected a positive number, got {scale!r}")
        self.feature_dim, self.to_add_dim, self.scale = feature_dim, to_add_dim, float(scale)
        self.new = nn.Linear(in_dim, feature_dim, bias=False)
        self.extra = nn.Linear(in_dim, to_add_dim, bias=False)
        self.rotate_new = orthogonal_linear(feature_dim, orthogonal_map=orthogonal_map)
        self.rotate_compatible = orthogonal_linear(feature_dim, orthogonal_map=orthogonal_map)

    @property
    def out_dim(self) -> int:
        return self.feature_dim + self.to_add_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (feature (N, D + A), f (N, D))."""
        f = self.new(x)
        u = torch.cat([F.normalize(self.extra(x), dim=1), self.rotate_new(self.scale * F.normalize(f, dim=1))], dim=1)
        d = self.feature_dim
        return torch.cat([self.rotate_compatible(u[:, :d]), u[:, d:]], dim=1), f

    def orthogonal_maps(self) -> list[Tensor]:
        """The current orthonormal matrices (for checks)."""
        return [self.rotate_new.weight, self.rotate_compatible.weight]
