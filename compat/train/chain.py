"""Train a recipe's whole version chain, extract each version's features, evaluate the chain.

Layout under ``out``::

    out/recipe.yaml                 the resolved recipe
    out/v0/checkpoint.pt            last epoch's full state (resume)
    out/v0/model.pt                 final weights + what is needed to rebuild the model
    out/v1-independent/model.pt     an independent model on v1's data (BT^2's teacher, or the
                                    update-gain reference with ``eval.independent_reference``)
    out/features/v0.npz             evaluation features of version 0 (and v1-independent.npz)
    out/compat.json, compat.md, compat.png

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
from torch.utils.data import Subset

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
from compat.train.extract import embed_dataset, extract_features, file_digest
from compat.train.loop import EpochStats, train_version

__all__ = ["VersionPlan", "load_model", "plan_versions", "save_model", "train_chain", "training_pool"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionPlan:
    """What version ``index`` trains on: dataset indices of its new data, and the classes seen so far."""

    index: int
    new_indices: np.ndarray
    seen_classes: list[int]
    new_classes: list[int]


def plan_versions(recipe: Recipe, labels: np.ndarray, pool: np.ndarray | None = None) -> list[VersionPlan]:
    """The data of every version under the recipe's upgrade protocol.

    ``growth``: version t trains on the nested fraction ``fractions[t]`` of the training split.
    ``classes``: version t brings the classes of task t. With rehearsal (CL2R) a version trains on
    what is new to it (the new slice or task) plus the memory; without, on everything seen so far.
    ``pool``: the training indices the versions may use (all of them when None); ``data.eval_split:
    val`` keeps the held-out images out of it (:func:`training_pool`).
    """
    from compat.data import class_incremental, fraction_subsets

    if pool is not None:
        return [VersionPlan(p.index, pool[p.new_indices], p.seen_classes, p.new_classes)
                for p in plan_versions(recipe, labels[pool])]
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


def training_pool(recipe: Recipe, labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(pool, held_out)`` training-split indices under ``data.eval_split: val``; ``(None, None)``
    otherwise (every training image is available and the evaluation split is another one)."""
    from compat.data import hold_out

    if recipe.data.eval_split != "val":
        return None, None
    return hold_out(labels, recipe.data.val_fraction, seed=recipe.seed)


def save_model(path: Path, model: EmbeddingModel, spec: dict[str, Any]) -> Path:
    """Final weights and the arguments of :func:`compat.models.build_model` that rebuild the model.

    A ``pretrained`` backbone file is not recorded: its weights are in the state dict already.
    """
    return save_checkpoint(path, {"model": model.state_dict(), "spec": _without_pretrained(spec)})


def _without_pretrained(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = spec.get("backbone_kwargs")
    if not isinstance(kwargs, dict) or "pretrained" not in kwargs:
        return spec
    return {**spec, "backbone_kwargs": {k: v for k, v in kwargs.items() if k != "pretrained"}}


def load_model(path: str | Path, *, device: str = "cpu") -> EmbeddingModel:
    """Rebuild a model saved by :func:`save_model` (loaded with ``weights_only=True``)."""
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state, dict) or "spec" not in state or "model" not in state:
        raise CompatError(f"{path}: not a compat model file (expected keys 'model' and 'spec')")
    if not isinstance(state["spec"], dict) or not isinstance(state["model"], dict):
        raise CompatError(f"{path}: 'spec' and 'model' must be mappings (model arguments, state dict)")
    try:
        # A model file never makes us read another file: a pretrained path in it is ignored.
        model = build_model(**_without_pretrained(state["spec"]))
    except TypeError as exc:
        raise CompatError(f"{path}: field 'spec' does not describe a compat model ({exc})") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompatError(f"{path}: field 'model': the weights do not fit the model in 'spec' ({first})") from None
    return model.to(device).eval()


