"""Cells compare versions over the same items: loo chains hold the same ids, labels agree, undefined cells are null."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from compat.cli import cli
from compat.compatibility import Version, evaluate_chain, summarize
from compat.errors import CompatError
from compat.features import FeatureSet, save_features
from compat.retrieval import RetrievalEvaluator

N, C, D = 200, 5, 8


@pytest.fixture(scope="module")
def sets() -> dict[str, FeatureSet]:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(C), N // C)
    centres = rng.normal(size=(C, D))
    old = FeatureSet.from_arrays(centres[labels] + rng.normal(size=(N, D)), labels)
    new = FeatureSet.from_arrays(centres[labels] + 0.5 * rng.normal(size=(N, D)), labels)
    half = np.arange(0, N, 2)
    return {
        "old": old,
        "new": new,
        "half": FeatureSet.from_arrays(new.features[half], labels[half], half),
        "one": FeatureSet.from_arrays(new.features[:1], labels[:1], [0]),
        "relabelled": FeatureSet.from_arrays(new.features, (labels + 1) % C),
    }


def _eval(tmp_path, sets, old: str, new: str, *extra: str):
    paths = {k: save_features(sets[k], tmp_path / f"{k}.npz") for k in (old, new)}
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["eval", "--version", f"v1={paths[old]}", "--version", f"v2={paths[new]}",
                                      "--metric", "cmc@1", *extra, "--out", str(out)])
    return result, out


@pytest.mark.parametrize(("new", "absent", "missing"), [("half", 0, 100), ("one", 0, 199)])
def test_a_version_holding_fewer_items_is_refused(tmp_path, sets, new, absent, missing) -> None:
    result, out = _eval(tmp_path, sets, "old", new)
    assert result.exit_code == 2, result.output
    assert f"{absent} of v2's ids are absent from v1 and {missing} of v1's from v2" in result.stderr
    assert "--allow-partial" in result.stderr and not out.exists()


def test_allow_partial_evaluates_the_shared_items_and_says_so_everywhere(tmp_path, sets) -> None:
    result, out = _eval(tmp_path, sets, "old", "half", "--allow-partial")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compat.json").read_text(encoding="utf-8"))
    assert doc["items"] == {"shared": 100, "left_out": {"v1": 100, "v2": 0}}
    assert any("partial evaluation" in note for note in doc["notes"])
    assert "partial evaluation" in (out / "compat.md").read_text(encoding="utf-8")
    assert doc["queries"][0][0]["n"] == doc["queries"][1][0]["n"] == 100
    ev = RetrievalEvaluator(("cmc@1",))
    old_half = FeatureSet.from_arrays(sets["old"].features[::2], sets["old"].labels[::2], np.arange(0, N, 2))
    assert doc["metrics"]["cmc@1"][0][0] == ev.evaluate(old_half, old_half)["cmc@1"]
    assert doc["metrics"]["cmc@1"][1][0] == ev.evaluate(sets["half"], old_half)["cmc@1"]


def test_an_item_must_keep_its_label_in_every_version(tmp_path, sets) -> None:
    result, _ = _eval(tmp_path, sets, "old", "relabelled")
    assert result.exit_code == 2
    assert "item id 0 has label 0 in v1 but 1 in v2" in result.stderr


def test_an_undefined_cell_is_null_and_left_out_of_the_summaries(tmp_path, sets) -> None:
    """Version v2 holds one item: as a query it has no positive anywhere, so its cells are undefined."""
    result, out = _eval(tmp_path, sets, "one", "one")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compat.json").read_text(encoding="utf-8"))
    assert doc["metrics"]["cmc@1"] == [[None, None], [None, None]]
    assert doc["summary"]["cmc@1"] == {"ac": None, "am": None, "bc": None, "fc": None,
                                       "ecc": [[None, None], [None, None]], "update_gain": None}
    assert any("undefined" in note for note in doc["notes"])
    assert "n/a" in (out / "compat.md").read_text(encoding="utf-8")


def test_summaries_average_the_defined_cells_only() -> None:
    m = [[0.5, None], [None, 0.8]]  # v2 on v1 undefined
    s = summarize(m)
    assert (s.am, s.ac, s.bc, s.fc, s.update_gain) == (pytest.approx(0.65), None, None, None, None)
    m3 = [[0.5, None, None], [0.6, 0.7, None], [None, 0.75, 0.9]]
    s3 = summarize(m3)
    assert s3.ac == 1.0  # the defined pairs: (1, 0) and (2, 1), both pass
    assert s3.bc == pytest.approx(0.75 - 0.7) and s3.fc == pytest.approx(((0.6 - 0.7) + (0.75 - 0.9)) / 2)
    assert s3.ecc[2][0] is None and s3.am == pytest.approx((0.5 + 0.6 + 0.7 + 0.75 + 0.9) / 5)


def test_the_library_refuses_the_same_way(sets) -> None:
    ev = RetrievalEvaluator(("cmc@1",))
    with pytest.raises(CompatError, match="hold different items"):
        evaluate_chain([Version("v1", sets["old"]), Version("v2", sets["half"])], ev)
    report = evaluate_chain([Version("v1", sets["old"]), Version("v2", sets["half"])], ev, allow_partial=True)
    assert report.coverage.shared == 100 and report.to_json()["items"]["left_out"] == {"v1": 100, "v2": 0}
