"""The d-Simplex: K unit vectors in K - 1 dimensions with equal pairwise angles (CoReS, docs/methods.md)."""

from __future__ import annotations

import math

import torch

from compat.errors import CompatError

__all__ = ["d_simplex"]


def d_simplex(num_vertices: int) -> torch.Tensor:
    """Vertices of the regular simplex used as a fixed classifier.

    Built as docs/methods.md states: rows 1..K-1 are the identity ``I_{K-1}``, row K is filled with
    ``(1 - sqrt(K)) / (K - 1)``; the column mean is subtracted and each row L2-normalised. The
    arithmetic is done in float64 and the result cast to float32, so every build is identical.

    Args:
        num_vertices: K >= 2, the number of vertices (classes that can ever be represented).

    Returns:
        (K, K - 1) float32 tensor of unit rows whose pairwise cosine is ``-1 / (K - 1)``.
    """
    if isinstance(num_vertices, bool) or not isinstance(num_vertices, int) or num_vertices < 2:
        raise CompatError(f"num_vertices: expected an integer >= 2, got {num_vertices!r}")
    k = num_vertices
    vertices = torch.zeros(k, k - 1, dtype=torch.float64)
    vertices[:-1] = torch.eye(k - 1, dtype=torch.float64)
    vertices[-1] = (1.0 - math.sqrt(k)) / (k - 1)
    vertices -= vertices.mean(dim=0, keepdim=True)
    vertices /= vertices.norm(dim=1, keepdim=True)
    return vertices.to(torch.float32)
