"""Training: recipes, the version chain, the epoch loop with exact resume, and the adapter stage.

Model files and feature extraction, which inference uses too, are in :mod:`compat.models`.
"""

from compat.train.chain import ChainResult, TrainedVersion, train_chain
from compat.train.checkpoint import seed_everything
from compat.train.config import Recipe, apply_overrides, load_recipe
from compat.train.data import RecipeData, training_pool
from compat.train.evaluation import build_evaluator, evaluate_run
from compat.train.loop import EpochStats, plan_batches, train_version
from compat.train.plan import VersionPlan, model_spec, plan_versions
from compat.train.step import backward_step

__all__ = [
    "ChainResult",
    "EpochStats",
    "Recipe",
    "RecipeData",
    "TrainedVersion",
    "VersionPlan",
    "apply_overrides",
    "backward_step",
    "build_evaluator",
    "evaluate_run",
    "load_recipe",
    "model_spec",
    "plan_batches",
    "plan_versions",
    "seed_everything",
    "train_chain",
    "train_version",
    "training_pool",
]
