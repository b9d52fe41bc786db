"""``compat gate``: exit codes 0 / 1, gate.json and gate.md, the step summary, and the example CI workflow."""

from __future__ import annotations

import json

import pytest

from compat.gate import (
    load_policy,
)
from tests.gate.common import check_files, invoke
from tests.paths import REPO


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
