"""Recipes: one YAML file = one complete experiment, validated into frozen config objects.

Unknown keys and wrong types are errors that name the key: values are never coerced (``epochs: "3"``,
``seed: true`` and ``epochs: 2.0`` are errors; an integer is accepted where a number is), and sizes,
counts and rates are checked against their range. ``null`` means "the default". The resolved recipe (a plain dict, :meth:`Recipe.resolved`) is what is logged and saved in checkpoints.
``--set train.epochs=2`` style overrides are applied to the YAML before validation.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compat.adapters.config import DEFAULT_BACKFILL_POINTS
from compat.compatibility.cell import DimPolicy
from compat.configfile import read_yaml_mapping, validate_model
from compat.errors import CompatError
from compat.retrieval.evaluator import DEFAULT_METRICS, Protocol
from compat.retrieval.index import IndexSpec
from compat.retrieval.knn import DEFAULT_MEMORY_BUDGET, Backend, Similarity

__all__ = [
    "AdapterSpec",
    "AdaptersConfig",
    "DataConfig",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "Recipe",
    "TrainConfig",
    "VersionConfig",
    "apply_overrides",
    "load_recipe",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataConfig(_Strict):
    """Which data each version sees.

    ``growth``: version t trains on a seeded, class-stratified fraction ``fractions[t]`` of the
    training split (nested: each slice contains the previous one). ``classes``: class-incremental;
    version t sees classes ``0 .. initial + t * increment - 1``.

    ``eval_split``: where the chain is evaluated. ``val`` holds out a seeded, class-stratified
    ``val_fraction`` of the training split (:func:`compat.data.hold_out`): the versions train on
    the rest (both protocols cut the rest) and are evaluated on the held-out images, so settings can
    be chosen without looking at the test split.
    """

    dataset: str = "mnist"
    root: str | None = None
    download: bool = False
    protocol: Literal["growth", "classes"] = "growth"
    fractions: list[float] = Field(default_factory=lambda: [0.1, 1.0])
    initial: int = 5
    increment: int = 5
    num_versions: int | None = Field(default=None, ge=1)
    eval_split: Literal["test", "train", "val"] = "test"
    val_fraction: float = 0.1
    num_workers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.protocol == "growth":
            f = self.fractions
            if not f or any(not 0 < x <= 1 for x in f) or any(b <= a for a, b in itertools.pairwise(f)):
                raise ValueError("fractions must increase strictly within (0, 1]")
        elif self.initial < 1 or self.increment < 1:
            raise ValueError("initial and increment must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be within (0, 1), got {self.val_fraction}")
        return self


class ModelConfig(_Strict):
    backbone: str = "smallcnn"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)
    feature_dim: int | None = Field(default=None, ge=1)
    num_vertices: int | None = Field(default=None, ge=2)
    orthogonal_map: Literal["matrix_exp", "cayley", "householder"] = "matrix_exp"


class MethodConfig(_Strict):
    name: str = "independent"
    options: dict[str, Any] = Field(default_factory=dict)
    init: Literal["scratch", "previous"] | None = None
    rehearsal_per_class: int = Field(default=0, ge=0)


class VersionConfig(_Strict):
    """Per-version overrides: start from an external checkpoint (model replacement), another backbone
    or feature size (architecture change), extra BT^2 coordinates. Unset fields keep ``model``'s."""

    init_checkpoint: str | None = None
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] | None = None
    feature_dim: int | None = Field(default=None, ge=1)
    to_add_dim: int | None = Field(default=None, ge=1)


class TrainConfig(_Strict):
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=128, ge=2)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    amp: bool = False
    grad_clip: float | None = Field(default=None, gt=0)
    eval_batch_size: int = Field(default=512, ge=1)


