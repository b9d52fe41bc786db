"""Train a recipe's whole version chain, extract each version's features, evaluate the chain.

:func:`train_chain` reads top to bottom: start (distributed context, seed, data, output directory,
tracking) -> every version in turn (model, frozen old model, reference model, cached features,
method, epochs, evaluation features) -> the chain's evaluation -> the adapter stage when the recipe
has one. Layout under ``out``::

    out/recipe.yaml                 the resolved recipe
    out/v0/checkpoint.pt            last epoch's full state (resume)
    out/v0/model.pt                 final weights + what is needed to rebuild the model
    out/v1-independent/model.pt     an independent model on v1's data (BT^2's teacher, or the
                                    update-gain reference with ``eval.independent_reference``)
    out/features/v0.npz             evaluation features of version 0 (and v1-independent.npz)
    out/compat.json, compat.md, compat.png
    out/adapters/...                the adapter stage (:mod:`compat.train.adapters`)

A version whose feature size differs from its predecessor's, trained against it, records
``compatible_dim`` in its features' metadata: the leading coordinates that meet the old model
(BT^2's old dimension, BCT's truncated prefix). The evaluator reads it to compare those.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from compat._atomic import atomic_path
from compat._files import check_output_dir
from compat.compatibility.matrix import CompatibilityReport
from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.features import save_features
from compat.methods import Method, build_method
from compat.models import EmbeddingModel, build_model
from compat.models.extract import embed_dataset, extract_features, file_digest
from compat.models.io import read_model_file, save_model
from compat.tracking import TrainingTracker
from compat.train.checkpoint import rng_state, seed_everything, set_rng_state
from compat.train.config import Recipe
from compat.train.data import RecipeData
from compat.train.loop import EpochStats, train_version
from compat.train.plan import VersionPlan, check_init_checkpoints, initial_model, model_spec, plan_versions
from compat.train.resume import check_run_dir, check_same_training

__all__ = ["ChainResult", "ChainRun", "TrainedVersion", "train_chain"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainRun:
    """What every step of a chain's training reads, settled once at the start."""

    recipe: Recipe
    out: Path
    device: str
    dist: DistributedContext
    data: RecipeData
    plans: list[VersionPlan]
    tracker: TrainingTracker
    resume: bool
    progress: bool


@dataclass(frozen=True)
class TrainedVersion:
    """A finished version: what the next one starts from, and its evaluation features (rank 0).

    Attributes:
        reference: features of the independent model trained on this version's data, if any.
    """

    plan: VersionPlan
    model: EmbeddingModel
    spec: dict[str, Any]
    features: Path | None
    reference: Path | None


@dataclass(frozen=True)
class ChainResult:
    """What :func:`train_chain` produced (``report`` and ``adapters`` are ``None`` off rank 0)."""

    out: Path
    report: CompatibilityReport | None
    adapters: Any = None  # compat.train.adapters.AdapterStageResult with an ``adapters`` section


def train_chain(
    recipe: Recipe,
    *,
    out: Path,
    device: str = "cpu",
    data_root: str | None = None,
    resume: bool = False,
    track: bool = False,
    experiment: str | None = None,
    progress: bool = True,
) -> ChainResult:
    """Train every version of ``recipe``, extract evaluation features, evaluate and report; then
    train and evaluate the recipe's adapters, when it has an ``adapters`` section.

    Args:
        recipe: the validated recipe.
        out: output directory (see the module docstring for the layout).
        device: ``cpu`` or ``cuda``; under torchrun each process takes its local GPU.
        data_root: overrides ``recipe.data.root``.
        resume: continue from the checkpoints under ``out`` (finished versions are not retrained).
        track, experiment: log to MLflow (also when ``MLFLOW_TRACKING_URI`` is set).
        progress: progress bars on a terminal.
    """
    from compat.train.adapters import run_adapter_stage
    from compat.train.evaluation import evaluate_run

    run = _start(recipe, out=out, device=device, data_root=data_root, resume=resume, track=track,
                 experiment=experiment, progress=progress)
    try:
        trained = _train_versions(run)
        report, stage = None, None
        if run.dist.is_main:
            report = evaluate_run(recipe, [t.features for t in trained], out, run.device,
                                  independent=trained[-1].reference, progress=progress)
            run.tracker.log_evaluation(report, [out / f for f in ("compat.json", "compat.md", "compat.png")])
            if recipe.adapters is not None:
                stage = run_adapter_stage(recipe, report.versions, out=out, data=run.data, device=run.device,
                                          resume=resume, tracker=run.tracker, progress=progress)
    except BaseException:
        run.tracker.end(failed=True)
        raise
    run.tracker.end()
    return ChainResult(out, report, stage)


