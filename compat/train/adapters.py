"""The adapter stage of a recipe: after the chain, adapters between its frozen models.

For every pair ``NEW:OLD`` of the recipe's ``adapters`` section and every backward adapter it
lists, the stage trains ``B`` and ``F`` on the two models' features of the training split, saves
the adapter, and evaluates the chain with it on the evaluation split. Layout under ``out``::

    out/features/train/v0.npz            training-split features (reused while model.pt is unchanged)
    out/adapters/v1-v0-perp.npz          one adapter file per pair and backward adapter (its meta records
                                         the digests of the two model files; reused under --resume only
                                         with the same settings and model files)
    out/adapters/perp/compat.json, ...   the chain evaluated with that adapter (compat.md, compat.png,
                                         backfill.png)
    out/adapters/summary.json, summary.md  every adapter's cells and backfill areas side by side
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

from compat._atomic import write_all_or_nothing
from compat.adapters.adapter import Adapter
from compat.adapters.evaluate import AdaptedChainReport, evaluate_with_adapters
from compat.adapters.fit import AdapterConfig, fit_adapter
from compat.adapters.io import load_adapter, save_adapter
from compat.adapters.report import render_adapter_summary, summarize_adapters, write_adapted_reports
from compat.compatibility.matrix import Version
from compat.data import dataset_ids, dataset_labels
from compat.errors import CompatError
from compat.features import FeatureSet, load_features, save_features
from compat.jsontext import report_json
from compat.models.extract import extract_features, file_digest
from compat.models.io import load_model
from compat.tracking import TrainingTracker
from compat.train.config import Recipe
from compat.train.data import RecipeData
from compat.train.evaluation import build_evaluator

__all__ = ["AdapterStageResult", "adapter_configs", "adapter_pairs", "run_adapter_stage"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterStageResult:
    """Per backward adapter (by name), the adapted chain report; and the summary files."""

    reports: dict[str, AdaptedChainReport]
    summary_json: Path
    summary_md: Path


def adapter_configs(recipe: Recipe) -> dict[str, AdapterConfig]:
    """The recipe's backward adapters as :class:`AdapterConfig`, by name (default name: the kind,
    ``lambda12`` for a lambda adapter of radius 12; a name given twice is an error)."""
    section = recipe.adapters
    shared = {k: getattr(section, k) for k in ("forward", "hidden", "epochs", "batch_size", "lr", "w_forward",
                                               "w_backward", "w_contrastive", "temperature", "alpha")}
    shared = {k: v for k, v in shared.items() if v is not None}
    out: dict[str, AdapterConfig] = {}
    for spec in section.backward:
        own = {k: v for k, v in (("lam", spec.lam), ("init", spec.init)) if v is not None}
        cfg = AdapterConfig(kind=spec.kind, seed=recipe.seed, **shared, **own)
        name = spec.name or _default_name(cfg)
        if name in out:
            raise CompatError(f"adapters.backward: name {name!r} is given twice; give each adapter its own 'name'")
        out[name] = cfg
    return out


def _default_name(cfg: AdapterConfig) -> str:
    if cfg.kind.value != "lambda":
        return cfg.kind.value
    return "lambda-inf" if math.isinf(cfg.lam) else f"lambda{cfg.lam:g}"


def adapter_pairs(recipe: Recipe, names: list[str]) -> list[tuple[str, str]]:
    """``(new, old)`` version names of the recipe's ``adapters.pairs`` (default: each version onto
    the one before it)."""
    raw = recipe.adapters.pairs
    if raw is None:
        return [(names[t], names[t - 1]) for t in range(1, len(names))]
    pairs = []
    for text in raw:
        new, sep, old = text.partition(":")
        if not sep or new not in names or old not in names or names.index(old) >= names.index(new):
            raise CompatError(f"adapters.pairs: {text!r} must be NEW:OLD with OLD older than NEW, among "
                              f"{', '.join(names)}")
        pairs.append((new, old))
    return pairs


def _train_features(data: RecipeData, name: str, out: Path, *, device: str, progress: bool) -> FeatureSet:
    """Training features of version ``name`` (the images adapters train on), extracted once per
    trained model: a cached file is reused while its model file and split are the same."""
    recipe = data.recipe
    model_path = out / name / "model.pt"
    digest = file_digest(model_path)
    path = out / "features" / "train" / f"{name}.npz"
    if path.is_file():
        cached = load_features(path)
        if cached.meta.get("checkpoint") == digest and cached.meta.get("split") == data.adapter_split:
            return cached
    images = data.adapter_images()
    model = load_model(model_path, device=device)
    meta = {"version": name, "dataset": recipe.data.dataset, "split": data.adapter_split, "recipe": recipe.name,
            "checkpoint": digest}
    fs = extract_features(model, images, labels=dataset_labels(images), ids=dataset_ids(images), device=device,
                          batch_size=recipe.train.eval_batch_size, num_workers=recipe.data.num_workers, meta=meta,
                          progress=progress)
    save_features(fs, path)
    return fs


def run_adapter_stage(recipe: Recipe, versions: list[str] | tuple[str, ...], *, out: Path, data: RecipeData,
                      device: str = "cpu", resume: bool = False, tracker: TrainingTracker | None = None,
                      progress: bool = True) -> AdapterStageResult:
    """Train, save and evaluate the recipe's adapters (the chain has been trained under ``out``).

    Args:
        recipe: a recipe with an ``adapters`` section.
        versions: the chain's version names, oldest first.
        out: the directory the chain was trained into.
        data: the run's datasets (which training images adapters train on).
        device: for feature extraction and adapter training.
        resume: reuse adapter files already under ``out/adapters`` trained with the same settings.
        tracker: logs each adapted evaluation as a run ``adapters-<name>`` nested under the recipe's.
        progress: progress bars on a terminal.
    """
    if recipe.adapters is None:
        raise CompatError("recipe: no 'adapters' section")
    configs = adapter_configs(recipe)
    names = list(versions)
    if len(names) < 2:
        raise CompatError("adapters: the chain needs at least two versions")
    pairs = adapter_pairs(recipe, names)
    chain = [Version(n, load_features(out / "features" / f"{n}.npz")) for n in names]
    needed = sorted({n for pair in pairs for n in pair}, key=names.index)
    train = {n: _train_features(data, n, out, device=device, progress=progress) for n in needed}
    evaluator = build_evaluator(recipe.eval, device, progress=progress)
    reports: dict[str, AdaptedChainReport] = {}
    for label, cfg in configs.items():
        adapters = {pair: _adapter(out, label, cfg, pair, train, resume=resume, device=device, progress=progress)
                    for pair in pairs}
        paths = {(new, old): f"adapters/{new}-{old}-{label}.npz" for new, old in pairs}
        section = recipe.adapters
        adapted = evaluate_with_adapters(chain, evaluator, adapters, paths=paths, dim_policy=recipe.eval.dim_policy,
                                         backfill=section.backfill, backfill_points=section.backfill_points,
                                         seed=recipe.seed)
        files = write_adapted_reports(adapted, out / "adapters" / label)
        reports[label] = adapted
        if tracker is not None:
            inputs = {f"{n}:{o}": {k: v for k, v in a.info.to_json().items() if k != "training"}
                      for (n, o), a in adapters.items()}
            tracker.log_evaluation(adapted.report, files, inputs=inputs, run_name=f"adapters-{label}")
    summary = summarize_adapters(reports)
    json_path, md_path = write_all_or_nothing(out / "adapters", {
        "summary.json": lambda p: p.write_text(report_json(summary), encoding="utf-8"),
        "summary.md": lambda p: p.write_text(render_adapter_summary(summary), encoding="utf-8"),
    })
    return AdapterStageResult(reports, json_path, md_path)


def _adapter(out: Path, label: str, cfg: AdapterConfig, pair: tuple[str, str], train: dict[str, FeatureSet], *,
             resume: bool, device: str, progress: bool) -> Adapter:
    """The adapter of ``pair`` under ``out/adapters``: reused when resuming with the same settings, else trained."""
    new, old = pair
    path = out / "adapters" / f"{new}-{old}-{label}.npz"
    models = {"new": train[new].meta.get("checkpoint"), "old": train[old].meta.get("checkpoint")}
    adapter = load_adapter(path) if resume and path.is_file() else None
    if adapter is not None and not _same_training(adapter, cfg, models):
        logger.info("%s: trained with other settings or on other model files; training it again", path)
        adapter = None
    if adapter is None:
        logger.info("training adapter %s for %s -> %s", label, new, old)
        adapter = fit_adapter(train[new], train[old], cfg, new_version=new, old_version=old, device=device,
                              progress=progress)
        info = replace(adapter.info, training={**adapter.info.training, "models": models})
        adapter = replace(adapter, info=info)
        save_adapter(adapter, path)
    return adapter


def _same_training(adapter: Adapter, cfg: AdapterConfig, models: dict[str, str | None]) -> bool:
    """The stored adapter was trained with ``cfg`` on the features of these model files (their digests)."""
    stored = adapter.info.training
    return all(stored.get(k) == v for k, v in cfg.to_json().items()) and stored.get("models") == models
