"""Gate policies: the packaged default, normalised names and metrics, and every bad policy file (exit 2 naming file and key)."""

from __future__ import annotations

import pytest

from compat.gate import (
    DEFAULT_POLICY,
    CheckKind,
    load_policy,
)
from tests.gate.common import assert_one_line_exit_2, invoke, policy, write_text
from tests.paths import REPO


def test_packaged_default_policy_is_the_configs_file() -> None:
    assert DEFAULT_POLICY.read_bytes() == (REPO / "configs" / "gate" / "default.yaml").read_bytes()
    p = load_policy()
    assert {c.kind for c in p.checks} == set(CheckKind) and p.confidence == 0.95
    assert [c.label for c in p.checks if c.required] == ["compatibility", "improvement", "no-drop-on-older-galleries"]


def test_policy_names_and_metrics_are_normalised() -> None:
    p = policy({"kind": "compatibility", "metric": "top5", "threshold": 0}, {"kind": "improvement", "threshold": 0})
    assert [c.label for c in p.checks] == ["compatibility cmc@5", "improvement cmc@1"]
    assert p.metrics == ("cmc@5", "cmc@1")


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
    p = write_text(tmp_path, "policy.yaml", text)
    out = tmp_path / "out"
    result = invoke("--old", files["old"], "--new", files["good"], "--policy", p, "--out", out)
    assert_one_line_exit_2(result, out, [str(p), *expect])