def _start(recipe: Recipe, *, out: Path, device: str, data_root: str | None, resume: bool, track: bool,
           experiment: str | None, progress: bool) -> ChainRun:
    """Distributed context, seed, data, plans, the output directory and its ``recipe.yaml``, tracking."""
    from compat.tracking import tracking_enabled

    check_output_dir(out)  # before any work: a run whose output cannot be written is never started
    if resume:
        check_run_dir(out, recipe.resolved())  # every file it may reuse, before recipe.yaml is written again
    dist = DistributedContext.from_env(device)
    device = dist.device(device)
    seed_everything(recipe.seed)
    data = RecipeData.build(recipe, data_root)
    plans = plan_versions(recipe, data.labels, data.pool)
    method = build_method(recipe.method.name, **recipe.method.options)  # fail on a bad option before training
    check_init_checkpoints(recipe, data.num_classes, method.head)
    if recipe.adapters is not None:
        from compat.train.adapters import adapter_configs, adapter_pairs

        adapter_configs(recipe)  # a bad adapter setting or pair fails before training
        adapter_pairs(recipe, [p.name for p in plans])
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        with atomic_path(out / "recipe.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False), encoding="utf-8")
    tracker = TrainingTracker(tracking_enabled(track) and dist.is_main, experiment=experiment)
    tracker.start(recipe.name, recipe.resolved())
    return ChainRun(recipe, out, device, dist, data, plans, tracker, resume, progress)


def _train_versions(run: ChainRun) -> list[TrainedVersion]:
    """Every version in turn, each against the one before it (and the rehearsal memory, if any)."""
    from compat.data import RehearsalMemory

    per_class = run.recipe.method.rehearsal_per_class
    memory = RehearsalMemory(per_class, seed=run.recipe.seed) if per_class > 0 else None
    trained: list[TrainedVersion] = []
    for plan in run.plans:
        memory_indices = memory.indices if memory is not None else np.empty(0, dtype=np.int64)
        trained.append(_train_one(run, plan, trained[-1] if trained else None, memory_indices))
        if memory is not None:
            memory.update(plan.new_indices, run.data.labels[plan.new_indices])
    return trained


def _train_one(run: ChainRun, plan: VersionPlan, previous: TrainedVersion | None,
               memory_indices: np.ndarray) -> TrainedVersion:
    """One version: its model, the frozen old model, the reference model and cached features the
    method needs, the epochs, and (rank 0) its evaluation features."""
    recipe = run.recipe
    method = build_method(recipe.method.name, **recipe.method.options)
    spec = model_spec(recipe, plan.index, run.data.num_classes, method.head)
    model = initial_model(recipe, plan.index, spec, previous.model if previous else None,
                          previous.spec if previous else None, method.init, run.device)
    old = copy.deepcopy(previous.model) if previous is not None and method.needs_old_model else None
    compatible = None
    if old is not None and model.feature_dim != previous.model.feature_dim:
        compatible = min(model.feature_dim, previous.model.feature_dim)
    run.tracker.start_version(plan.name, {"train_items": len(plan.new_indices), "memory_items": len(memory_indices),
                                          "seen_classes": len(plan.seen_classes)})
    last = plan.index == len(run.plans) - 1
    teacher, reference = None, None
    if plan.index > 0 and (method.needs_teacher or (recipe.eval.independent_reference and last)):
        teacher, reference = _train_reference(run, plan, memory_indices)
    cached = _cached_features(run, plan, method, old, teacher, memory_indices)
    _prepare(method, plan, previous, old, cached, run.data.labels)
    model = _fit(run, model, method, plan.name, spec, plan, memory_indices, old_model=old, cached=cached,
                 seed=recipe.seed * 1000 + plan.index, extra={"version": plan.index}, log_epochs=True,
                 compatible_dim=compatible)
    run.dist.barrier()
    features = None
    if run.dist.is_main:
        features = _extract(run, model, plan.name, spec, compatible_dim=compatible)
        run.tracker.log_artifact(run.out / plan.name / "model.pt", "weights")
    run.tracker.end_version()
    return TrainedVersion(plan, model, spec, features, reference)


def _prepare(method: Method, plan: VersionPlan, previous: TrainedVersion | None, old: EmbeddingModel | None,
             cached: dict[str, torch.Tensor], labels: np.ndarray) -> None:
    """Hand the method what it knows of the upgrade (CL2R's weight sqrt(n_new / n_old) counts the
    classes in this version's data over those seen before)."""
    n_old = len(plan.seen_classes) - len(plan.new_classes) if plan.index > 0 else 0
    rows = torch.from_numpy(plan.new_indices)
    method.prepare(
        n_old_classes=n_old, n_new_classes=len(np.unique(labels[plan.new_indices])), old_model=old,
        old_classes=list(previous.plan.seen_classes) if previous is not None else None,
        old_train_features=cached["old"][rows] if "old" in cached else None,
        train_labels=torch.from_numpy(labels[plan.new_indices]) if "old" in cached else None,
    )


def _fit(run: ChainRun, model: EmbeddingModel, method: Method, name: str, spec: dict[str, Any], plan: VersionPlan,
         memory_indices: np.ndarray, *, old_model: EmbeddingModel | None, cached: dict[str, torch.Tensor], seed: int,
         extra: dict[str, Any], log_epochs: bool, compatible_dim: int | None = None) -> EmbeddingModel:
    """Train one model into ``out/<name>`` (a checkpoint every epoch, then ``model.pt``), or load it
    when resuming and it is already there."""
    vdir = run.out / name
    model_path = vdir / "model.pt"
    training = {"recipe": run.recipe.resolved(), **extra}
    if run.resume and model_path.is_file():
        logger.info("%s: already trained, loading it", model_path)
        return _reuse(model_path, training, run.device)

    def log_epoch(stats: EpochStats) -> None:
        if log_epochs:
            run.tracker.log_metrics({"loss": stats.loss, "train_accuracy": stats.accuracy, "lr": stats.lr,
                                     **stats.parts}, step=stats.epoch)

    train_version(model, method, dataset=run.data.train, new_indices=plan.new_indices, memory_indices=memory_indices,
                  old_model=old_model, cfg=run.recipe.train, seed=seed, device=run.device,
                  checkpoint_path=vdir / "checkpoint.pt", resume=run.resume, extra_state=training,
                  num_workers=run.recipe.data.num_workers, dist=run.dist, on_epoch=log_epoch, progress=run.progress,
                  cached=cached)
    if run.dist.is_main:
        # The RNG state at the end of training goes with the weights: a resumed run that reuses this
        # file continues from the state an uninterrupted run had here (exact resume).
        save_model(model_path, model, spec, compatible_dim=compatible_dim, training={**training, "rng": rng_state()})
    run.dist.barrier()
    return model


def _reuse(model_path: Path, training: dict[str, Any], device: str) -> EmbeddingModel:
    """A finished model of this recipe, with the RNG states its training ended with.

    Raises:
        CompatError: the file was trained under another recipe (the first differing key is named),
            or records no training settings (written before compat recorded them).
    """
    model, info = read_model_file(model_path, device=device)
    stored = info["meta"].get("training")
    if not isinstance(stored, dict) or "rng" not in stored:
        raise CompatError(f"{model_path}: records no training settings, so --resume cannot tell whether this recipe "
                          "trained it; train into a new --out")
    check_same_training(stored.get("recipe"), training["recipe"], model_path)
    for key, value in training.items():
        if key != "recipe" and stored.get(key) != value:
            raise CompatError(f"{model_path}: field '{key}' is {stored.get(key)!r}, expected {value!r} for this run")
    try:
        set_rng_state(stored["rng"])
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CompatError(f"{model_path}: meta field training.rng is not an RNG state ({exc})") from None
    return model


def _train_reference(run: ChainRun, plan: VersionPlan, memory_indices: np.ndarray) -> tuple[EmbeddingModel, Path | None]:
    """An independent model (learnable head, no constraint, from scratch) on the version's data:
    BT^2's teacher and the update gain's reference; with its evaluation features (rank 0)."""
    recipe, index = run.recipe, plan.index
    method = build_method("independent")
    spec = model_spec(recipe, index, run.data.num_classes, method.head, basis=False)
    seed = recipe.seed * 1000 + 500 + index
    torch.manual_seed(seed)
    model = build_model(**spec).to(run.device)
    name = f"{plan.name}-independent"
    model = _fit(run, model, method, name, spec, plan, memory_indices, old_model=None, cached={}, seed=seed,
                 extra={"version": index, "reference": True}, log_epochs=False).eval()
    return model, (_extract(run, model, name, spec) if run.dist.is_main else None)


def _cached_features(run: ChainRun, plan: VersionPlan, method: Method, old: EmbeddingModel | None,
                     teacher: EmbeddingModel | None, memory_indices: np.ndarray) -> dict[str, torch.Tensor]:
    """The old model's and the teacher's features of the version's training images, computed once
    (no augmentation) instead of a forward pass per step."""
    if old is None or not (method.old_features == "cached" or method.needs_teacher):
        return {}
    used = np.union1d(plan.new_indices, memory_indices)
    cached = {}
    if method.old_features == "cached":
        cached["old"] = _feature_table(run, old, used)
    if method.needs_teacher:
        cached["teacher"] = _feature_table(run, teacher, used)
    return cached


def _feature_table(run: ChainRun, model: EmbeddingModel, indices: np.ndarray) -> torch.Tensor:
    """(len(training split), D) features of ``model`` with the rows of ``indices`` filled."""
    dataset = run.data.clean_train()
    feats = embed_dataset(model, dataset, indices=indices, device=run.device,
                          batch_size=run.recipe.train.eval_batch_size, num_workers=run.recipe.data.num_workers)
    table = torch.zeros(len(dataset), feats.shape[1])
    table[torch.from_numpy(indices)] = feats
    return table.to(run.device)


def _extract(run: ChainRun, model: EmbeddingModel, name: str, spec: dict[str, Any], *,
             compatible_dim: int | None = None) -> Path:
    """The model's features of the evaluation images, as ``out/features/<name>.npz``."""
    d = run.recipe.data
    meta = {"model": spec["backbone"], "version": name, "dataset": d.dataset, "split": d.eval_split,
            "recipe": run.recipe.name, "checkpoint": file_digest(run.out / name / "model.pt")}
    if compatible_dim is not None:
        meta["compatible_dim"] = compatible_dim
    fs = extract_features(model, run.data.evaluation, labels=run.data.eval_labels, ids=run.data.eval_ids,
                          device=run.device, batch_size=run.recipe.train.eval_batch_size, num_workers=d.num_workers,
                          meta=meta, progress=run.progress)
    return save_features(fs, run.out / "features" / f"{name}.npz")
