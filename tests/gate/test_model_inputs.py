"""Model files as gate inputs: embedded on a dataset; bad model files exit 2 and are never unpickled."""

from __future__ import annotations

import pytest

from tests.gate.common import assert_one_line_exit_2, bad_checkpoint, check_files, invoke, policy_file


def test_model_files_with_a_dataset(models, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--old", models["m0"], "--new", models["same"], "--dataset", "mnist-mini", "--n-resamples", 200]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 1, (result.output, result.exception)  # identical: no improvement
    doc = check_files(out)
    meta = doc["inputs"]["new"]["meta"]
    assert meta["dataset"] == "mnist-mini" and meta["split"] == "test" and meta["checkpoint"].startswith("sha256:")
    assert doc["inputs"]["new"]["n"] == 1000
    result = invoke(*args, "--policy", policy_file(tmp_path), "--out", tmp_path / "out2")
    assert result.exit_code == 0, (result.output, result.exception)


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
    p = bad_checkpoint(kind, tmp_path, models)
    out = tmp_path / "out"
    result = invoke("--old", models["m0"], "--new", p, "--dataset", "mnist-mini", "--out", out)
    assert_one_line_exit_2(result, out, [str(p), *expect])
    assert not (tmp_path / "trap-fired").exists()
