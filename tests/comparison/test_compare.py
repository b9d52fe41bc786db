"""compat compare: the difference of two runs' cells with a paired bootstrap interval, against a
bootstrap computed by hand on a tiny case, and its bad inputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compat.cli import cli
from compat.comparison import compare_runs, load_run
from compat.errors import CompatError
from compat.features import FeatureSet, save_features
from tests.cli_runs import TINY, train_recipe_text

LABELS = np.array([0, 0, 1, 1])
IDS = np.array([10, 11, 12, 13])
# Items on the unit circle at these angles (degrees). Leave-one-out top-1 with cosine similarity:
# A: 0, 10 | 90, 100 -> every nearest neighbour is of the query's class: hits 1, 1, 1, 1.
# B: 0, 10 | 50, 300 -> 50's nearest is 10 (40 away), 300's is 0 (60 away): hits 1, 1, 0, 0.
ANGLES_A = [0, 10, 90, 100]
ANGLES_B = [0, 10, 50, 300]


def _circle(angles: list[float]) -> np.ndarray:
    r = np.deg2rad(np.asarray(angles, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def _run(root: Path, name: str, angles: list[float], *, ids=IDS, metrics=("cmc@1",), protocol="loo") -> Path:
    """A compat.json with its feature sets beside it, written by ``compat eval`` (v1 = v0 rotated)."""
    out = root / name
    out.mkdir()
    for version, shift in (("v0", 0.0), ("v1", 3.0)):
        save_features(FeatureSet.from_arrays(_circle([a + shift for a in angles]), LABELS, ids), out / f"{version}.npz")
    args = ["eval", "--version", f"v0={out / 'v0.npz'}", "--version", f"v1={out / 'v1.npz'}", "--protocol", protocol,
            "--out", str(out), "--quiet"]
    for m in metrics:
        args += ["--metric", m]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out


def _hand_bootstrap(diffs: np.ndarray, n_resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile interval of the mean difference over resamples of the queries, one resample at a
    time: the rows drawn by numpy.random.default_rng(seed).integers(0, n, (B, n))."""
    rows = np.random.default_rng(seed).integers(0, len(diffs), size=(n_resamples, len(diffs)))
    stats = [float(np.mean([diffs[r] for r in row])) for row in rows]
    alpha = 1 - confidence
    return float(np.percentile(stats, 100 * alpha / 2)), float(np.percentile(stats, 100 * (1 - alpha / 2)))


def test_difference_and_interval_match_a_bootstrap_by_hand(tmp_path):
    a, b = _run(tmp_path, "a", ANGLES_A), _run(tmp_path, "b", ANGLES_B)
    comparison = compare_runs(a, b, n_resamples=400, seed=7, progress=False)
    assert [(c.cell_a, c.metric) for c in comparison.cells] == [
        (("v0", "v0"), "cmc@1"), (("v1", "v0"), "cmc@1"), (("v1", "v1"), "cmc@1")]
    own = comparison.cells[0]
    assert (own.value_a, own.value_b, own.n_queries) == (1.0, 0.5, 4)
    diffs = np.array([1, 1, 1, 1]) - np.array([1, 1, 0, 0])
    low, high = _hand_bootstrap(diffs, 400, 7, 0.95)
    assert own.difference.value == pytest.approx(0.5)
    assert (own.difference.low, own.difference.high) == (pytest.approx(low), pytest.approx(high))
    assert (low, high) == (0.0, 1.0) and own.verdict == "tie"  # 4 queries cannot tell them apart
    # Every value equals the runs' reports (the cells are evaluated again from the feature sets).
    report_b = json.loads((b / "compat.json").read_text())
    for cell in comparison.cells:
        i, j = (int(v[1]) for v in cell.cell_b)
        assert cell.value_b == report_b["metrics"]["cmc@1"][i][j]


def test_a_run_against_itself_differs_by_exactly_zero(tmp_path):
    a = _run(tmp_path, "a", ANGLES_B)
    for cell in compare_runs(a, a, n_resamples=50, progress=False).cells:
        d = cell.difference
        assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0) and cell.verdict == "tie"


