"""The negative_flips check: a candidate better on average that flips 5% of the queries fails a 2% threshold;
the query-gallery protocol through the gate (separate query sets, camera groups, relevance files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compat.errors import CompatError
from compat.features import FeatureSet, save_features
from compat.gate import GatePolicy, load_policy, run_gate
from compat.retrieval import RetrievalEvaluator
from tests.gate.common import assert_one_line_exit_2, invoke, policy

C, N = 20, 1000


def flipping_candidate() -> dict[str, FeatureSet]:
    """One gallery item per class (one-hot features); a query's feature is the one-hot of the class it
    should retrieve first. Old: 800 of 1000 queries right. New: 900 right, but 50 of the old's right
    ones (5%) now wrong."""
    labels = np.arange(N) % C
    old_answer, new_answer = (labels + 1) % C, (labels + 1) % C
    old_answer[:800] = labels[:800]
    new_answer[50:950] = labels[50:950]
    eye = np.eye(C, dtype=np.float32)
    gallery = FeatureSet.from_arrays(eye, np.arange(C), np.arange(100, 100 + C), source="gallery")
    ids = np.arange(N)
    return {"gallery": gallery,
            "old_q": FeatureSet.from_arrays(eye[old_answer], labels, ids, source="old-queries"),
            "new_q": FeatureSet.from_arrays(eye[new_answer], labels, ids, source="new-queries")}


def test_better_on_average_but_5_percent_flipped_fails_a_2_percent_threshold():
    sets = flipping_candidate()
    checks = policy({"kind": "compatibility", "threshold": 0.0}, {"kind": "negative_flips", "threshold": 0.02})
    evaluator = RetrievalEvaluator(("cmc@1",), protocol="query-gallery", device="cpu")
    verdict = run_gate(sets["gallery"], sets["gallery"], checks, evaluator=evaluator, old_query=sets["old_q"],
                       new_query=sets["new_q"], n_resamples=1000)
    compat, flips = verdict.checks
    assert compat.passed and compat.value == pytest.approx(0.10)  # 90% against 80%: better on average
    assert flips.kind.value == "negative_flips" and flips.rule.bound.value == "ci_high"
    assert flips.value == pytest.approx(0.05) and flips.n_queries == N
    assert flips.ci_low < 0.05 < flips.ci_high and flips.ci_low > 0.02
    assert flips.passed is False and not verdict.passed
    assert flips.to_json()["cells"] == {"new/old": pytest.approx(0.9), "old/old": pytest.approx(0.8)}
    loose = run_gate(sets["gallery"], sets["gallery"], policy({"kind": "negative_flips", "threshold": 0.08}),
                     evaluator=evaluator, old_query=sets["old_q"], new_query=sets["new_q"], n_resamples=1000)
    assert loose.passed  # the whole interval sits below 8%


def test_the_default_policy_reports_negative_flips_without_requiring_them(tmp_path: Path):
    spec = {c.label: c for c in load_policy().checks}["negative-flips"]
    assert (spec.kind.value, spec.metric, spec.threshold, spec.required) == ("negative_flips", "cmc@1", 0.02, False)
    files = {}
    for name, fs in flipping_candidate().items():
        files[name] = save_features(fs, tmp_path / f"{name}.npz")
    out = tmp_path / "out"
    result = invoke("--old", files["gallery"], "--old-query", files["old_q"], "--new", files["gallery"],
                    "--new-query", files["new_q"], "--protocol", "query-gallery", "--n-resamples", 300, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    doc = json.loads((out / "gate.json").read_text(encoding="utf-8"))
    by = {c["name"]: c for c in doc["checks"]}
    assert by["negative-flips"]["passed"] is False and by["negative-flips"]["required"] is False
    assert by["negative-flips"]["rule"] == "ci_high <= threshold"
    assert doc["passed"] and doc["protocol"] == "query-gallery"
    assert doc["inputs"]["old.query"]["source"] == str(files["old_q"])
    assert "| negative-flips | cmc@1 | 5.00% |" in (out / "gate.md").read_text(encoding="utf-8")
    strict = tmp_path / "strict.yaml"
    strict.write_text("checks:\n  - {kind: negative_flips, threshold: 0.02}\n", encoding="utf-8")
    result = invoke("--old", files["gallery"], "--old-query", files["old_q"], "--new", files["gallery"],
                    "--new-query", files["new_q"], "--protocol", "query-gallery", "--policy", strict,
                    "--out", tmp_path / "out2")
    assert result.exit_code == 1, (result.output, result.exception)


@pytest.mark.parametrize(
    ("check", "expect"),
    [
        ({"kind": "negative_flips", "threshold": -0.1}, "expected a value in [0, 1]"),
        ({"kind": "negative_flips", "threshold": 0.02, "metric": "map"}, "metric must be cmc@1"),
    ],
)
def test_negative_flips_policy_validation(check, expect):
    with pytest.raises(ValueError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        GatePolicy.model_validate({"checks": [check]})


def test_query_gallery_gate_needs_the_query_sets():
    sets = flipping_candidate()
    evaluator = RetrievalEvaluator(("cmc@1",), protocol="query-gallery", device="cpu")
    checks = policy({"kind": "compatibility", "threshold": 0.0})
    with pytest.raises(CompatError, match="--new-query: the query-gallery protocol needs the new model's query"):
        run_gate(sets["gallery"], sets["gallery"], checks, evaluator=evaluator, old_query=sets["old_q"])
    grouped = RetrievalEvaluator(("cmc@1",), protocol="query-gallery", exclude="same-group", device="cpu")
    with pytest.raises(CompatError, match="old-queries: field 'groups' is missing"):
        run_gate(sets["gallery"], sets["gallery"], checks, evaluator=grouped, old_query=sets["old_q"],
                 new_query=sets["new_q"])


@pytest.mark.parametrize("case", ["qrels-unknown-id", "qrels-duplicate", "same-group-without-groups",
                                  "independent-query-alone", "query-gallery-without-queries"])
def test_query_gallery_gate_bad_inputs_exit_2_with_one_line(tmp_path: Path, case: str):
    files = {name: save_features(fs, tmp_path / f"{name}.npz") for name, fs in flipping_candidate().items()}
    args = ["--old", files["gallery"], "--old-query", files["old_q"], "--new", files["gallery"],
            "--new-query", files["new_q"], "--protocol", "query-gallery"]
    qrels = tmp_path / "qrels.csv"
    if case == "qrels-unknown-id":
        qrels.write_text("query_id,gallery_id,relevance\n0,100,positive\n1,999,junk\n", encoding="utf-8")
        args += ["--qrels", qrels]
        expect = [f"{qrels}:3:", "gallery id '999' is in no gallery feature set"]
    elif case == "qrels-duplicate":
        qrels.write_text("query_id,gallery_id,relevance\n0,100,positive\n0,100,positive\n", encoding="utf-8")
        args += ["--qrels", qrels]
        expect = [f"{qrels}:3:", "duplicate row"]
    elif case == "same-group-without-groups":
        args += ["--exclude", "same-group"]
        expect = [str(files["old_q"]), "field 'groups' is missing"]
    elif case == "independent-query-alone":
        args += ["--independent-query", files["new_q"]]
        expect = ["--independent-query", "needs --independent"]
    else:
        args = ["--old", files["gallery"], "--new", files["gallery"], "--protocol", "query-gallery"]
        expect = ["--old-query", "query-gallery protocol needs the old model's query features"]
    out = tmp_path / "out"
    assert_one_line_exit_2(invoke(*args, "--out", out), out, expect)
