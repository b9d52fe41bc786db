"""What each version of a chain trains on, and the model it starts from.

:func:`plan_versions` cuts the training split by the recipe's upgrade protocol; :func:`model_spec`
gives the arguments of :func:`compat.models.build_model` for a version (the recipe's model with
the version's overrides); :func:`initial_model` builds it from scratch, from the previous version
or from an external checkpoint (model replacement).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compat.errors import CompatError
from compat.models import EmbeddingModel, build_model
from compat.models.io import load_checkpoint
from compat.train.config import Recipe

__all__ = ["VersionPlan", "check_init_checkpoints", "initial_model", "model_spec", "plan_versions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionPlan:
    """What version ``index`` trains on: dataset indices of its new data, and the classes seen so far."""

    index: int
    new_indices: np.ndarray
    seen_classes: list[int]
    new_classes: list[int]

    @property
    def name(self) -> str:
        return f"v{self.index}"


def plan_versions(recipe: Recipe, labels: np.ndarray, pool: np.ndarray | None = None) -> list[VersionPlan]:
    """The data of every version under the recipe's upgrade protocol.

    ``growth``: version t trains on the nested fraction ``fractions[t]`` of the training split.
    ``classes``: version t brings the classes of task t. With rehearsal (CL2R) a version trains on
    what is new to it (the new slice or task) plus the memory; without, on everything seen so far.
    ``pool``: the training indices the versions may use (all of them when None); ``data.eval_split:
    val`` keeps the held-out images out of it (:class:`compat.train.data.RecipeData`).
    """
    plans = _plan(recipe, labels, pool)
    if len(recipe.versions) > len(plans):
        raise CompatError(f"versions: {len(recipe.versions)} entries, but the upgrade protocol plans {len(plans)} "
                          "versions (data.fractions / data.num_versions)")
    return plans


def _plan(recipe: Recipe, labels: np.ndarray, pool: np.ndarray | None) -> list[VersionPlan]:
    from compat.data import class_incremental, fraction_subsets

    if pool is not None:
        return [VersionPlan(p.index, pool[p.new_indices], p.seen_classes, p.new_classes)
                for p in _plan(recipe, labels[pool], None)]
    d = recipe.data
    rehearsal = recipe.method.rehearsal_per_class > 0
    if d.protocol == "growth":
        subsets = fraction_subsets(labels, d.fractions, seed=recipe.seed)
        classes = sorted(int(c) for c in np.unique(labels))
        plans = []
        for t, subset in enumerate(subsets):
            # With rehearsal a version trains on the data that is new to it (plus the memory).
            new = np.setdiff1d(subset, subsets[t - 1]) if rehearsal and t > 0 else subset
            plans.append(VersionPlan(t, new, classes, classes if t == 0 else []))
        return plans
    tasks = class_incremental(labels, initial=d.initial, increment=d.increment)
    if d.num_versions is not None:
        tasks = tasks[: d.num_versions]
    plans, seen = [], []
    for t, task in enumerate(tasks):
        new = sorted(int(c) for c in np.unique(labels[task]))
        seen = seen + new
        indices = task if rehearsal else np.flatnonzero(np.isin(labels, seen))
        plans.append(VersionPlan(t, np.asarray(indices, dtype=np.int64), list(seen), new))
    return plans


def model_spec(recipe: Recipe, version: int, num_classes: int, head: str, *, basis: bool = True) -> dict[str, Any]:
    """``build_model`` arguments of a version: the recipe's model with the version's overrides
    (``basis=False`` drops BT^2's extra coordinates, for the version's independent teacher)."""
    m = recipe.model
    override = recipe.versions[version] if version < len(recipe.versions) else None

    def pick(name: str, default: Any) -> Any:
        value = getattr(override, name) if override is not None else None
        return default if value is None else value

    num_vertices = m.num_vertices if head == "simplex" else None
    feature_dim = pick("feature_dim", m.feature_dim)
    if head == "simplex" and feature_dim is None:
        feature_dim = (num_vertices or num_classes) - 1
    spec = {"backbone": pick("backbone", m.backbone), "feature_dim": feature_dim, "head": head,
            "num_classes": num_classes, "num_vertices": num_vertices,
            "backbone_kwargs": dict(pick("backbone_kwargs", m.backbone_kwargs))}
    to_add = pick("to_add_dim", None)
    if basis and to_add is not None:
        spec.update(to_add_dim=to_add, orthogonal_map=m.orthogonal_map)
    return spec


def initial_model(recipe: Recipe, index: int, spec: dict[str, Any], previous: EmbeddingModel | None,
                  previous_spec: dict[str, Any] | None, init: str | None, device: str) -> EmbeddingModel:
    """From an external checkpoint (model replacement), the previous version (``init: previous``
    and the same architecture), or from scratch; seeded by the recipe's seed and the version."""
    torch.manual_seed(recipe.seed * 1000 + index)
    model = build_model(**spec)
    override = recipe.versions[index] if index < len(recipe.versions) else None
    if override is not None and override.init_checkpoint:
        missing = _load_init(model, override.init_checkpoint, index)
        logger.info("v%d starts from %s (missing: %s)", index, override.init_checkpoint, missing)
        return model.to(device)
    if (recipe.method.init or init) == "previous" and previous is not None and spec == previous_spec:
        model.load_state_dict(previous.state_dict())
    return model.to(device)


def check_init_checkpoints(recipe: Recipe, num_classes: int, head: str) -> None:
    """Every ``versions[t].init_checkpoint`` is a readable checkpoint whose weights fit version t's
    model, checked before the first version trains (not after the versions before it)."""
    for index, override in enumerate(recipe.versions):
        if override.init_checkpoint:
            _load_init(build_model(**model_spec(recipe, index, num_classes, head)), override.init_checkpoint, index)


def _load_init(model: EmbeddingModel, path: str, index: int) -> list[str]:
    """Load the weights of checkpoint ``path`` (a state dict, or a file with one under ``model``) into
    ``model``, where they fit by name; returns the names of the model's weights it does not hold."""
    where = f"versions.{index}.init_checkpoint {path}"
    try:
        state = load_checkpoint(path)
    except CompatError as exc:
        raise CompatError(f"versions.{index}.init_checkpoint: {exc}") from None
    weights = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CompatError(f"{where}: expected a state dict (parameter names to tensors), or a file with one under 'model'")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except (RuntimeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompatError(f"{where}: the weights do not fit version {index}'s model ({first})") from None
    if unexpected:
        raise CompatError(f"{where}: unexpected weights {unexpected[:3]} for version {index}'s model")
    return list(missing)
