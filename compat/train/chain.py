"""Train a recipe's whole version chain, extract each version's features, evaluate the chain.

Layout under ``out``::

    out/recipe.yaml                 the resolved recipe
    out/v0/checkpoint.pt            last epoch's full state (resume)
    out/v0/model.pt                 final weights + what is needed to rebuild the model
    out/features/v0.npz             evaluation features of version 0
    out/compat.json, compat.md, compat.png
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

from compat.compatibility.matrix import CompatibilityReport, Version, evaluate_chain
from compat.compatibility.report import write_reports
from compat.errors import CompatError
from compat.features import save_features
from compat.methods import build_method
from compat.models import EmbeddingModel, build_model
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from compat.train.config import Recipe
from compat.train.distributed import DistributedContext
from compat.train.extract import extract_features, file_digest
from compat.train.loop import EpochStats, train_version

__all__ = ["VersionPlan", "load_model", "plan_versions", "save_model", "train_chain"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionPlan:
    """What version ``index`` trains on: dataset indices of its new data, and the classes seen so far."""

    index: int
    new_indices: np.ndarray
    seen_classes: list[int]
    new_classes: list[int]


def plan_versions(recipe: Recipe, labels: np.ndarray) -> list[VersionPlan]:
    """The data of every version under the recipe's upgrade protocol.

    ``growth``: version t trains on the nested fraction ``fractions[t]`` of the training split.
    ``classes``: version t brings the classes of task t. With rehearsal (CL2R) a version trains on
    what is new to it (the new slice or task) plus the memory; without, on everything seen so far.
    """
    from compat.data import class_incremental, fraction_subsets

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


def save_model(path: Path, model: EmbeddingModel, spec: dict[str, Any]) -> Path:
    """Final weights and the arguments of :func:`compat.models.build_model` that rebuild the model."""
    return save_checkpoint(path, {"model": model.state_dict(), "spec": spec})


def load_model(path: str | Path, *, device: str = "cpu") -> EmbeddingModel:
    """Rebuild a model saved by :func:`save_model` (loaded with ``weights_only=True``)."""
    state = load_checkpoint(path, map_location=device)
    if "spec" not in state or "model" not in state:
        raise CompatError(f"{path}: not a compat model file (expected keys 'model' and 'spec')")
    model = build_model(**state["spec"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _model_spec(recipe: Recipe, version: int, num_classes: int, head: str) -> dict[str, Any]:
    m = recipe.model
    override = recipe.versions[version] if version < len(recipe.versions) else None
    backbone = (override.backbone if override and override.backbone else None) or m.backbone
    num_vertices = m.num_vertices if head == "simplex" else None
    feature_dim = override.feature_dim if override and override.feature_dim is not None else m.feature_dim
    if head == "simplex" and feature_dim is None:
        feature_dim = (num_vertices or num_classes) - 1
    kwargs = override.backbone_kwargs if override and override.backbone_kwargs is not None else m.backbone_kwargs
    return {"backbone": backbone, "feature_dim": feature_dim, "head": head, "num_classes": num_classes,
            "num_vertices": num_vertices, "backbone_kwargs": dict(kwargs)}


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
) -> CompatibilityReport:
    """Train every version of ``recipe``, extract evaluation features, evaluate and report.

    Args:
        recipe: the validated recipe.
        out: output directory (see the module docstring for the layout).
        device: ``cpu`` or ``cuda``; under torchrun each process takes its local GPU.
        data_root: overrides ``recipe.data.root``.
        resume: continue from the checkpoints under ``out`` (finished versions are not retrained).
        track: log to MLflow (also when ``MLFLOW_TRACKING_URI`` is set).
    """
    from compat.data import RehearsalMemory, build_dataset, dataset_ids, dataset_labels
    from compat.tracking import TrainingTracker, tracking_enabled

    dist = DistributedContext.from_env(device)
    device = dist.device(device)
    seed_everything(recipe.seed)
    d = recipe.data
    root = data_root or d.root
    train_ds = build_dataset(d.dataset, root=root, split="train", download=d.download, train_transform=True)
    eval_ds = build_dataset(d.dataset, root=root, split=d.eval_split, download=d.download, train_transform=False)
    labels = dataset_labels(train_ds)
    num_classes = int(labels.max()) + 1
    plans = plan_versions(recipe, labels)
    method_opts = dict(recipe.method.options)
    build_method(recipe.method.name, **method_opts)  # fail on a bad option before training anything
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False), encoding="utf-8")

    tracker = TrainingTracker(tracking_enabled(track) and dist.is_main, experiment=experiment)
    tracker.start(recipe.name, recipe.resolved())
    memory = RehearsalMemory(recipe.method.rehearsal_per_class, seed=recipe.seed) \
        if recipe.method.rehearsal_per_class > 0 else None
    eval_labels, eval_ids = dataset_labels(eval_ds), dataset_ids(eval_ds)
    feature_paths: list[Path] = []
    previous: EmbeddingModel | None = None
    previous_spec: dict[str, Any] | None = None
    try:
        for plan in plans:
            name = f"v{plan.index}"
            vdir = out / name
            method = build_method(recipe.method.name, **method_opts)
            spec = _model_spec(recipe, plan.index, num_classes, method.head)
            model = _initial_model(recipe, plan.index, spec, previous, previous_spec, method, device)
            old = copy.deepcopy(previous) if previous is not None and method.needs_old_model else None
            # CL2R's weight sqrt(n_new / n_old): the classes in this version's data over those seen before.
            n_old = len(plan.seen_classes) - len(plan.new_classes) if plan.index > 0 else 0
            n_task = len(np.unique(labels[plan.new_indices]))
            method.prepare(n_old_classes=n_old, n_new_classes=n_task, old_model=old)
            memory_indices = memory.indices if memory is not None else np.empty(0, dtype=np.int64)
            tracker.start_version(name, {"train_items": len(plan.new_indices), "memory_items": len(memory_indices),
                                         "seen_classes": len(plan.seen_classes)})
            model_path = vdir / "model.pt"
            if resume and model_path.is_file():
                model = load_model(model_path, device=device)
                logger.info("%s: already trained, loaded %s", name, model_path)
            else:
                def log_epoch(stats: EpochStats) -> None:
                    tracker.log_metrics({"loss": stats.loss, "train_accuracy": stats.accuracy, "lr": stats.lr,
                                         **stats.parts}, step=stats.epoch)

                train_version(
                    model, method, dataset=train_ds, new_indices=plan.new_indices, memory_indices=memory_indices,
                    old_model=old, cfg=recipe.train, seed=recipe.seed * 1000 + plan.index, device=device,
                    checkpoint_path=vdir / "checkpoint.pt", resume=resume, num_workers=d.num_workers,
                    extra_state={"recipe": recipe.resolved(), "version": plan.index}, dist=dist,
                    on_epoch=log_epoch, progress=progress,
                )
                if dist.is_main:
                    save_model(model_path, model, spec)
            dist.barrier()
            if dist.is_main:
                meta = {"model": spec["backbone"], "version": name, "dataset": d.dataset, "split": d.eval_split,
                        "recipe": recipe.name, "checkpoint": file_digest(model_path)}
                fs = extract_features(model, eval_ds, labels=eval_labels, ids=eval_ids, device=device,
                                      batch_size=recipe.train.eval_batch_size, num_workers=d.num_workers, meta=meta)
                feature_paths.append(save_features(fs, out / "features" / f"{name}.npz"))
                tracker.log_artifact(model_path, "weights")
            tracker.end_version()
            if memory is not None:
                memory.update(plan.new_indices, labels[plan.new_indices])
            previous, previous_spec = model, spec
        report = _evaluate(recipe, feature_paths, out, device) if dist.is_main else None
        if report is not None and tracker.enabled:
            from compat.tracking import log_evaluation

            log_evaluation(report, inputs={}, files=[out / f for f in ("compat.json", "compat.md", "compat.png")],
                           run_name="evaluation")
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    return report


def _initial_model(recipe: Recipe, index: int, spec: dict[str, Any], previous: EmbeddingModel | None,
                   previous_spec: dict[str, Any] | None, method, device: str) -> EmbeddingModel:
    """From an external checkpoint (model replacement), the previous version, or from scratch."""
    torch.manual_seed(recipe.seed * 1000 + index)
    model = build_model(**spec)
    override = recipe.versions[index] if index < len(recipe.versions) else None
    if override is not None and override.init_checkpoint:
        state = load_checkpoint(override.init_checkpoint)
        weights = state.get("model", state)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise CompatError(f"{override.init_checkpoint}: unexpected weights {unexpected[:3]} for {spec['backbone']}")
        logger.info("v%d starts from %s (missing: %s)", index, override.init_checkpoint, missing)
        return model.to(device)
    init = recipe.method.init or ("previous" if method.needs_old_model else "scratch")
    if init == "previous" and previous is not None and spec == previous_spec:
        model.load_state_dict(previous.state_dict())
    return model.to(device)


def _evaluate(recipe: Recipe, feature_paths: list[Path], out: Path, device: str) -> CompatibilityReport:
    from compat.features import load_features

    e = recipe.eval
    evaluator = RetrievalEvaluator(tuple(e.metrics), protocol=e.protocol, similarity=e.similarity,
                                   device="cuda" if device.startswith("cuda") else "cpu")
    chain = [Version(p.stem, load_features(p)) for p in feature_paths]
    report = evaluate_chain(chain, evaluator, dim_policy=e.dim_policy)
    write_reports(report, out)
    return report

