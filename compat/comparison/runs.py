"""Runs as :func:`compat.comparison.compare_runs` reads them: a report and the feature sets behind it.

A *run* is a ``compat train`` output directory (``compat.json``, ``recipe.yaml`` and
``features/<version>.npz``) or a ``compat.json`` with its feature sets beside it (``<version>.npz``
or a ``<version>/`` directory of ``.npy`` files in the same folder, or under ``features/``). The
report says which versions, protocol and metrics the run was evaluated with; a ``recipe.yaml``
beside it gives the similarity and dimension policy (otherwise cosine and ``error``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compat.choices import parse_choice
from compat.compatibility.cell import DimPolicy
from compat.configfile import read_yaml_mapping
from compat.errors import CompatError
from compat.jsontext import read_json_object
from compat.retrieval.evaluator import Protocol
from compat.retrieval.knn import Similarity

__all__ = ["Run", "load_run"]

REPORT_NAME = "compat.json"
RECIPE_NAME = "recipe.yaml"


@dataclass(frozen=True)
class Run:
    """One evaluated chain: its report's values and where its feature sets are.

    Attributes:
        source: the ``compat.json`` read.
        versions: version names, oldest first.
        features: the feature set of each version, in ``versions`` order.
        protocol, similarity, dim_policy: how the run's cells were evaluated.
        metrics: the metric names the report holds.
        values: metric -> (query version, gallery version) -> the report's value.
    """

    source: Path
    versions: tuple[str, ...]
    features: tuple[Path, ...]
    protocol: Protocol
    similarity: Similarity
    dim_policy: DimPolicy
    metrics: tuple[str, ...]
    values: dict[str, dict[tuple[str, str], float]]

    def features_of(self, version: str) -> Path:
        """The feature set of ``version``."""
        return self.features[self.versions.index(version)]


def load_run(path: str | Path) -> Run:
    """Read a run: a ``compat train`` output directory or a ``compat.json`` beside its feature sets.

    Raises:
        CompatError: no report, a report without the keys of ``compat.json``, or a version whose
            feature set is not found (the message names the file and the field).
    """
    p = Path(path)
    report_path = p / REPORT_NAME if p.is_dir() else p
    if not report_path.is_file():
        raise CompatError(f"{p}: not a run: expected a compat train output directory or a {REPORT_NAME} file")
    report = _read_report(report_path)
    versions = tuple(report["versions"])
    base = report_path.parent
    features = tuple(_feature_path(base, v, report_path) for v in versions)
    similarity, dim_policy = _evaluation_settings(base)
    values = {m: {(versions[i], versions[j]): float(rows[i][j]) for i in range(len(versions)) for j in range(i + 1)
                  if rows[i][j] is not None}
              for m, rows in report["metrics"].items()}
    protocol = parse_choice(Protocol, report["protocol"], f"{report_path}: field protocol")
    return Run(report_path, versions, features, protocol, similarity, dim_policy, tuple(report["metrics"]), values)


def _read_report(path: Path) -> dict[str, Any]:
    report = read_json_object(path, f"the run's {REPORT_NAME}")
    for key, kind in (("versions", list), ("protocol", str), ("metrics", dict)):
        if not isinstance(report.get(key), kind):
            raise CompatError(f"{path}: field {key}: expected a {kind.__name__} (a {REPORT_NAME} of compat eval or train)")
    versions = report["versions"]
    if not versions or not all(isinstance(v, str) for v in versions) or len(set(versions)) != len(versions):
        raise CompatError(f"{path}: field versions: expected unique version names")
    for metric, rows in report["metrics"].items():
        if not isinstance(rows, list) or len(rows) != len(versions) or not all(
                isinstance(r, list) and len(r) == len(versions) for r in rows):
            raise CompatError(f"{path}: field metrics.{metric}: expected a {len(versions)} x {len(versions)} matrix")
    return report


def _feature_path(base: Path, version: str, report: Path) -> Path:
    """``<version>.npz`` or a ``<version>/`` feature directory, beside the report or under ``features/``."""
    for folder in (base / "features", base):
        if (folder / f"{version}.npz").is_file():
            return folder / f"{version}.npz"
        if (folder / version / "features.npy").is_file():
            return folder / version
    raise CompatError(f"{report}: no feature set for version {version!r}: expected {version}.npz or a {version}/ "
                      f"feature directory beside it or under {base / 'features'}")


def _evaluation_settings(base: Path) -> tuple[Similarity, DimPolicy]:
    """The similarity and dimension policy of the run's ``recipe.yaml`` (``eval``), else the defaults."""
    recipe = base / RECIPE_NAME
    if not recipe.is_file():
        return Similarity.COSINE, DimPolicy.ERROR
    evaluation = read_yaml_mapping(recipe, "recipe").get("eval") or {}
    if not isinstance(evaluation, dict):
        raise CompatError(f"{recipe}: field eval: expected a mapping")
    similarity = parse_choice(Similarity, evaluation.get("similarity", Similarity.COSINE.value), f"{recipe}: eval.similarity")
    policy = parse_choice(DimPolicy, evaluation.get("dim_policy", DimPolicy.ERROR.value), f"{recipe}: eval.dim_policy")
    return similarity, policy