def _model_spec(recipe: Recipe, version: int, num_classes: int, head: str, *, basis: bool = True) -> dict[str, Any]:
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
    labels = dataset_labels(train_ds)
    pool, held_out = training_pool(recipe, labels)
    # the training images without augmentation: built once, for the held-out evaluation images and
    # for the cached old / teacher features
    cache_ds = None
    if held_out is None:
        eval_ds = build_dataset(d.dataset, root=root, split=d.eval_split, download=d.download, train_transform=False)
    else:
        cache_ds = build_dataset(d.dataset, root=root, split="train", download=d.download, train_transform=False)
        eval_ds = Subset(cache_ds, held_out.tolist())
    num_classes = int(labels.max()) + 1
    plans = plan_versions(recipe, labels, pool)
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
    reference_paths: dict[int, Path] = {}
    previous: EmbeddingModel | None = None
    previous_spec: dict[str, Any] | None = None
    previous_classes: list[int] | None = None
    try:
        last = len(plans) - 1
        for plan in plans:
            name = f"v{plan.index}"
            vdir = out / name
            method = build_method(recipe.method.name, **method_opts)
            spec = _model_spec(recipe, plan.index, num_classes, method.head)
            model = _initial_model(recipe, plan.index, spec, previous, previous_spec, method, device)
            old = copy.deepcopy(previous) if previous is not None and method.needs_old_model else None
            memory_indices = memory.indices if memory is not None else np.empty(0, dtype=np.int64)
            tracker.start_version(name, {"train_items": len(plan.new_indices), "memory_items": len(memory_indices),
                                         "seen_classes": len(plan.seen_classes)})
            common = {"dataset": train_ds, "new_indices": plan.new_indices, "memory_indices": memory_indices,
                      "cfg": recipe.train, "device": device, "resume": resume, "num_workers": d.num_workers,
                      "dist": dist, "progress": progress, "tracker": tracker}
            used = np.union1d(plan.new_indices, memory_indices)
            cached: dict[str, torch.Tensor] = {}
            reference = None
            if plan.index > 0 and (method.needs_teacher or (recipe.eval.independent_reference and plan.index == last)):
                reference, reference_spec = _train_reference(recipe, plan.index, num_classes, out, common)
                if dist.is_main:
                    reference_paths[plan.index] = _extract(reference, out, f"{name}-independent", recipe, eval_ds,
                                                           eval_labels, eval_ids, device, spec=reference_spec)
            if old is not None and (method.old_features == "cached" or method.needs_teacher):
                cache_ds = cache_ds or build_dataset(d.dataset, root=root, split="train", download=d.download,
                                                     train_transform=False)
                if method.old_features == "cached":
                    cached["old"] = _cache(old, cache_ds, used, device, recipe)
                if method.needs_teacher:
                    cached["teacher"] = _cache(reference, cache_ds, used, device, recipe)
            # CL2R's weight sqrt(n_new / n_old): the classes in this version's data over those seen before.
            n_old = len(plan.seen_classes) - len(plan.new_classes) if plan.index > 0 else 0
            n_task = len(np.unique(labels[plan.new_indices]))
            new_rows = torch.from_numpy(plan.new_indices)
            method.prepare(
                n_old_classes=n_old, n_new_classes=n_task, old_model=old,
                old_classes=previous_classes,
                old_train_features=cached["old"][new_rows] if "old" in cached else None,
                train_labels=torch.from_numpy(labels[plan.new_indices]) if "old" in cached else None,
            )
            model = _train_or_load(model, method, vdir, spec, old_model=old, cached=cached,
                                   seed=recipe.seed * 1000 + plan.index, extra_state={"recipe": recipe.resolved(),
                                                                                   "version": plan.index}, **common)
            dist.barrier()
            if dist.is_main:
                compatible = None
                if old is not None and model.feature_dim != previous.feature_dim:
                    compatible = min(model.feature_dim, previous.feature_dim)
                feature_paths.append(_extract(model, out, name, recipe, eval_ds, eval_labels, eval_ids, device,
                                              spec=spec, compatible_dim=compatible))
                tracker.log_artifact(vdir / "model.pt", "weights")
            tracker.end_version()
            if memory is not None:
                memory.update(plan.new_indices, labels[plan.new_indices])
            previous, previous_spec, previous_classes = model, spec, list(plan.seen_classes)
        independent = reference_paths.get(last)
        report = _evaluate(recipe, feature_paths, out, device, independent) if dist.is_main else None
        if report is not None and tracker.enabled:
            from compat.tracking import log_evaluation

            log_evaluation(report, inputs={}, files=[out / f for f in ("compat.json", "compat.md", "compat.png")],
                           run_name="evaluation")
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    return report


