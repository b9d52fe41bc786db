"""A recipe's evaluation: the evaluator its ``eval`` block describes, and the chain's reports."""

from __future__ import annotations

from pathlib import Path

from compat.compatibility.indexed import IndexSetup, with_index_metrics
from compat.compatibility.matrix import CompatibilityReport, Version, evaluate_chain
from compat.compatibility.report import write_reports
from compat.features import load_features
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.train.config import EvalConfig, Recipe

__all__ = ["build_evaluator", "evaluate_run"]


def build_evaluator(cfg: EvalConfig, device: str, *, progress: bool = True) -> RetrievalEvaluator:
    """The evaluator of a recipe's ``eval`` block, on the training device's kind (``cuda`` for ``cuda:N``);
    with ``eval.index``, ``map@k`` is added to the metrics so the exact side shows it too."""
    metrics = tuple(cfg.metrics) if cfg.index is None else with_index_metrics(cfg.metrics, cfg.index.k)
    return RetrievalEvaluator(metrics, protocol=cfg.protocol, similarity=cfg.similarity,
                              backend=cfg.backend, device="cuda" if device.startswith("cuda") else "cpu",
                              memory_budget=cfg.memory_budget, progress=progress)


def evaluate_run(recipe: Recipe, feature_paths: list[Path], out: Path, device: str, *,
                 independent: Path | None = None, progress: bool = True) -> CompatibilityReport:
    """Evaluate the chain of ``feature_paths`` (oldest first; versions named by file stem) and write
    ``compat.json``, ``compat.md`` and ``compat.png`` under ``out``.

    Args:
        independent: features of the independent model on the newest version's data (update gain).
    """
    chain = [Version(p.stem, load_features(p)) for p in feature_paths]
    reference = load_features(independent) if independent is not None else None
    evaluator = build_evaluator(recipe.eval, device, progress=progress)
    index = None if recipe.eval.index is None else IndexSetup(recipe.eval.index)
    report = evaluate_chain(chain, evaluator, dim_policy=recipe.eval.dim_policy, independent=reference, index=index)
    write_reports(report, out)
    return report
