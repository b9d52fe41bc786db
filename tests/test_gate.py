"""Tests of the gate (``compat.gate`` and ``compat gate``) on small seeded synthetic feature sets, tiny
pixel-projection models over the bundled MNIST subset, and a temporary sqlite MLflow registry.

Covers: the bootstrap against a slow reference, hand-computed cases and scipy; the checks on
compatible, incompatible and noise-level candidates (noise never passes); pairing by query id; the
update gain and the chain's max drop; exit codes 0 / 1 / 2; gate.json / gate.md and their schema; the
step summary; model files and ``models:/`` inputs loaded safely; promotion moving ``@champion`` only
on a pass; every bad input of ``tests/test_cli_eval.py`` through the gate, plus the gate's own.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from compat.cli import cli
from compat.errors import CompatError
from compat.features import FeatureSet, save_features
from compat.gate import (
    DEFAULT_POLICY,
    CheckKind,
    GatePolicy,
    bootstrap_ci,
    load_policy,
    promote,
    register_model,
    resample_indices,
    run_gate,
)
from compat.retrieval.evaluator import RetrievalEvaluator
from tests import test_cli_eval as eval_cases

REPO = Path(__file__).resolve().parents[1]
N, C, D = 300, 6, 16  # items, classes (50 each), feature size
CHECK_KEYS = {
    "name",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "passed",
    "required",
    "metric",
    "kind",
    "rule",
    "skipped",
    "n_queries",
    "cells",
}
PASS_ON_TIES = "checks:\n  - {kind: max_drop, metric: cmc@1, threshold: 0.0}\n"  # identical models pass this

data = eval_cases.data  # the evaluator tests' feature files, for their bad inputs


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests running inside GitHub Actions must not append to the real step summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


# --------------------------------------------------------------------------------------------------
# Synthetic feature sets
# --------------------------------------------------------------------------------------------------


def _fs(x: np.ndarray, labels: np.ndarray, ids: np.ndarray, name: str) -> FeatureSet:
    return FeatureSet.from_arrays(x, labels, ids, meta={"version": name}, source=name)


@pytest.fixture(scope="module")
def sets() -> dict[str, FeatureSet]:
    """One 'dataset' seen by several models.

    old: centres + noise 1.5; good: same centres, noise 0.9 (compatible and better); rotated: good
    times a random orthogonal matrix (as good, incompatible); noisy[k]: old + noise 0.05 (seeds
    100 + k: the same model up to noise); indep: other centres, noise 0.6.
    chain0 / old2 / new2 (8 + 8 coordinates): old2 shares its first half with chain0 and its second
    half with new2, so new2 is close to old2 but useless on chain0's gallery.
    """
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(C), N // C)
    ids = rng.permutation(np.arange(5000, 5000 + N))
    centres = rng.normal(size=(C, D))
    old = centres[labels] + 1.5 * rng.normal(size=(N, D))
    good = centres[labels] + 0.9 * rng.normal(size=(N, D))
    rotation, _ = np.linalg.qr(rng.normal(size=(D, D)))
    out = {
        "old": _fs(old, labels, ids, "old"),
        "good": _fs(good, labels, ids, "good"),
        "rotated": _fs(good @ rotation, labels, ids, "rotated"),
        "indep": _fs(rng.normal(size=(C, D))[labels] + 0.6 * rng.normal(size=(N, D)), labels, ids, "indep"),
    }
    for k in range(6):
        noise = np.random.default_rng(100 + k).normal(size=(N, D))
        out[f"noisy{k}"] = _fs(old + 0.05 * noise, labels, ids, f"noisy{k}")
    h = D // 2
    ca, cb = rng.normal(size=(C, h)), rng.normal(size=(C, h))
    out["chain0"] = _fs(
        np.hstack([ca[labels] + rng.normal(size=(N, h)), 0.3 * rng.normal(size=(N, h))]), labels, ids, "chain0"
    )
    out["old2"] = _fs(
        np.hstack([ca[labels] + rng.normal(size=(N, h)), cb[labels] + rng.normal(size=(N, h))]), labels, ids, "old2"
    )
    out["new2"] = _fs(
        np.hstack([0.3 * rng.normal(size=(N, h)), cb[labels] + 0.5 * rng.normal(size=(N, h))]), labels, ids, "new2"
    )
    return out


@pytest.fixture(scope="module")
def files(sets, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-features")
    return {name: save_features(fs, root / f"{name}.npz") for name, fs in sets.items()}


def policy(*checks: dict, confidence: float = 0.95) -> GatePolicy:
    return GatePolicy.model_validate({"confidence": confidence, "checks": list(checks)})


def cell(query: FeatureSet, gallery: FeatureSet, metric: str = "cmc@1", protocol: str = "loo") -> float:
    return RetrievalEvaluator((metric,), protocol=protocol).evaluate(query, gallery)[metric]


# --------------------------------------------------------------------------------------------------
# 1. The bootstrap
# --------------------------------------------------------------------------------------------------


def _slow_percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    h = q * (len(s) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def test_bootstrap_matches_a_slow_loop() -> None:
    rng = np.random.default_rng(3)
    cols = np.stack([rng.integers(0, 2, 9), rng.random(9)], axis=1).astype(float)
    ci = bootstrap_ci(cols, lambda m: m[:, 0] - m[:, 1], n_resamples=301, seed=11)
    stats = []
    for batch in resample_indices(9, 301, seed=11):
        for row in batch:
            a = sum(cols[i, 0] for i in row) / len(row)
            b = sum(cols[i, 1] for i in row) / len(row)
            stats.append(a - b)
    assert len(stats) == 301
    assert ci.value == pytest.approx(cols[:, 0].mean() - cols[:, 1].mean(), abs=1e-12)
    assert ci.low == pytest.approx(_slow_percentile(stats, 0.025), abs=1e-12)
    assert ci.high == pytest.approx(_slow_percentile(stats, 0.975), abs=1e-12)
    assert (ci.n, ci.n_resamples, ci.confidence) == (9, 301, 0.95)


def test_bootstrap_hand_computed_cases() -> None:
    # Two queries, one hit: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so with
    # 400 resamples about 100 are 0 and 100 are 1: the 2.5th and 97.5th percentiles are exactly 0 and 1.
    ci = bootstrap_ci(np.array([[0.0], [1.0]]), lambda m: m[:, 0], n_resamples=400, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.5, 0.0, 1.0)
    # Every query gains the same: no uncertainty.
    ci = bootstrap_ci(np.array([[1.0, 0.75]] * 5), lambda m: m[:, 0] - m[:, 1], n_resamples=50, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.25, 0.25, 0.25)
    # One query: every resample is that query.
    ci = bootstrap_ci(np.array([[0.3]]), lambda m: m[:, 0], n_resamples=7, seed=0)
    assert ci.value == ci.low == ci.high == pytest.approx(0.3)


def test_bootstrap_agrees_with_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(5)
    a = (rng.random(80) < 0.7).astype(float)
    b = (rng.random(80) < 0.55).astype(float)
    ours = bootstrap_ci(np.stack([a, b], 1), lambda m: m[:, 0] - m[:, 1], n_resamples=20000, seed=1)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: x.mean(axis) - y.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="percentile",
        rng=np.random.default_rng(2),
    )
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.012)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.012)


def test_bootstrap_is_seeded() -> None:
    x = np.random.default_rng(0).random((50, 1))

    def mean(m: np.ndarray) -> np.ndarray:
        return m[:, 0]

    assert bootstrap_ci(x, mean, seed=4) == bootstrap_ci(x, mean, seed=4)
    assert bootstrap_ci(x, mean, seed=4).low != bootstrap_ci(x, mean, seed=5).low


def test_undefined_resamples_only_widen_the_interval() -> None:
    def defined_above_zero(m: np.ndarray) -> np.ndarray:
        return np.where(m[:, 0] > 0, m[:, 0], np.nan)

    # Four queries, two hits: 1/16 of the resamples have no hit, more than the 2.5% in each tail.
    ci = bootstrap_ci(np.array([[0.0], [1.0]] * 2), defined_above_zero, n_resamples=400, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.5, -np.inf, np.inf)
    # Sixteen queries: 1 in 65536 resamples has no hit; the interval is the plain one.
    x = np.array([[0.0], [1.0]] * 8)
    ci = bootstrap_ci(x, defined_above_zero, n_resamples=400, seed=0)
    plain = bootstrap_ci(x, lambda m: m[:, 0], n_resamples=400, seed=0)
    assert (ci.low, ci.high) == (plain.low, plain.high)


@pytest.mark.parametrize("protocol", ["loo", "template"])
def test_retrieval_results_carry_per_query_values(sets, protocol) -> None:
    result = RetrievalEvaluator(("cmc@1", "cmc@5", "map"), protocol=protocol).evaluate(sets["good"], sets["old"])
    assert result.counted.shape == (N,) and result.counted.sum() == result.n_queries - result.n_without_positive
    for metric, value in result.values.items():
        per_query = result.per_query[metric]
        assert per_query.shape == (N,) and per_query[result.counted].mean() == pytest.approx(value, abs=1e-12)
    assert set(np.unique(result.per_query["cmc@1"])) <= {0.0, 1.0}
    pairs = RetrievalEvaluator(protocol="pairs", pairs=50).evaluate(sets["good"], sets["old"])
    assert pairs.per_query is None and pairs.counted is None


# --------------------------------------------------------------------------------------------------
# 2. The checks (library)
# --------------------------------------------------------------------------------------------------


def test_compatible_candidate_passes(sets) -> None:
    verdict = run_gate(sets["old"], sets["good"], load_policy(), n_resamples=1000)
    assert verdict.passed and not verdict.failed
    by = {c.name: c for c in verdict.checks}
    compat = by["compatibility"]
    want = cell(sets["good"], sets["old"]) - cell(sets["old"], sets["old"])
    assert compat.value == pytest.approx(want, abs=1e-12) and compat.ci_low > 0
    assert compat.to_json()["cells"] == {
        "new/old": pytest.approx(cell(sets["good"], sets["old"])),
        "old/old": pytest.approx(cell(sets["old"], sets["old"])),
    }
    improvement = by["improvement"]
    assert improvement.value == pytest.approx(cell(sets["good"], sets["good"]) - cell(sets["old"], sets["old"]))
    drop = by["no-drop-on-older-galleries"]
    assert drop.value == pytest.approx(cell(sets["old"], sets["old"], "map") - cell(sets["good"], sets["old"], "map"))
    assert [d["gallery"] for d in drop.details] == ["old"]
    assert by["update-gain"].skipped and not by["update-gain"].required
    assert all(c.n_queries == N for c in verdict.checks if not c.skipped)


def test_incompatible_candidate_fails_although_better_on_its_own(sets) -> None:
    verdict = run_gate(sets["old"], sets["rotated"], load_policy(), n_resamples=1000)
    by = {c.name: c for c in verdict.checks}
    assert not verdict.passed
    assert by["improvement"].passed  # a better model...
    assert not by["compatibility"].passed and by["compatibility"].ci_high < 0  # ...that cannot search the old index
    assert not by["no-drop-on-older-galleries"].passed
    assert {c.name for c in verdict.failed} == {"compatibility", "no-drop-on-older-galleries"}


@pytest.mark.parametrize("k", range(6))
def test_noise_level_candidate_never_passes(sets, k) -> None:
    """The old model up to tiny noise: some point values come out above zero, no interval clears it."""
    checks = [
        {"kind": kind, "metric": m, "threshold": 0.0}
        for kind in ("compatibility", "improvement")
        for m in ("cmc@1", "cmc@5", "map")
    ]
    verdict = run_gate(sets["old"], sets[f"noisy{k}"], policy(*checks))
    assert not verdict.passed
    for c in verdict.checks:
        assert not c.passed and c.ci_low <= 0, c


def test_noise_with_a_positive_point_value_still_fails(sets) -> None:
    verdict = run_gate(sets["old"], sets["noisy5"], policy({"kind": "improvement", "threshold": 0.0}))
    (c,) = verdict.checks
    assert c.value > 0 and c.ci_low <= 0 and not c.passed


def test_identical_features_fail_strict_checks_and_pass_a_zero_drop(sets) -> None:
    p = policy({"kind": "compatibility", "threshold": 0.0}, {"kind": "max_drop", "threshold": 0.0})
    compat, drop = run_gate(sets["old"], sets["old"], p).checks
    assert (compat.value, compat.ci_low, compat.ci_high, compat.passed) == (0.0, 0.0, 0.0, False)
    assert (drop.value, drop.ci_high, drop.passed) == (0.0, 0.0, True)


def test_queries_are_paired_by_id_not_by_row(sets) -> None:
    g = sets["good"]
    perm = np.random.default_rng(0).permutation(N)
    shuffled = FeatureSet.from_arrays(g.features[perm], g.labels[perm], g.ids[perm], source="good")
    a = run_gate(sets["old"], g, load_policy(), n_resamples=500)
    b = run_gate(sets["old"], shuffled, load_policy(), n_resamples=500)
    for x, y in zip(a.checks, b.checks, strict=True):
        assert (x.value, x.ci_low, x.ci_high, x.passed) == (y.value, y.ci_low, y.ci_high, y.passed)


def test_update_gain_matches_its_formula(sets) -> None:
    p = policy({"kind": "update_gain", "threshold": 0.2, "metric": "map"})
    (c,) = run_gate(sets["old"], sets["good"], p, independent=sets["indep"], n_resamples=500).checks
    old_old = cell(sets["old"], sets["old"], "map")
    want = (cell(sets["good"], sets["old"], "map") - old_old) / (cell(sets["indep"], sets["indep"], "map") - old_old)
    assert c.value == pytest.approx(want, rel=1e-9)
    assert c.passed == (c.ci_low >= 0.2) and c.ci_low <= c.value <= c.ci_high
    assert {m.key for m in c.cells} == {"new/old", "old/old", "independent/independent"}


def test_update_gain_undefined_when_the_reference_is_no_better(sets) -> None:
    p = policy({"kind": "update_gain", "threshold": 0.0})
    (c,) = run_gate(sets["old"], sets["good"], p, independent=sets["old"], n_resamples=200).checks
    assert c.value is None and c.passed is False and "no better" in c.note


def test_required_update_gain_needs_an_independent_model(sets) -> None:
    with pytest.raises(CompatError, match="independent"):
        run_gate(sets["old"], sets["good"], policy({"kind": "update_gain", "threshold": 0.5}))


def test_max_drop_covers_every_older_gallery(sets) -> None:
    p = policy({"kind": "max_drop", "threshold": 0.2})
    (alone,) = run_gate(sets["old2"], sets["new2"], p, n_resamples=500).checks
    assert alone.passed
    (chained,) = run_gate(sets["old2"], sets["new2"], p, chain=[sets["chain0"]], n_resamples=500).checks
    assert not chained.passed
    drops = {d["gallery"]: d["drop"] for d in chained.details}
    assert set(drops) == {"chain[0]", "old"} and chained.value == pytest.approx(max(drops.values()))
    assert drops["chain[0]"] == pytest.approx(cell(sets["old2"], sets["chain0"]) - cell(sets["new2"], sets["chain0"]))
    assert drops["old"] == pytest.approx(alone.value)


def test_template_protocol(sets) -> None:
    evaluator = RetrievalEvaluator(("cmc@1", "map"), protocol="template")
    p = policy({"kind": "compatibility", "threshold": 0.0}, {"kind": "max_drop", "metric": "map", "threshold": 0.0})
    verdict = run_gate(sets["old"], sets["good"], p, evaluator=evaluator, n_resamples=500)
    assert verdict.passed and verdict.protocol == "template"
    want = cell(sets["good"], sets["old"], protocol="template") - cell(sets["old"], sets["old"], protocol="template")
    assert verdict.checks[0].value == pytest.approx(want)


def test_pairs_protocol_and_missing_metrics_are_refused(sets) -> None:
    with pytest.raises(CompatError, match="per-query"):
        run_gate(sets["old"], sets["good"], load_policy(), evaluator=RetrievalEvaluator(protocol="pairs"))
    with pytest.raises(CompatError, match="map"):
        run_gate(sets["old"], sets["good"], load_policy(), evaluator=RetrievalEvaluator(("cmc@1",)))


# --------------------------------------------------------------------------------------------------
# 3. The policy file
# --------------------------------------------------------------------------------------------------


def test_packaged_default_policy_is_the_configs_file() -> None:
    assert DEFAULT_POLICY.read_bytes() == (REPO / "configs" / "gate" / "default.yaml").read_bytes()
    p = load_policy()
    assert {c.kind for c in p.checks} == set(CheckKind) and p.confidence == 0.95
    assert [c.label for c in p.checks if c.required] == ["compatibility", "improvement", "no-drop-on-older-galleries"]


def test_policy_names_and_metrics_are_normalised() -> None:
    p = policy({"kind": "compatibility", "metric": "top5", "threshold": 0}, {"kind": "improvement", "threshold": 0})
    assert [c.label for c in p.checks] == ["compatibility cmc@5", "improvement cmc@1"]
    assert p.metrics == ("cmc@5", "cmc@1")


# --------------------------------------------------------------------------------------------------
# 4. The command: exit codes, files, step summary
# --------------------------------------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["gate", *map(str, args)])


def check_files(out: Path) -> dict:
    assert sorted(p.name for p in out.iterdir()) == ["gate.json", "gate.md"]  # nothing temporary left
    doc = json.loads((out / "gate.json").read_text(encoding="utf-8"))
    assert isinstance(doc["passed"], bool) and doc["checks"]
    for c in doc["checks"]:
        assert CHECK_KEYS <= set(c), c
        if c["skipped"]:
            assert c["passed"] is None and c["value"] is None
            continue
        assert isinstance(c["passed"], bool) and all(isinstance(c[k], float) for k in ("value", "ci_low", "ci_high"))
        assert c["ci_low"] <= c["value"] <= c["ci_high"]
    assert doc["passed"] == all(c["passed"] for c in doc["checks"] if c["required"])
    assert {"old", "new"} <= set(doc["inputs"]) and doc["confidence"] == 0.95
    md = (out / "gate.md").read_text(encoding="utf-8")
    assert md.startswith("## compat gate: " + ("PASSED" if doc["passed"] else "FAILED"))
    for c in doc["checks"]:
        assert f"| {c['name']} | {c['metric']} |" in md
    return doc


def test_cli_pass_exits_0(files, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("--old", files["old"], "--new", files["good"], "--out", out, "--n-resamples", 500)
    assert result.exit_code == 0, (result.output, result.exception)
    doc = check_files(out)
    assert doc["passed"] and doc["n_resamples"] == 500 and doc["seed"] == 0
    assert [c["name"] for c in doc["checks"]] == [c.label for c in load_policy().checks]
    assert doc["inputs"]["new"]["source"] == str(files["good"])
    assert "gate passed" in result.stdout and result.stderr == ""
    assert (out / "gate.md").read_text(encoding="utf-8") in result.stdout


def test_cli_fail_exits_1_and_still_reports(files, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("--old", files["old"], "--new", files["rotated"], "--out", out)
    assert result.exit_code == 1, (result.output, result.exception)
    doc = check_files(out)
    assert not doc["passed"]
    assert {c["name"]: c["passed"] for c in doc["checks"]}["compatibility"] is False
    assert "gate FAILED" in result.stdout


def test_cli_noise_fails(files, tmp_path) -> None:
    result = invoke("--old", files["old"], "--new", files["noisy0"], "--out", tmp_path / "out")
    assert result.exit_code == 1, (result.output, result.exception)


def test_cli_seed_and_resamples_are_reproducible(files, tmp_path) -> None:
    docs = []
    for k, seed in enumerate((3, 3, 4)):
        out = tmp_path / f"out{k}"
        result = invoke(
            "--old", files["old"], "--new", files["good"], "--seed", seed, "--n-resamples", 300, "--out", out
        )
        assert result.exit_code == 0, result.output
        docs.append(json.loads((out / "gate.json").read_text(encoding="utf-8")))
    assert docs[0] == docs[1] and docs[0]["checks"] != docs[2]["checks"]


def test_cli_chain_and_independent(files, tmp_path) -> None:
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(
        "checks:\n  - {kind: max_drop, threshold: 0.2}\n  - {kind: update_gain, threshold: 0.0, required: false}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = invoke(
        "--chain",
        files["chain0"],
        "--old",
        files["old2"],
        "--new",
        files["new2"],
        "--independent",
        files["indep"],
        "--policy",
        policy_file,
        "--out",
        out,
    )
    assert result.exit_code == 1, (result.output, result.exception)
    doc = check_files(out)
    drop, gain = doc["checks"]
    assert [d["gallery"] for d in drop["details"]] == ["chain[0]", "old"] and not drop["passed"]
    assert not gain["skipped"] and set(doc["inputs"]) == {"old", "new", "chain[0]", "independent"}


def test_step_summary_is_appended(files, tmp_path, monkeypatch) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    for name, code in (("good", 0), ("rotated", 1)):
        out = tmp_path / name
        result = invoke("--old", files["old"], "--new", files[name], "--out", out, "--n-resamples", 300)
        assert result.exit_code == code, result.output
    text = summary.read_text(encoding="utf-8")
    reports = [(tmp_path / n / "gate.md").read_text(encoding="utf-8") for n in ("good", "rotated")]
    assert text == "# earlier step\n" + reports[0] + reports[1]


def test_unwritable_step_summary_warns_without_changing_the_verdict(files, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a directory
    result = invoke("--old", files["old"], "--new", files["good"], "--out", tmp_path / "out", "--n-resamples", 300)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("compat: warning: GITHUB_STEP_SUMMARY")


# --------------------------------------------------------------------------------------------------
# 5. Bad input: exit 2, one line, nothing written
# --------------------------------------------------------------------------------------------------


# Cases of the evaluator's list that have no meaning for the gate: version names (the gate's inputs
# are --old / --new), separate query sets (the gate has none) and the pairs protocol (no per-query values).
NOT_FOR_GATE = {"version-twice", "query-unknown-version", "nan-in-query-set", "metric-not-for-protocol"}
GATE_NAMES = {"v1": "old", "v2": "new"}  # version names in the expected messages -> the gate's labels


def to_gate(args: list[str], expect: list[str], tmp: Path) -> tuple[list[str], list[str]]:
    """An evaluator command line as a gate command line: versions become --chain ... --old --new, metrics
    a policy file, other options pass through."""
    sources, metrics, rest = [], [], []
    it = iter(args)
    for arg in it:
        value = next(it)
        if arg == "--version":
            sources.append(value.partition("=")[2])
        elif arg == "--metric":
            metrics.append(value)
        else:
            rest += [arg, value]
    *chain, old, new = sources
    out = [f"--chain={s}" for s in chain] + ["--old", old, "--new", new, *rest]
    if metrics:
        p = tmp / "metrics-policy.yaml"
        p.write_text(
            json.dumps({"checks": [{"kind": "improvement", "metric": m, "threshold": 0} for m in metrics]}),
            encoding="utf-8",
        )
        out += ["--policy", str(p)]
    return out, [GATE_NAMES.get(e, e) for e in expect]


EVAL_BAD_INPUTS = [p for p in eval_cases.BAD_INPUTS if p.id not in NOT_FOR_GATE]


def assert_one_line_exit_2(result: Result, out: Path, expect: list[str]) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compat: error: "), result.stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])
    assert result.stdout == ""


def test_every_evaluator_bad_input_is_covered() -> None:
    assert len(EVAL_BAD_INPUTS) == len(eval_cases.BAD_INPUTS) - len(NOT_FOR_GATE) >= 25


@pytest.mark.parametrize("build", EVAL_BAD_INPUTS)
def test_evaluator_bad_inputs_through_the_gate(data, tmp_path, build) -> None:
    args, expect = build(tmp_path, data)
    gate_args, expect = to_gate(args, expect, tmp_path)
    out = tmp_path / "out"
    assert_one_line_exit_2(invoke(*gate_args, "--out", out), out, expect)


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


POLICY_ERRORS = [
    pytest.param("checks: [{kind: compatibility, threshold: 0}]\nextra: 1\n", ["extra", "unknown key"], id="top-key"),
    pytest.param(
        "checks: [{kind: compatibility, threshold: 0, treshold: 1}]\n",
        ["checks.0.treshold", "unknown key"],
        id="check-key",
    ),
    pytest.param("checks: [{kind: speed, threshold: 0}]\n", ["checks.0.kind", "compatibility"], id="unknown-kind"),
    pytest.param(
        "checks: [{kind: compatibility, metric: recall, threshold: 0}]\n",
        ["checks.0.metric", "recall"],
        id="unknown-metric",
    ),
    pytest.param(
        "checks: [{kind: compatibility, metric: acc, threshold: 0}]\n", ["checks.0.metric", "acc"], id="pairs-metric"
    ),
    pytest.param("checks: [{kind: compatibility}]\n", ["checks.0.threshold"], id="no-threshold"),
    pytest.param("checks: [{kind: compatibility, threshold: .nan}]\n", ["checks.0.threshold", "finite"], id="nan"),
    pytest.param("checks: [{kind: max_drop, threshold: -0.1}]\n", ["checks.0", ">= 0"], id="negative-drop"),
    pytest.param(
        "checks: [{kind: improvement, threshold: 0}, {kind: improvement, threshold: 1}]\n",
        ["twice", "improvement cmc@1"],
        id="duplicate-name",
    ),
    pytest.param("checks: []\n", ["checks"], id="no-checks"),
    pytest.param("confidence: 1.5\nchecks: [{kind: improvement, threshold: 0}]\n", ["confidence"], id="confidence"),
    pytest.param(
        "checks: [{kind: improvement, threshold: 0, required: maybe}]\n", ["checks.0.required"], id="not-a-bool"
    ),
    pytest.param("- just\n- a list\n", ["mapping"], id="not-a-mapping"),
    pytest.param("checks: [unclosed\n", ["YAML"], id="not-yaml"),
    pytest.param("checks: !!python/object/apply:os.system ['true']\n", ["YAML"], id="yaml-python-tag"),
]


@pytest.mark.parametrize(("text", "expect"), POLICY_ERRORS)
def test_bad_policy_exits_2_naming_file_and_key(files, tmp_path, text, expect) -> None:
    p = _write(tmp_path, "policy.yaml", text)
    out = tmp_path / "out"
    result = invoke("--old", files["old"], "--new", files["good"], "--policy", p, "--out", out)
    assert_one_line_exit_2(result, out, [str(p), *expect])


GATE_BAD_INPUTS = [
    pytest.param(["--policy", "{tmp}/nope.yaml"], ["nope.yaml", "policy"], id="missing-policy"),
    pytest.param(["--chain", "{tmp}/nope.npz"], ["nope.npz"], id="missing-chain-file"),
    pytest.param(["--independent", "{tmp}/nope.npz"], ["nope.npz"], id="missing-independent"),
    pytest.param(["--policy", "{required_gain}"], ["update_gain cmc@1", "--independent"], id="required-gain-alone"),
    pytest.param(["--promote", "prod"], ["--promote", "feature set"], id="promote-features"),
    pytest.param(["--new", "{tmp}/model.pt"], ["--new", "model.pt", "--dataset"], id="model-without-dataset"),
    pytest.param(["--new", "models:/prod"], ["models:/prod", "models:/NAME@ALIAS"], id="bad-model-uri"),
    pytest.param(["--new", "models:/prod/0", "--dataset", "mnist-mini"], ["models:/prod/0"], id="version-zero"),
    pytest.param(["--independent", "{str_ids}"], ["ids", "integers", "strings"], id="id-kinds-differ"),
]


@pytest.mark.parametrize(("extra", "expect"), GATE_BAD_INPUTS)
def test_gate_bad_inputs(files, sets, tmp_path, extra, expect) -> None:
    required_gain = _write(tmp_path, "gain.yaml", "checks: [{kind: update_gain, threshold: 0.5}]\n")
    g = sets["indep"]
    str_ids = save_features(FeatureSet.from_arrays(g.features, g.labels, g.ids.astype(str)), tmp_path / "s.npz")
    fill = {"tmp": tmp_path, "required_gain": required_gain, "str_ids": str_ids}
    extra = [e.format(**fill) for e in extra]
    args = {"--old": str(files["old"]), "--new": str(files["good"])}
    rest = []
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        if key in args:
            args[key] = value
        else:
            rest += [key, value]
    out = tmp_path / "out"
    result = invoke(*[x for kv in args.items() for x in kv], *rest, "--out", out)
    assert_one_line_exit_2(result, out, expect)


# --------------------------------------------------------------------------------------------------
# 6. Model files and the registry
# --------------------------------------------------------------------------------------------------

BACKBONE = "gate-test-pixels"


class _Pixels(nn.Module):
    """A fixed random projection of the pixels: a model that embeds the MNIST subset in milliseconds."""

    out_dim = 24

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, self.out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images)


@pytest.fixture(scope="module")
def pixels_backbone():
    """The tiny backbone, registered for this module only (the registry is left as it was)."""
    from compat.models import backbones

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.BACKBONES._entries, BACKBONE, _Pixels)
        yield BACKBONE


@pytest.fixture(scope="module")
def models(tmp_path_factory, pixels_backbone) -> dict[str, Path]:
    """Model files over the tiny backbone: ``m0`` and its exact copy ``same``, and ``m1`` (other weights)."""
    from compat.models import build_model
    from compat.models import save_model

    root = tmp_path_factory.mktemp("gate-models")
    spec = {"backbone": BACKBONE, "feature_dim": None, "head": "linear", "num_classes": 10}
    out = {}
    for name, seed in (("m0", 0), ("m1", 1)):
        torch.manual_seed(seed)
        out[name] = save_model(root / f"{name}.pt", build_model(**spec), spec)
    out["same"] = root / "same.pt"
    shutil.copyfile(out["m0"], out["same"])
    return out


def _policy_file(tmp: Path, text: str = PASS_ON_TIES) -> Path:
    return _write(tmp, "policy.yaml", text)


def test_model_files_with_a_dataset(models, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--old", models["m0"], "--new", models["same"], "--dataset", "mnist-mini", "--n-resamples", 200]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 1, (result.output, result.exception)  # identical: no improvement
    doc = check_files(out)
    meta = doc["inputs"]["new"]["meta"]
    assert meta["dataset"] == "mnist-mini" and meta["split"] == "test" and meta["checkpoint"].startswith("sha256:")
    assert doc["inputs"]["new"]["n"] == 1000
    result = invoke(*args, "--policy", _policy_file(tmp_path), "--out", tmp_path / "out2")
    assert result.exit_code == 0, (result.output, result.exception)


class _Trap:
    """Unpickling this would create a file: a weights_only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_checkpoint(kind: str, tmp: Path, models: dict[str, Path]) -> Path:
    p = tmp / f"{kind}.pt"
    if kind == "random-bytes":
        p.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "pickle-trap":
        torch.save({"model": {}, "spec": _Trap(tmp / "trap-fired")}, p)
    elif kind == "plain-pickle":
        p.write_bytes(pickle.dumps(_Trap(tmp / "trap-fired")))
    elif kind == "no-spec":
        torch.save({"model": {}}, p)
    elif kind == "bad-spec":
        torch.save({"model": {}, "spec": {"backbone": BACKBONE, "wings": 2}}, p)
    elif kind == "weights-mismatch":
        state = torch.load(models["m0"], weights_only=True)
        state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
        torch.save(state, p)
    return p


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("random-bytes", ["not a loadable checkpoint"]),
        ("pickle-trap", ["not a loadable checkpoint"]),
        ("plain-pickle", ["not a loadable checkpoint"]),
        ("no-spec", ["not a compat model file"]),
        ("bad-spec", ["spec"]),
        ("weights-mismatch", ["model", "weights"]),
    ],
)
def test_bad_model_files_exit_2_and_are_never_unpickled(models, tmp_path, kind, expect) -> None:
    p = _bad_checkpoint(kind, tmp_path, models)
    out = tmp_path / "out"
    result = invoke("--old", models["m0"], "--new", p, "--dataset", "mnist-mini", "--out", out)
    assert_one_line_exit_2(result, out, [str(p), *expect])
    assert not (tmp_path / "trap-fired").exists()


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty sqlite store: creating its tables takes seconds, copying the file does not.
    Its default experiment keeps artifacts under this fixture's directory."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def registry(tmp_mlflow: str, empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An MLflow client on the temporary sqlite store of ``tmp_mlflow`` (a copy of ``empty_store``)."""
    from mlflow import MlflowClient

    shutil.copyfile(empty_store, tmp_mlflow.removeprefix("sqlite:///"))
    monkeypatch.chdir(tmp_path)
    return MlflowClient(tracking_uri=tmp_mlflow)