def _train_or_load(model, method, vdir: Path, spec: dict[str, Any], *, tracker, resume: bool, dist, **train_args):
    """Train one model into ``vdir`` (checkpoint every epoch, then ``model.pt``), or load it when
    resuming and it is already there."""
    model_path = vdir / "model.pt"
    if resume and model_path.is_file():
        logger.info("%s: already trained, loading it", model_path)
        return load_model(model_path, device=train_args["device"])

    def log_epoch(stats: EpochStats) -> None:
        tracker.log_metrics({"loss": stats.loss, "train_accuracy": stats.accuracy, "lr": stats.lr, **stats.parts},
                            step=stats.epoch)

    train_version(model, method, checkpoint_path=vdir / "checkpoint.pt", resume=resume, dist=dist,
                  on_epoch=log_epoch, **train_args)
    if dist.is_main:
        save_model(model_path, model, spec)
    dist.barrier()
    return model


def _train_reference(recipe: Recipe, index: int, num_classes: int, out: Path, common: dict[str, Any]):
    """An independent model (learnable head, no constraint, from scratch) on version ``index``'s data:
    BT^2's teacher and the update gain's reference."""
    method = build_method("independent")
    spec = _model_spec(recipe, index, num_classes, method.head, basis=False)
    torch.manual_seed(recipe.seed * 1000 + 500 + index)
    model = build_model(**spec).to(common["device"])
    vdir = out / f"v{index}-independent"
    model = _train_or_load(model, method, vdir, spec, old_model=None, cached={}, seed=recipe.seed * 1000 + 500 + index,
                           extra_state={"recipe": recipe.resolved(), "version": index, "reference": True},
                           **{**common, "tracker": _NullTracker()})
    return model.eval(), spec


class _NullTracker:
    """The reference model's epochs are not logged (its run is the version's)."""

    def log_metrics(self, *args, **kwargs) -> None:
        pass


def _cache(model, dataset, indices: np.ndarray, device: str, recipe: Recipe) -> torch.Tensor:
    """(len(dataset), D) features of ``model`` with the rows of ``indices`` filled (no augmentation)."""
    feats = embed_dataset(model, dataset, indices=indices, device=device, batch_size=recipe.train.eval_batch_size,
                          num_workers=recipe.data.num_workers)
    table = torch.zeros(len(dataset), feats.shape[1])
    table[torch.from_numpy(indices)] = feats
    return table.to(device)


def _extract(model, out: Path, name: str, recipe: Recipe, eval_ds, labels, ids, device: str, *,
             spec: dict[str, Any], compatible_dim: int | None = None) -> Path:
    d = recipe.data
    model_path = out / name / "model.pt"
    meta = {"model": spec["backbone"], "version": name, "dataset": d.dataset, "split": d.eval_split, "recipe": recipe.name,
            "checkpoint": file_digest(model_path)}
    if compatible_dim is not None:
        meta["compatible_dim"] = compatible_dim
    fs = extract_features(model, eval_ds, labels=labels, ids=ids, device=device,
                          batch_size=recipe.train.eval_batch_size, num_workers=d.num_workers, meta=meta)
    return save_features(fs, out / "features" / f"{name}.npz")


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
    init = recipe.method.init or method.init
    if init == "previous" and previous is not None and spec == previous_spec:
        model.load_state_dict(previous.state_dict())
    return model.to(device)


def _evaluate(recipe: Recipe, feature_paths: list[Path], out: Path, device: str,
              independent: Path | None = None) -> CompatibilityReport:
    from compat.features import load_features

    e = recipe.eval
    evaluator = RetrievalEvaluator(tuple(e.metrics), protocol=e.protocol, similarity=e.similarity,
                                   device="cuda" if device.startswith("cuda") else "cpu")
    chain = [Version(p.stem, load_features(p)) for p in feature_paths]
    reference = load_features(independent) if independent is not None else None
    report = evaluate_chain(chain, evaluator, dim_policy=e.dim_policy, independent=reference)
    write_reports(report, out)
    return report

