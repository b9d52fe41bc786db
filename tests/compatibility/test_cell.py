"""One cell, one path: ``compat eval``, ``compat gate`` and the adapter evaluation give the same cells.

Regression: a feature set whose metadata declares ``compatible_dim`` (BT^2, BCT across feature sizes)
was evaluated by ``compat eval`` but refused by ``compat gate`` ("feature sizes differ").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compat.adapters import AdapterConfig, evaluate_with_adapters, fit_adapter
from compat.cli import cli
from compat.compatibility import Version
from compat.features import FeatureSet, load_features, save_features
from compat.retrieval import RetrievalEvaluator

N, C = 240, 6
METRICS = ("cmc@1", "cmc@5", "map")


@pytest.fixture(scope="module")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An old 64-d set and a new 96-d set whose first 64 coordinates meet the old space
    (``meta.compatible_dim = 64``); same ids and labels, rows stored in another order."""
    root = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(C), N // C)
    ids = rng.permutation(np.arange(700, 700 + N))
    centres = rng.normal(size=(C, 64))
    old = centres[labels] + 1.4 * rng.normal(size=(N, 64))
    head = centres[labels] + 0.9 * rng.normal(size=(N, 64))
    new = np.hstack([head, rng.normal(size=(C, 32))[labels] + 0.5 * rng.normal(size=(N, 32))])
    perm = rng.permutation(N)
    old_fs = FeatureSet.from_arrays(old, labels, ids, meta={"version": "v1"})
    new_fs = FeatureSet.from_arrays(new[perm], labels[perm], ids[perm], meta={"version": "v2", "compatible_dim": 64})
    return {"old": save_features(old_fs, root / "old.npz"), "new": save_features(new_fs, root / "new.npz")}


def _all_cells_policy(tmp: Path) -> Path:
    """Every metric's compatibility and improvement checks: their cells are new/old, old/old, new/new."""
    cells = [(m, k) for m in METRICS for k in ("compatibility", "improvement")]
    checks = [f"  - {{kind: {k}, metric: '{m}', threshold: -1.0, required: {'true' if i == 0 else 'false'}}}"
              for i, (m, k) in enumerate(cells)]  # a policy needs a required check
    path = tmp / "policy.yaml"
    path.write_text("checks:\n" + "\n".join(checks) + "\n", encoding="utf-8")
    return path


def test_gate_accepts_what_eval_accepts_when_compatible_dim_is_declared(sizes, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["gate", "--old", str(sizes["old"]), "--new", str(sizes["new"]),
                                      "--out", str(tmp_path / "gate"), "--n-resamples", "200"])
    assert result.exit_code in (0, 1), result.output
    assert "feature sizes differ" not in result.output
    assert (tmp_path / "gate" / "gate.json").is_file()


def test_the_same_files_give_the_same_cells_through_eval_gate_and_adapters(sizes, tmp_path) -> None:
    runner = CliRunner()
    ev = runner.invoke(cli, ["eval", "--version", f"v1={sizes['old']}", "--version", f"v2={sizes['new']}",
                             "--out", str(tmp_path / "eval")])
    assert ev.exit_code == 0, ev.output
    matrix = json.loads((tmp_path / "eval" / "compat.json").read_text(encoding="utf-8"))["metrics"]
    from_eval = {m: {"new/old": matrix[m][1][0], "old/old": matrix[m][0][0], "new/new": matrix[m][1][1]}
                 for m in METRICS}

    gate = runner.invoke(cli, ["gate", "--old", str(sizes["old"]), "--new", str(sizes["new"]), "--policy",
                               str(_all_cells_policy(tmp_path)), "--n-resamples", "100", "--out", str(tmp_path / "g")])
    assert gate.exit_code == 0, gate.output
    checks = json.loads((tmp_path / "g" / "gate.json").read_text(encoding="utf-8"))["checks"]
    from_gate: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    for check in checks:
        assert check["n_queries"] == N  # every query has positives: the paired means are the cell means
        from_gate[check["metric"]].update(check["cells"])

    old, new = load_features(sizes["old"]), load_features(sizes["new"])
    adapter = fit_adapter(new, old, AdapterConfig(kind="procrustes", forward="none"))
    adapted = evaluate_with_adapters([Version("v1", old), Version("v2", new)], RetrievalEvaluator(METRICS),
                                     {("v2", "v1"): adapter})
    cells = {c.value: values for c, values in adapted.adapters[0].cells.items()}
    from_adapters = {m: {name: cells[name][m] for name in ("new/old", "old/old", "new/new")} for m in METRICS}

    assert from_gate == from_eval
    assert from_adapters == from_eval
    # the declaration decides the cross cell: the first 64 coordinates of v2 against v1
    prefix = FeatureSet.from_arrays(new.features[:, :64], new.labels, new.ids)
    assert from_eval["cmc@1"]["new/old"] == RetrievalEvaluator(METRICS).evaluate(prefix, old)["cmc@1"]