def _aliases(client, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def test_promotion_moves_champion_only_on_a_pass(models, tmp_path, registry) -> None:
    client = registry
    first = register_model(models["m0"], "prod")
    assert (first.name, first.version, first.uri) == ("prod", "1", "models:/prod/1")
    assert promote("prod", first.uri).to_json() == {
        "name": "prod",
        "version": "1",
        "alias": "champion",
        "previous": None,
    }
    base = ["--old", "models:/prod@champion", "--dataset", "mnist-mini", "--n-resamples", 200, "--promote", "prod"]

    # A failing candidate changes nothing.
    result = invoke(*base, "--new", models["same"], "--out", tmp_path / "fail")
    assert result.exit_code == 1, (result.output, result.exception)
    assert [str(v.version) for v in client.search_model_versions("name='prod'")] == ["1"]
    assert _aliases(client, "prod") == {"champion": "1"}
    assert "promotion" not in json.loads((tmp_path / "fail" / "gate.json").read_text(encoding="utf-8"))

    # A passing model file is registered as version 2 and becomes the champion; 1 becomes previous.
    out = tmp_path / "pass"
    result = invoke(*base, "--new", models["same"], "--policy", _policy_file(tmp_path), "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert _aliases(client, "prod") == {"champion": "2", "previous": "1"}
    doc = json.loads((out / "gate.json").read_text(encoding="utf-8"))
    assert doc["promotion"] == {"name": "prod", "version": "2", "alias": "champion", "previous": "1"}
    assert doc["inputs"]["old"]["meta"]["model_version"] == "1"
    assert client.get_model_version("prod", "2").tags["compat.gate"] == "passed"
    assert "Promoted: `models:/prod/2`" in (out / "gate.md").read_text(encoding="utf-8")

    # A passing models:/ candidate of another registered model is copied in as version 3.
    other = register_model(models["same"], "candidates")
    result = invoke(*base, "--new", other.uri, "--policy", _policy_file(tmp_path), "--out", tmp_path / "uri")
    assert result.exit_code == 0, (result.output, result.exception)
    assert _aliases(client, "prod") == {"champion": "3", "previous": "2"}
    assert client.get_model_version("prod", "3").source == other.source


def test_models_uri_inputs_give_the_model_files_features(models, tmp_path, registry) -> None:
    register_model(models["m0"], "prod")
    register_model(models["m1"], "prod")
    promote("prod", "models:/prod/1")
    by_uri, by_file = tmp_path / "uri", tmp_path / "file"
    common = ["--dataset", "mnist-mini", "--n-resamples", 200]
    r1 = invoke("--old", "models:/prod@champion", "--new", "models:/prod/2", *common, "--out", by_uri)
    r2 = invoke("--old", models["m0"], "--new", models["m1"], *common, "--out", by_file)
    assert r1.exit_code == r2.exit_code == 1, (r1.output, r2.output)  # a random projection is no upgrade
    a, b = (json.loads((p / "gate.json").read_text(encoding="utf-8")) for p in (by_uri, by_file))
    for check in (*a["checks"], *b["checks"]):
        check.pop("details", None)  # names each gallery's source: the URI or the file
    assert a["checks"] == b["checks"]
    assert a["inputs"]["new"]["meta"]["model_uri"] == "models:/prod/2"
    assert a["inputs"]["new"]["meta"]["checkpoint"] == b["inputs"]["new"]["meta"]["checkpoint"]


def test_registry_bad_inputs(models, tmp_path, registry) -> None:
    client = registry
    # A version whose artifacts are an MLflow pyfunc model, not a compat model file: refused unread.
    run = client.create_run("0")
    flavour = tmp_path / "flavour"
    flavour.mkdir()
    (flavour / "MLmodel").write_text("flavors: {python_function: {}}\n", encoding="utf-8")
    (flavour / "python_model.pkl").write_bytes(pickle.dumps(_Trap(tmp_path / "trap-fired")))
    client.log_artifacts(run.info.run_id, str(flavour), artifact_path="model")
    client.create_registered_model("pyfunc")
    client.create_model_version("pyfunc", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    cases = [
        ("models:/pyfunc/1", ["models:/pyfunc/1", "not a compat model", "MLmodel"]),
        ("models:/nope@champion", ["models:/nope@champion"]),
        ("models:/pyfunc/7", ["models:/pyfunc/7"]),
    ]
    for uri, expect in cases:
        out = tmp_path / "out"
        result = invoke("--old", models["m0"], "--new", uri, "--dataset", "mnist-mini", "--out", out)
        assert_one_line_exit_2(result, out, expect)
    assert not (tmp_path / "trap-fired").exists()
    with pytest.raises(CompatError, match="not a loadable checkpoint"):
        register_model(_bad_checkpoint("pickle-trap", tmp_path, models), "prod")
    assert not (tmp_path / "trap-fired").exists()


# --------------------------------------------------------------------------------------------------
# 7. The example CI workflow
# --------------------------------------------------------------------------------------------------


def test_example_workflow_runs_the_gate_with_known_options() -> None:
    import re

    import yaml

    from compat.cli import gate_command

    text = (REPO / "examples" / "ci" / "compat-gate.yml").read_text(encoding="utf-8")
    workflow = yaml.safe_load(text)
    steps = workflow["jobs"]["gate"]["steps"]
    (script,) = [s["run"] for s in steps if "compat gate" in s.get("run", "")]
    known = {opt for p in gate_command.params for opt in p.opts}
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", script))
    assert {"--old", "--new", "--dataset", "--promote", "--out"} <= used <= known
    assert any(s.get("if") == "always()" and "gate-report" in str(s.get("with")) for s in steps)


@pytest.mark.parametrize(("candidate", "code"), [("v2", 0), ("v3", 1)])
def test_example_workflow_local_commands(tmp_path, candidate, code) -> None:
    """The workflow's header promises: the shipped v2 passes against v1, the incompatible v3 fails."""
    features = REPO / "examples" / "features"
    result = invoke("--old", features / "v1.npz", "--new", features / f"{candidate}.npz", "--out", tmp_path / "out")
    assert result.exit_code == code, (result.output, result.exception)
