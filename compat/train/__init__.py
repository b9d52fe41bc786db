"""Training: recipes, the epoch loop with exact resume, checkpoints, extraction and the version chain."""

from compat.train.chain import VersionPlan, load_model, plan_versions, save_model, train_chain
from compat.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from compat.train.config import Recipe, apply_overrides, load_recipe
from compat.train.extract import embed_dataset, extract_features
from compat.train.loop import EpochStats, plan_batches, train_version
from compat.train.step import backward_step

__all__ = [
    "EpochStats",
    "Recipe",
    "VersionPlan",
    "apply_overrides",
    "backward_step",
    "embed_dataset",
    "extract_features",
    "load_checkpoint",
    "load_model",
    "load_recipe",
    "plan_batches",
    "plan_versions",
    "save_checkpoint",
    "save_model",
    "seed_everything",
    "train_chain",
    "train_version",
]