class EvalConfig(_Strict):
    """How the chain is evaluated (:func:`compat.train.evaluation.build_evaluator` builds the evaluator).

    ``backend`` and ``memory_budget`` change how fast and in how much memory, never the numbers.
    ``independent_reference``: also train an independent model on the newest version's data (same
    backbone and schedule) and report the update gain against it; methods with a teacher (BT^2)
    always have one. ``index``: also evaluate the chain through each gallery's approximate index
    (``{factory: IVF64,PQ8, nprobe: 8}``), so the run records exact and ANN compatibility together.
    """

    # Enums are read from their YAML text (the one place a str becomes another type).
    protocol: Protocol = Field(default=Protocol.LOO, strict=False)
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    similarity: Similarity = Field(default=Similarity.COSINE, strict=False)
    dim_policy: DimPolicy = Field(default=DimPolicy.ERROR, strict=False)
    backend: Backend = Field(default=Backend.AUTO, strict=False)
    memory_budget: str = DEFAULT_MEMORY_BUDGET
    independent_reference: bool = False
    index: IndexSpec | None = None

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, value: str) -> str:
        from compat.retrieval.knn import parse_memory_budget

        parse_memory_budget(value)  # a CompatError is a ValueError: pydantic reports it with the key
        return value

    @field_validator("protocol")
    @classmethod
    def _one_split(cls, value: Protocol) -> Protocol:
        if value is Protocol.QUERY_GALLERY:  # refused before training, not after
            raise ValueError("a recipe evaluates one split (loo, template or pairs); query-gallery needs separate "
                             "query and gallery sets: extract them and run compat eval --protocol query-gallery")
        return value


class AdapterSpec(_Strict):
    """One backward adapter to train: ``perp``, ``lambda`` (radius ``lam``) or ``procrustes``."""

    kind: Literal["perp", "lambda", "procrustes"] = "perp"
    name: str | None = None
    lam: float | None = Field(default=None, ge=0, allow_inf_nan=True)  # a radius; .inf: unconstrained
    init: Literal["procrustes", "identity"] | None = None


class AdaptersConfig(_Strict):
    """Adapters trained on the chain's frozen models (compat.adapters); ``null``: the adapter default.

    ``pairs``: ``"NEW:OLD"`` version names (default: each version onto the one before it).
    Adapters train on the features of the training split and are evaluated on the eval split.
    """

    pairs: list[str] | None = None
    backward: list[AdapterSpec] = Field(default_factory=lambda: [AdapterSpec()])
    forward: Literal["mlp", "affine", "none"] | None = None
    hidden: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=2)
    lr: float | None = Field(default=None, gt=0)
    w_forward: float | None = Field(default=None, ge=0)
    w_backward: float | None = Field(default=None, ge=0)
    w_contrastive: float | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, gt=0)
    alpha: float | None = Field(default=None, gt=0)
    backfill: list[Literal["random", "farthest", "uncertainty"]] = Field(default_factory=list)
    backfill_points: int = Field(default=DEFAULT_BACKFILL_POINTS, ge=2)


class Recipe(_Strict):
    name: str
    seed: int = Field(default=0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    versions: list[VersionConfig] = Field(default_factory=list)
    adapters: AdaptersConfig | None = None

    def resolved(self) -> dict[str, Any]:
        """The recipe as a plain dict with every default filled in."""
        return self.model_dump(mode="json")


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw recipe dict.

    A key part that meets a list is an index into it (``versions.1.feature_dim=96``); an index
    outside the list is an error naming the key. ``raw`` itself is not changed.
    """
    out = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CompatError(f"--set: {item!r} is not key=value (e.g. train.epochs=2)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set_path(out, key.split("."), value)
    return out


def _set_path(root: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``parts`` under ``root`` to ``value``, copying every container on the way (dicts are
    created where missing; lists are indexed, never grown)."""
    container: dict[str, Any] | list[Any] = root
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if isinstance(container, dict) and part.isdigit() and depth > 0:
            raise CompatError(f"--set {where}: {'.'.join(parts[:depth])} is not a list here (a recipe without it "
                              f"takes the whole list, e.g. --set '{'.'.join(parts[:depth])}=[{{}}, {{...}}]')")
        slot: Any = _list_index(container, part, where) if isinstance(container, list) else part
        if depth == len(parts) - 1:
            container[slot] = value
            return
        child = container[slot] if isinstance(container, list) else container.get(slot)
        child = dict(child) if isinstance(child, dict) else list(child) if isinstance(child, list) else {}
        container[slot] = child
        container = child


def _list_index(items: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise CompatError(f"--set {where}: expected an index 0..{len(items) - 1} of a list of {len(items)} items")
    return int(part)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe.

    Raises:
        CompatError: the file is missing or not YAML, or a key is unknown or has the wrong type
            (the message names the file and the key).
    """
    raw = read_yaml_mapping(path, "recipe")
    raw.setdefault("name", Path(path).stem)
    return validate_model(Recipe, apply_overrides(raw, overrides), path)
