"""The embedding model: backbone -> projection -> head, and ``build_model`` that assembles one."""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

from torch import Tensor, nn

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.models.backbones import build_backbone
from compat.models.basis import DEFAULT_BASIS_SCALE, BasisTransform
from compat.models.heads import LinearHead, SimplexHead

__all__ = ["BasisTransformModel", "EmbeddingModel", "HeadKind", "ModelOutput", "build_model"]


class HeadKind(str, Enum):
    SIMPLEX = "simplex"
    LINEAR = "linear"


class ModelOutput(NamedTuple):
    """What :meth:`EmbeddingModel.forward` returns (a NamedTuple: immutable, and DDP, AMP and
    ``torch.compile`` traverse it like a tuple).

    Attributes:
        features: (N, D) unnormalised retrieval features.
        logits: (N, C) classifier logits.
        head_features: what the head scored when it is not the retrieval feature (BT^2's ``f``),
            else None.
    """

    features: Tensor
    logits: Tensor
    head_features: Tensor | None = None


class EmbeddingModel(nn.Module):
    """Backbone, a bias-free linear projection to the feature space, and a classifier head.

    Args:
        backbone: module mapping images to (N, backbone.out_dim); must expose ``out_dim``.
        head: classifier over (N, D) features exposing ``in_dim`` and ``num_classes``
            (:class:`SimplexHead` or :class:`LinearHead`).
        feature_dim: D; ``None`` keeps the backbone output (identity projection).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, feature_dim: int | None = None) -> None:
        super().__init__()
        out_dim = getattr(backbone, "out_dim", None)
        if not isinstance(out_dim, int):
            raise CompatError("backbone: expected a module with an integer out_dim")
        if feature_dim is None:
            self.projection: nn.Module = nn.Identity()
            self._feature_dim = out_dim
        else:
            if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
                raise CompatError(f"feature_dim: expected a positive integer or null, got {feature_dim!r}")
            self.projection = nn.Linear(out_dim, feature_dim, bias=False)
            self._feature_dim = feature_dim
        head_dim = getattr(head, "in_dim", None)
        if head_dim != self._feature_dim:
            raise CompatError(f"head: expects {head_dim}-d features but the model produces {self._feature_dim}-d ones")
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        """D, the dimension of the retrieval feature."""
        return self._feature_dim

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def embed(self, images: Tensor) -> Tensor:
        """Retrieval feature.

        Args:
            images: (N, C, H, W).

        Returns:
            (N, D) unnormalised features.
        """
        return self.projection(self.backbone(images))

    def forward(self, images: Tensor) -> ModelOutput:
        """Args: images (N, C, H, W). Returns: ModelOutput with features (N, D) and logits (N, num_classes)."""
        features = self.embed(images)
        return ModelOutput(features=features, logits=self.head(features))


class BasisTransformModel(nn.Module):
    """BT^2's model: backbone -> :class:`~compat.models.basis.BasisTransform` -> linear head on ``f``.

    Same interface as :class:`EmbeddingModel`; the retrieval feature has D + A coordinates, of
    which the first D are the old-compatible part.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, basis: BasisTransform) -> None:
        super().__init__()
        if getattr(head, "in_dim", None) != basis.feature_dim:
            raise CompatError(f"head: expects {head.in_dim}-d features but f has {basis.feature_dim}")
        self.backbone, self.basis, self.head = backbone, basis, head

    @property
    def feature_dim(self) -> int:
        return self.basis.out_dim

    @property
    def compatible_dim(self) -> int:
        """D: the leading coordinates of the feature that are compatible with the old model."""
        return self.basis.feature_dim

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def embed(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, D + A) unnormalised retrieval features."""
        return self.basis(self.backbone(images))[0]

    def forward(self, images: Tensor) -> ModelOutput:
        features, f = self.basis(self.backbone(images))
        return ModelOutput(features=features, logits=self.head(f), head_features=f)


def build_model(
    backbone: str,
    *,
    feature_dim: int | None,
    head: HeadKind | str,
    num_classes: int,
    num_vertices: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    to_add_dim: int | None = None,
    orthogonal_map: str = "matrix_exp",
    basis_scale: float = DEFAULT_BASIS_SCALE,
    normalized_head: bool = False,
) -> EmbeddingModel | BasisTransformModel:
    """Assemble an :class:`EmbeddingModel` from a registered backbone and a head.

    Args:
        backbone: registered backbone name (see :func:`~compat.models.backbones.list_backbones`).
        feature_dim: D; ``None`` keeps the backbone output. For the simplex head it must be
            ``num_vertices - 1`` (docs/methods.md: a learnable projection maps to d = K - 1).
        head: ``"simplex"`` (fixed d-Simplex, labels y -> K-1-y) or ``"linear"`` (learnable).
        num_classes: C, the classes the head scores now.
        num_vertices: K for the simplex head (default C; give more to pre-allocate vertices for
            future classes). Not accepted for the linear head.
        backbone_kwargs: keyword options of the backbone builder.
        to_add_dim: BT^2: A extra coordinates through a basis transformation
            (:class:`BasisTransformModel`; linear head, ``feature_dim`` = D required).
        orthogonal_map: BT^2's orthogonal parametrisation: ``matrix_exp``, ``cayley`` or ``householder``.
        basis_scale: BT^2's C, the weight of the new-feature part (2, the authors' published configs).
        normalized_head: the linear head scores the L2-normalised feature (BT^2: ``f``); not for
            the simplex head, whose logits use the unnormalised feature.

    Returns:
        The model, randomly initialised (torch's global RNG).
    """
    kind = parse_choice(HeadKind, head, "head")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise CompatError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if normalized_head and kind is not HeadKind.LINEAR:
        raise CompatError("normalized_head: only the linear head can score normalised features")
    net = build_backbone(backbone, **(backbone_kwargs or {}))
    if to_add_dim is not None:
        if kind is not HeadKind.LINEAR or feature_dim is None:
            raise CompatError("to_add_dim: the basis transformation needs the linear head and a feature_dim")
        basis = BasisTransform(net.out_dim, feature_dim, to_add_dim, orthogonal_map=orthogonal_map, scale=basis_scale)
        return BasisTransformModel(net, LinearHead(feature_dim, num_classes, normalize=normalized_head), basis)
    if kind is HeadKind.SIMPLEX:
        vertices = num_classes if num_vertices is None else num_vertices
        if isinstance(vertices, bool) or not isinstance(vertices, int) or vertices < max(num_classes, 2):
            raise CompatError(f"num_vertices: expected an integer >= max(num_classes, 2), got {vertices!r}")
        if feature_dim != vertices - 1:
            raise CompatError(
                f"feature_dim: the simplex head with {vertices} vertices needs feature_dim = {vertices - 1}, "
                f"got {feature_dim!r}"
            )
        classifier: nn.Module = SimplexHead(vertices, num_classes=num_classes)
    else:
        if num_vertices is not None:
            raise CompatError("num_vertices: only the simplex head has vertices; leave it null for the linear head")
        in_dim = net.out_dim if feature_dim is None else feature_dim
        classifier = LinearHead(in_dim, num_classes, normalize=normalized_head)
    return EmbeddingModel(net, classifier, feature_dim=feature_dim)
