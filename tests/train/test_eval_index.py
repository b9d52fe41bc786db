"""A recipe's ``eval.index``: validated with the recipe, and the run's evaluation records exact and ANN
compatibility together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compat.errors import CompatError
from compat.features import FeatureSet, save_features
from compat.retrieval.index import IndexSpec
from compat.train.config import Recipe, load_recipe
from compat.train.evaluation import build_evaluator, evaluate_run

pytest.importorskip("faiss")


def test_eval_index_is_validated_with_the_recipe(tmp_path):
    recipe = Recipe.model_validate({"name": "x", "eval": {"index": {"factory": "IVF64,PQ8", "nprobe": 8}}})
    assert recipe.eval.index == IndexSpec(factory="IVF64,PQ8", nprobe=8)
    assert recipe.resolved()["eval"]["index"]["factory"] == "IVF64,PQ8"
    assert build_evaluator(recipe.eval, "cpu").metric_names == ("cmc@1", "cmc@5", "map", "map@10")
    path = tmp_path / "r.yaml"
    path.write_text("eval:\n  index: {factory: HNSW32, efsearch: 64}\n", encoding="utf-8")
    with pytest.raises(CompatError, match=r"eval.index.efsearch: unknown key"):
        load_recipe(path)
    with pytest.raises(CompatError, match=r"eval.index.nprobe"):
        load_recipe(path, ["eval.index={factory: Flat, nprobe: 0}"])


def test_evaluate_run_writes_exact_and_ann_values(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 8))
    paths = []
    for t, noise in enumerate((1.0, 0.6)):
        fs = FeatureSet.from_arrays(centres[labels] + noise * rng.normal(size=(200, 8)), labels)
        paths.append(save_features(fs, tmp_path / "features" / f"v{t}.npz"))
    recipe = Recipe.model_validate({"name": "x", "eval": {"metrics": ["cmc@1"], "index": {"factory": "HNSW8"}}})
    report = evaluate_run(recipe, paths, tmp_path, "cpu", progress=False)
    doc = json.loads((tmp_path / "compat.json").read_text())
    assert list(doc["metrics"]) == ["cmc@1", "map@10"] and doc["index"]["factory"] == "HNSW8"
    assert doc["index"]["metrics"]["cmc@1"] == report.index.matrices["cmc@1"]