def test_cli_writes_compare_json_and_md(tmp_path):
    a, b = _run(tmp_path, "a", ANGLES_A), _run(tmp_path, "b", ANGLES_B)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", str(a / "compat.json"), str(b), "--n-resamples", "100",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compare.json").read_text())
    assert doc["metrics"] == ["cmc@1"] and doc["versions"] == [{"a": "v0", "b": "v0"}, {"a": "v1", "b": "v1"}]
    first = doc["cells"][0]
    assert (first["a"], first["value_a"], first["value_b"], first["difference"], first["n_queries"]) == (
        "v0/v0", 1.0, 0.5, 0.5, 4)
    assert "| v0/v0 | 100.00 | 50.00 | +50.00 pp |" in (out / "compare.md").read_text()
    matched = CliRunner().invoke(cli, ["compare", str(a), str(b), "--match", "v1=v0", "--n-resamples", "10",
                                       "--out", str(tmp_path / "m"), "--quiet"])
    assert matched.exit_code == 0, matched.output
    assert [c["a"] + " vs " + c["b"] for c in json.loads((tmp_path / "m" / "compare.json").read_text())["cells"]] == [
        "v1/v1 vs v0/v0"]


@pytest.mark.parametrize(
    ("b_kwargs", "args", "message"),
    [
        ({"ids": IDS + 100}, [], "query ids differ"),
        ({"metrics": ("cmc@1", "map")}, [], "different metrics"),
        ({"metrics": ("cmc@1", "map")}, ["--metric", "map"], "different metrics: .*a/compat.json reports cmc@1 only"),
        ({"protocol": "template"}, [], "protocol loo, .* template"),
        ({}, ["--match", "v1=v9"], "has no version 'v9'"),
        ({}, ["--match", "v1"], "is not A_VERSION=B_VERSION"),
        ({}, ["--match", "v0=v1", "--match", "v1=v0"], "same order"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_no_report(tmp_path, b_kwargs, args, message):
    a, b = _run(tmp_path, "a", ANGLES_A), _run(tmp_path, "b", ANGLES_B, **b_kwargs)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), *args, "--n-resamples", "10", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("compat: error:") and len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output
    assert not out.exists()


@pytest.mark.parametrize(("protocol", "message"), [("pairs", "protocol pairs has no per-query values"),
                                                     ("query-gallery", "protocol query-gallery is not supported")])
def test_protocols_without_a_query_per_feature_set_are_refused(tmp_path, protocol, message):
    a = _run(tmp_path, "a", ANGLES_A)
    report = json.loads((a / "compat.json").read_text())
    (a / "compat.json").write_text(json.dumps(report | {"protocol": protocol}))
    with pytest.raises(CompatError, match=message):
        compare_runs(a, a, n_resamples=10, progress=False)


def test_a_report_off_in_the_7th_digit_is_refused_with_the_likely_reason(tmp_path):
    a = _run(tmp_path, "a", ANGLES_A)
    report = json.loads((a / "compat.json").read_text())
    metric = next(iter(report["metrics"]))
    report["metrics"][metric][0][0] += 1e-7  # as a report written before exact ranks
    (a / "compat.json").write_text(json.dumps(report))
    with pytest.raises(CompatError, match=r"but the report says [0-9.]+; a report written by an earlier compat"):
        compare_runs(a, a, n_resamples=10, progress=False)


def test_feature_sets_that_are_not_the_runs_are_refused(tmp_path):
    a, b = _run(tmp_path, "a", ANGLES_A), _run(tmp_path, "b", ANGLES_B)
    save_features(FeatureSet.from_arrays(_circle(ANGLES_A), LABELS, IDS), b / "v0.npz")  # swapped behind the report
    with pytest.raises(CompatError, match="sets is 1 but the report says 0.5; the feature sets or the evaluation"):
        compare_runs(a, b, n_resamples=10, progress=False)
    (b / "v1.npz").unlink()
    with pytest.raises(CompatError, match="no feature set for version 'v1'"):
        load_run(b)
    with pytest.raises(CompatError, match="not a run"):
        load_run(tmp_path / "nowhere")


def test_a_training_run_is_read_from_its_output_directory(tmp_path):
    result, out = train_recipe_text(tmp_path, TINY)
    assert result.exit_code == 0, result.output
    run = load_run(out)
    assert run.versions == ("v0", "v1") and run.features[1] == out / "features" / "v1.npz"
    report = json.loads((out / "compat.json").read_text())
    # The newest version against the oldest, each on its own gallery: the improvement, paired on 1,000 queries.
    comparison = compare_runs(out, out, versions={"v1": "v0"}, n_resamples=200, progress=False)
    assert [(c.metric, c.cell_a, c.cell_b) for c in comparison.cells] == [
        ("cmc@1", ("v1", "v1"), ("v0", "v0")), ("map", ("v1", "v1"), ("v0", "v0"))]
    for cell in comparison.cells:
        m = report["metrics"][cell.metric]
        assert (cell.value_a, cell.value_b, cell.n_queries) == (m[1][1], m[0][0], 1000)
        assert cell.difference.value == pytest.approx(m[1][1] - m[0][0])
        assert math.isfinite(cell.difference.low) and cell.difference.low <= cell.difference.value <= cell.difference.high
