"""Classifier heads: the fixed d-Simplex (CoReS / d-Simplex-HOC) and a learnable linear head.

Both expose ``num_classes``, ``in_dim`` and ``weight``, the (C, D) classifier in label order, so
that a method can read the classifier of an old model (BCT needs ``W_old``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from compat.errors import CompatError
from compat.models.simplex import d_simplex

__all__ = ["LinearHead", "SimplexHead"]


def _positive_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CompatError(f"{field}: expected a positive integer, got {value!r}")
    return value


class SimplexHead(nn.Module):
    """Fixed d-Simplex classifier: the logit of label y is ``<h, v_{m(y)}>``, no bias, never trained.

    The K vertices (:func:`~compat.models.simplex.d_simplex`) and the label -> vertex map ``m`` are
    buffers, so both are saved in the state dict. K may exceed the number of classes
    (pre-allocation, e.g. K = 1024): later versions call :meth:`add_classes` and reuse the same
    simplex. Logits use the unnormalised feature (docs/methods.md, "d-Simplex fixed classifier").

    Args:
        num_vertices: K >= 2; the feature dimension is K - 1.
        num_classes: labels 0..C-1 to map; default K. Ignored when ``label_to_vertex`` is given
            (it must then agree with the map's length).
        label_to_vertex: explicit (C,) map of distinct vertex indices in [0, K). Default: the
            authors' assignment from the last vertex down, ``y -> K - 1 - y``.
    """

    vertices: Tensor
    label_to_vertex: Tensor

    def __init__(
        self,
        num_vertices: int,
        *,
        num_classes: int | None = None,
        label_to_vertex: Sequence[int] | Tensor | None = None,
    ) -> None:
        super().__init__()
        vertices = d_simplex(num_vertices)
        if label_to_vertex is None:
            count = num_vertices if num_classes is None else _positive_int(num_classes, "num_classes")
            if count > num_vertices:
                raise CompatError(f"num_classes: {count} classes do not fit on a simplex of {num_vertices} vertices")
            mapping = num_vertices - 1 - torch.arange(count, dtype=torch.long)
        else:
            mapping = self._check_map(label_to_vertex, num_vertices)
            if num_classes is not None and num_classes != mapping.numel():
                raise CompatError(
                    f"num_classes: {num_classes} does not match label_to_vertex, which maps {mapping.numel()} labels"
                )
        self.register_buffer("vertices", vertices)
        self.register_buffer("label_to_vertex", mapping)

    @staticmethod
    def _check_map(label_to_vertex: Sequence[int] | Tensor, num_vertices: int) -> Tensor:
        mapping = torch.as_tensor(label_to_vertex)
        if mapping.ndim != 1 or mapping.numel() == 0 or mapping.is_floating_point() or mapping.is_complex():
            raise CompatError("label_to_vertex: expected a non-empty 1-D sequence of integer vertex indices")
        mapping = mapping.to(torch.long).cpu()
        if int(mapping.min()) < 0 or int(mapping.max()) >= num_vertices:
            raise CompatError(f"label_to_vertex: vertex indices must lie in [0, {num_vertices})")
        if mapping.unique().numel() != mapping.numel():
            raise CompatError("label_to_vertex: two labels share a vertex; vertices must be distinct")
        return mapping.clone()

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def in_dim(self) -> int:
        """Feature dimension K - 1."""
        return self.vertices.shape[1]

    @property
    def num_classes(self) -> int:
        return self.label_to_vertex.numel()

    @property
    def num_free_vertices(self) -> int:
        """Vertices not yet assigned to a label."""
        return self.num_vertices - self.num_classes

    @property
    def weight(self) -> Tensor:
        """(C, K - 1) classifier in label order: row y is the vertex of label y."""
        return self.vertices.index_select(0, self.label_to_vertex)

    def forward(self, features: Tensor) -> Tensor:
        """Logits of every label.

        Args:
            features: (N, K - 1) unnormalised features.

        Returns:
            (N, C) logits ``features @ weight.T``; usable with cross-entropy on integer labels.
        """
        if features.shape[-1] != self.in_dim:
            raise CompatError(f"features: expected dimension {self.in_dim} (K - 1), got {features.shape[-1]}")
        return features @ self.weight.to(features.dtype).T

    def add_classes(self, num_new: int) -> Tensor:
        """Map ``num_new`` new labels (C..C+num_new-1) onto unused vertices.

        Free vertices are taken from the highest index down, so the default map continues as
        ``y -> K - 1 - y``. Existing labels keep their vertices.

        Args:
            num_new: number of labels to add, >= 1.

        Returns:
            (num_new,) long tensor: the vertex index of each new label.
        """
        num_new = _positive_int(num_new, "num_new")
        if num_new > self.num_free_vertices:
            raise CompatError(
                f"num_new: cannot add {num_new} classes, only {self.num_free_vertices} of {self.num_vertices} "
                "vertices are free; build the head with more vertices (pre-allocation)"
            )
        used = torch.zeros(self.num_vertices, dtype=torch.bool)
        used[self.label_to_vertex.cpu()] = True
        free = torch.arange(self.num_vertices - 1, -1, -1)
        free = free[~used[free]]
        new = free[:num_new].to(self.label_to_vertex.device)
        self.label_to_vertex = torch.cat([self.label_to_vertex, new])
        return new.clone()

    def extra_repr(self) -> str:
        return f"num_vertices={self.num_vertices}, num_classes={self.num_classes}"


def _uniform_rows(
    num_rows: int, num_cols: int, bound: float, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    # Drawn on the generator's device (CPU for the global RNG), then moved: reproducible on any device.
    device = generator.device if generator is not None else torch.device("cpu")
    rows = torch.empty(num_rows, num_cols, dtype=torch.float32, device=device)
    rows.uniform_(-bound, bound, generator=generator)
    return rows.to(device=like.device, dtype=like.dtype)


class LinearHead(nn.Module):
    """Learnable linear classifier ``logits = h W^T (+ b)`` that can grow to more classes.

    Rows are initialised like ``nn.Linear`` (uniform in ``+-1/sqrt(in_dim)``), drawn from
    ``generator`` when given, else from torch's global RNG.

    Args:
        in_dim: feature dimension D.
        num_classes: number of classes C.
        bias: learn a per-class bias.
        generator: random source for the initial rows.
        normalize: score the L2-normalised feature, ``norm(h) W^T`` (the BT^2 authors' models do).
    """

    def __init__(
        self, in_dim: int, num_classes: int, *, bias: bool = False, generator: torch.Generator | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        in_dim = _positive_int(in_dim, "in_dim")
        num_classes = _positive_int(num_classes, "num_classes")
        self.normalize = bool(normalize)
        template = torch.empty(0)
        self.weight = nn.Parameter(_uniform_rows(num_classes, in_dim, self._bound(in_dim), generator, template))
        if bias:
            bias_rows = _uniform_rows(1, num_classes, self._bound(in_dim), generator, template)
            self.bias = nn.Parameter(bias_rows.reshape(num_classes))
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def _bound(in_dim: int) -> float:
        return 1.0 / math.sqrt(in_dim)

    @property
    def in_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        """Args: features (N, D). Returns: (N, C) logits."""
        if self.normalize:
            features = F.normalize(features, dim=1)
        return F.linear(features, self.weight, self.bias)

    @torch.no_grad()
    def grow(self, num_classes: int, *, generator: torch.Generator | None = None) -> LinearHead:
        """Grow to ``num_classes`` classes in place, keeping the existing rows exactly.

        New rows (and bias entries) are initialised like the first ones, from ``generator`` or the
        global RNG. The parameters are replaced by new tensors: build the optimiser after growing.

        Args:
            num_classes: new number of classes, >= the current one (equal is a no-op).
            generator: random source for the new rows.

        Returns:
            ``self``, for chaining.
        """
        num_classes = _positive_int(num_classes, "num_classes")
        old = self.num_classes
        if num_classes < old:
            raise CompatError(f"num_classes: a head cannot shrink ({old} -> {num_classes})")
        if num_classes == old:
            return self
        bound = self._bound(self.in_dim)
        new_rows = _uniform_rows(num_classes - old, self.in_dim, bound, generator, self.weight)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), new_rows]), requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            new_bias = _uniform_rows(1, num_classes - old, bound, generator, self.bias).reshape(-1)
            self.bias = nn.Parameter(torch.cat([self.bias.detach(), new_bias]), requires_grad=self.bias.requires_grad)
        return self

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num_classes={self.num_classes}, bias={self.bias is not None}, "
                f"normalize={self.normalize}")
