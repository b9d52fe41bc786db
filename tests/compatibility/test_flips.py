"""Flips and the per-class view: a hand-computed chain, the top-1 the CMC uses, the reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from compat.compatibility import Version, evaluate_chain
from compat.compatibility.report import render_markdown, write_reports
from compat.features import FeatureSet
from compat.retrieval import RetrievalEvaluator


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


def _fs(degrees, labels, ids, name):
    return FeatureSet.from_arrays(_angles(degrees), labels, np.array(ids), source=name)


def hand_chain():
    """Three class prototypes per gallery (ids g0 g1 g2, labels 0 1 2; v2 swaps g0's and g1's features)
    and seven queries (labels 0 0 1 1 2 2 3; q6's class has no gallery item)."""
    g_ids, q_ids = ["g0", "g1", "g2"], [f"q{i}" for i in range(7)]
    q_labels = [0, 0, 1, 1, 2, 2, 3]
    v1 = Version("v1", _fs([0, 120, 240], [0, 1, 2], g_ids, "v1-gallery"),
                 _fs([0, 120, 120, 120, 240, 0, 0], q_labels, q_ids, "v1-queries"))
    v2 = Version("v2", _fs([120, 0, 240], [0, 1, 2], g_ids, "v2-gallery"),
                 _fs([0, 0, 240, 120, 0, 240, 0], q_labels, q_ids, "v2-queries"))
    return [v1, v2]


def test_flips_of_a_hand_computed_chain(tmp_path: Path):
    # top-1 classes: v1/v1 0 1 1 1 2 0 -> right: q0 q2 q3 q4.    v2/v1 0 0 2 1 0 2 -> right: q0 q1 q3 q5.
    # v2/v2 (g1 now at 0 deg, g0 at 120): 1 1 2 0 1 2 -> right: q5 only.
    report = evaluate_chain(hand_chain(), RetrievalEvaluator(("cmc@1",), protocol="query-gallery", device="cpu"))
    assert report.matrices["cmc@1"] == [[4 / 6, None], [4 / 6, 1 / 6]]
    flips = {f.cell: f for f in report.flips}
    assert list(flips) == ["v2_on_v1", "v2_on_v2"]
    cross, own = flips["v2_on_v1"], flips["v2_on_v2"]
    assert (cross.against, cross.n, cross.negative, cross.positive) == ("v1_on_v1", 6, 2 / 6, 2 / 6)  # q6 skipped
    assert cross.flipped == (("q2", "g1", "g2"), ("q4", "g2", "g0"))  # query, top-1 before, after
    assert (own.against, own.n, own.negative, own.positive) == ("v1_on_v1", 6, 4 / 6, 1 / 6)
    assert [f[0] for f in own.flipped] == ["q0", "q2", "q3", "q4"]
    assert own.flipped[0] == ("q0", "g0", "g1")

    doc = report.to_json()
    assert doc["flips"] == {"v2_on_v1": {"negative": 2 / 6, "positive": 2 / 6, "n": 6, "against": "v1_on_v1"},
                            "v2_on_v2": {"negative": 4 / 6, "positive": 1 / 6, "n": 6, "against": "v1_on_v1"}}
    # per class, v2/v1 against v1/v1: class 0 0.5 -> 1.0, class 1 1.0 -> 0.5, class 2 0.5 -> 0.5
    assert [(c["label"], c["n"], c["before"], c["after"]) for c in doc["classes"]["classes"]] == [
        (1, 2, 1.0, 0.5), (2, 2, 0.5, 0.5), (0, 2, 0.5, 1.0)]

    write_reports(report, tmp_path)
    with open(tmp_path / "flips.csv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["cell", "against", "query_id", "before", "after"]
    assert rows[1:] == [  # the worst cell first
        ["v2_on_v2", "v1_on_v1", "q0", "g0", "g1"], ["v2_on_v2", "v1_on_v1", "q2", "g1", "g2"],
        ["v2_on_v2", "v1_on_v1", "q3", "g1", "g0"], ["v2_on_v2", "v1_on_v1", "q4", "g2", "g1"],
        ["v2_on_v1", "v1_on_v1", "q2", "g1", "g2"], ["v2_on_v1", "v1_on_v1", "q4", "g2", "g0"]]
    md = render_markdown(report)
    assert "| v2_on_v2 | v1_on_v1 | 6 | 66.67 | 16.67 |" in md
    assert md.index("| v2_on_v2 |") < md.index("| v2_on_v1 | v1_on_v1 | 6 |")
    assert "| 1 | 2 | 100.00 | 50.00 | -50.00 pp |" in md  # only the class that dropped is shown
    assert "| 2 | 2 |" not in md.split("## Classes that lost most")[1]
    assert json.loads((tmp_path / "compat.json").read_text())["flips"] == doc["flips"]


def test_flips_are_changes_of_the_per_query_cmc_at_1():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 300)
    centres = rng.standard_normal((6, 8))
    sets = [FeatureSet.from_arrays(centres[labels] + s * rng.standard_normal((300, 8)), labels, source=f"v{i}")
            for i, s in enumerate((1.6, 1.2, 0.9))]
    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    report = evaluate_chain([Version(f"v{i}", fs) for i, fs in enumerate(sets)], ev)
    assert [f.cell for f in report.flips] == ["v1_on_v0", "v2_on_v0", "v2_on_v1", "v2_on_v2"]
    for f in report.flips:
        (qi, gi), (qj, gj) = (tuple(int(x[1:]) for x in key.split("_on_")) for key in (f.cell, f.against))
        after, before = ev.evaluate(sets[qi], sets[gi]), ev.evaluate(sets[qj], sets[gj])
        both = after.counted & before.counted  # the same ids in the same order in every set
        hit_after, hit_before = after.per_query["cmc@1"][both], before.per_query["cmc@1"][both]
        assert f.n == both.sum()
        assert f.negative == pytest.approx(np.mean((hit_before == 1) & (hit_after == 0)))
        assert f.positive == pytest.approx(np.mean((hit_before == 0) & (hit_after == 1)))
        assert len(f.flipped) == round(f.negative * f.n)


def test_pairs_has_no_flips_and_one_version_has_none_to_compare(tmp_path: Path):
    rng = np.random.default_rng(0)
    fs = FeatureSet.from_arrays(rng.standard_normal((60, 4)), rng.integers(0, 3, 60))
    pairs = evaluate_chain([Version("v1", fs)], RetrievalEvaluator(protocol="pairs", pairs=50, device="cpu"))
    assert pairs.flips is None and pairs.to_json()["flips"] is None
    assert [p.name for p in write_reports(pairs, tmp_path / "p")] == ["compat.json", "compat.md", "compat.png"]
    single = evaluate_chain([Version("v1", fs)], RetrievalEvaluator(device="cpu"))
    assert single.flips == () and single.classes is None
    write_reports(single, tmp_path / "s")
    assert (tmp_path / "s" / "flips.csv").read_text() == "cell,against,query_id,before,after\n"
