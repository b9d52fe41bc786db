"""Models: backbones, the embedding model, and the d-Simplex and learnable classifier heads."""

from compat.models.backbones import MLP, CifarResNet, SmallCNN, build_backbone, list_backbones, register_backbone
from compat.models.basis import BasisTransform, orthogonal_linear
from compat.models.embedding import BasisTransformModel, EmbeddingModel, HeadKind, ModelOutput, build_model
from compat.models.heads import LinearHead, SimplexHead
from compat.models.simplex import d_simplex

__all__ = [
    "MLP",
    "BasisTransform",
    "BasisTransformModel",
    "CifarResNet",
    "EmbeddingModel",
    "HeadKind",
    "LinearHead",
    "ModelOutput",
    "SimplexHead",
    "SmallCNN",
    "build_backbone",
    "build_model",
    "d_simplex",
    "list_backbones",
    "orthogonal_linear",
    "register_backbone",
]
