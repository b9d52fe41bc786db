"""Models: backbones, the embedding model, the d-Simplex and learnable heads, model files and extraction."""

from compat.models.backbones import MLP, CifarResNet, SmallCNN, build_backbone, list_backbones, register_backbone
from compat.models.basis import BasisTransform, orthogonal_linear
from compat.models.embedding import BasisTransformModel, EmbeddingModel, HeadKind, ModelOutput, build_model
from compat.models.extract import embed_dataset, extract_features, extract_model_file, file_digest
from compat.models.heads import LinearHead, SimplexHead
from compat.models.io import load_checkpoint, load_model, read_model_file, save_checkpoint, save_model
from compat.models.sharded_extract import extract_sharded, plan_shards
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
    "embed_dataset",
    "extract_features",
    "extract_model_file",
    "extract_sharded",
    "file_digest",
    "list_backbones",
    "load_checkpoint",
    "load_model",
    "orthogonal_linear",
    "plan_shards",
    "read_model_file",
    "register_backbone",
    "save_checkpoint",
    "save_model",
]
