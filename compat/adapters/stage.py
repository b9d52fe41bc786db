"""The adapter stage of a recipe: after ``train_chain``, adapters between its frozen models.

For every pair ``NEW:OLD`` of the recipe's ``adapters`` section and every backward adapter it
lists, the stage trains ``B`` and ``F`` on the two models' features of the training split, saves
the adapter, and evaluates the chain with it on the evaluation split. Layout under ``out``::

    out/features/train/v0.npz            training-split features (reused while model.pt is unchanged)
    out/adapters/v1-v0-perp.npz          one adapter file per pair and backward adapter
    out/adapters/perp/compat.json, ...   the chain evaluated with that adapter (compat.md, compat.png,
                                         backfill.png)
    out/adapters/summary.json, summary.md  every adapter's cells and backfill areas side by side
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from compat._atomic import atomic_path
from compat.adapters.adapter import Adapter
from compat.adapters.evaluate import AdaptedChainReport, evaluate_with_adapters
from compat.adapters.fit import AdapterConfig, fit_adapter
from compat.adapters.io import load_adapter, save_adapter
from compat.adapters.report import write_adapted_reports
from compat.errors import CompatError
from compat.features import FeatureSet, load_features, save_features

__all__ = ["AdapterStageResult", "adapter_configs", "run_adapter_stage"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterStageResult:
    """Per backward adapter (by name), the adapted chain report; and the summary files."""

    reports: dict[str, AdaptedChainReport]
    summary_json: Path
    summary_md: Path


def adapter_configs(recipe) -> dict[str, AdapterConfig]:
    """The recipe's backward adapters as :class:`AdapterConfig`, by name (default: ``perp``,
    ``lambda12``, ``procrustes``; a name given twice is an error)."""
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


def _pairs(recipe, names: list[str]) -> list[tuple[str, str]]:
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


def _train_features(recipe, name: str, out: Path, *, device: str, data_root: str | None) -> FeatureSet:
    """Training-split features of version ``name``, extracted once per trained model."""
    from torch.utils.data import Subset

    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.train.chain import load_model, training_pool
    from compat.train.extract import extract_features, file_digest

    model_path = out / name / "model.pt"
    digest = file_digest(model_path)
    path = out / "features" / "train" / f"{name}.npz"
    d = recipe.data
    # eval_split val: the held-out images are for evaluation only, the adapters train on the rest
    split = "train" if d.eval_split != "val" else f"train-without-val-{d.val_fraction:g}"
    if path.is_file():
        cached = load_features(path)
        if cached.meta.get("checkpoint") == digest and cached.meta.get("split") == split:
            return cached
    ds = build_dataset(d.dataset, root=data_root or d.root, split="train", download=d.download,
                       train_transform=False)
    pool, _ = training_pool(recipe, dataset_labels(ds))
    if pool is not None:
        ds = Subset(ds, pool.tolist())
    model = load_model(model_path, device=device)
    meta = {"version": name, "dataset": d.dataset, "split": split, "recipe": recipe.name, "checkpoint": digest}
    fs = extract_features(model, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), device=device,
                          batch_size=recipe.train.eval_batch_size, num_workers=d.num_workers, meta=meta)
    save_features(fs, path)
    return fs


def run_adapter_stage(recipe, versions: list[str] | tuple[str, ...], *, out: Path, device: str = "cpu",
                      data_root: str | None = None, resume: bool = False, track: bool = False,
                      experiment: str | None = None) -> AdapterStageResult:
    """Train, save and evaluate the recipe's adapters (the chain must have been trained under ``out``).

    Args:
        recipe: a validated recipe with an ``adapters`` section.
        versions: the chain's version names, oldest first (``train_chain``'s report has them).
        out: the directory ``train_chain`` wrote.
        device: for feature extraction and adapter training.
        data_root: overrides ``recipe.data.root``.
        resume: reuse adapter files already under ``out/adapters`` that were trained with the
            same settings.
        track, experiment: log each adapted evaluation to MLflow (run ``adapters-<name>``).
    """
    from compat.compatibility.matrix import Version
    from compat.retrieval.evaluator import RetrievalEvaluator
    from compat.tracking import log_evaluation, tracking_enabled

    if recipe.adapters is None:
        raise CompatError("recipe: no 'adapters' section")
    section = recipe.adapters
    configs = adapter_configs(recipe)
    names = list(versions)
    if len(names) < 2:
        raise CompatError("adapters: the chain needs at least two versions")
    pairs = _pairs(recipe, names)
    chain = [Version(n, load_features(out / "features" / f"{n}.npz")) for n in names]
    needed = sorted({n for pair in pairs for n in pair}, key=names.index)
    train = {n: _train_features(recipe, n, out, device=device, data_root=data_root) for n in needed}
    e = recipe.eval
    evaluator = RetrievalEvaluator(tuple(e.metrics), protocol=e.protocol, similarity=e.similarity,
                                   device="cuda" if device.startswith("cuda") else "cpu")
    reports: dict[str, AdaptedChainReport] = {}
    for label, cfg in configs.items():
        adapters: dict[tuple[str, str], Adapter] = {}
        paths: dict[tuple[str, str], str] = {}
        for new, old in pairs:
            path = out / "adapters" / f"{new}-{old}-{label}.npz"
            adapter = load_adapter(path) if resume and path.is_file() else None
            if adapter is not None and not _same_training(adapter, cfg):
                logger.info("%s: trained with other settings; training it again", path)
                adapter = None
            if adapter is None:
                logger.info("training adapter %s for %s -> %s", label, new, old)
                adapter = fit_adapter(train[new], train[old], cfg, new_version=new, old_version=old, device=device)
                save_adapter(adapter, path)
            adapters[(new, old)], paths[(new, old)] = adapter, str(path.relative_to(out))
        adapted = evaluate_with_adapters(chain, evaluator, adapters, paths=paths, dim_policy=e.dim_policy,
                                         backfill=section.backfill, backfill_points=section.backfill_points,
                                         seed=recipe.seed)
        files = write_adapted_reports(adapted, out / "adapters" / label)
        reports[label] = adapted
        if tracking_enabled(track):
            inputs = {f"{n}:{o}": {k: v for k, v in a.info.to_json().items() if k != "training"}
                      for (n, o), a in adapters.items()}
            log_evaluation(adapted.report, inputs=inputs, files=files, run_name=f"adapters-{label}",
                           experiment=experiment)
    summary = summarize_stage(reports)
    json_path, md_path = out / "adapters" / "summary.json", out / "adapters" / "summary.md"
    for path, text in ((json_path, json.dumps(summary, indent=2) + "\n"), (md_path, render_summary(summary))):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return AdapterStageResult(reports, json_path, md_path)


def _same_training(adapter: Adapter, cfg: AdapterConfig) -> bool:
    stored = adapter.info.training
    return all(stored.get(k) == v for k, v in cfg.to_json().items())


def summarize_stage(reports: dict[str, AdaptedChainReport]) -> dict:
    """``{"NEW:OLD": {"cells": {cell: {metric: v}}, "adapters": {label: {...}}}}`` across adapters."""
    out: dict = {}
    for label, adapted in reports.items():
        extra = adapted.extra_json()
        for key, a in extra.get("adapters", {}).items():
            pair = out.setdefault(key, {"raw": {}, "adapters": {}})
            cells = a["cells"]
            pair["raw"] = {c: cells[c] for c in ("old/old", "new/new", "new/old")}
            entry = {"cells": {c: v for c, v in cells.items() if c.startswith("B(")}, "ecc": a["ecc"],
                     "retention": a["retention"], "path": a["path"]}
            for json_key, entry_key in (("backfill", "backfill_area"), ("backfill_forward", "backfill_area_forward")):
                bf = extra.get(json_key, {}).get(key)
                if bf is not None:
                    entry[entry_key] = {o: v["area"] for o, v in bf["orderings"].items()}
            pair["adapters"][label] = entry
    return out


def render_summary(summary: dict) -> str:
    """Markdown: per pair, one row per cell (raw and each adapter's), one column per metric."""
    lines = ["# Adapters: summary", ""]
    for key, pair in summary.items():
        metrics = list(pair["raw"]["old/old"])
        lines += [f"## {key}", "", "| cell | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for cell, values in pair["raw"].items():
            lines.append(f"| {cell} | " + " | ".join(f"{100 * values[m]:.2f}" for m in metrics) + " |")
        for label, entry in pair["adapters"].items():
            for cell, values in entry["cells"].items():
                marks = []
                for m in metrics:
                    text = f"{100 * values[m]:.2f}"
                    ok = entry["ecc"][m].get(cell)
                    marks.append(text + ("" if ok is None else (" ✓" if ok else " ✗")))
                lines.append(f"| {cell.replace('B(', f'B_{label}(')} | " + " | ".join(marks) + " |")
        lines.append("")
        for label, entry in pair["adapters"].items():
            kept = ", ".join(f"{m} {100 * v:.2f}%" for m, v in entry["retention"].items() if v is not None)
            lines.append(f"- {label}: B(new)/B(new) keeps {kept} of new/new")
            for entry_key, start in (("backfill_area", "old"), ("backfill_area_forward", "F(old)")):
                for ordering, area in entry.get(entry_key, {}).items():
                    areas = ", ".join(f"{m} {100 * v:.2f}" for m, v in area.items())
                    lines.append(f"  - backfill area from {start}, {ordering}: {areas}")
        lines.append("")
    return "\n".join(lines)
