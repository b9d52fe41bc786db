"""The chain through each gallery's index: Flat = the exact evaluator, the synthetic upgrade that is
compatible exactly but not through an IVF index trained on the old features (and is through a
better-probed one), the ``"index"`` key of compat.json, and the cell's guards."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from compat.compatibility import Version, evaluate_chain
from compat.compatibility.index_report import summarize_partial
from compat.compatibility.indexed import IndexSetup, evaluate_index_cell, index_metrics, with_index_metrics
from compat.compatibility.report import render_markdown, write_reports
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval import RetrievalEvaluator, knn
from compat.retrieval.index import IndexSpec, build_index
from compat.retrieval.metrics import parse_metrics
from tests.paths import EXAMPLES

pytest.importorskip("faiss")

N = None


def _chain(n=500, d=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    ids = np.arange(n) + 1000
    old = FeatureSet.from_arrays(centres[labels] + 1.0 * rng.normal(size=(n, d)), labels, ids)
    new = FeatureSet.from_arrays(centres[labels] + 0.7 * rng.normal(size=(n, d)), labels, ids)
    return [Version("v1", old), Version("v2", new)]


def _example(per_class=200, seed=0):
    spec = importlib.util.spec_from_file_location("make_index_features", EXAMPLES / "make_index_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sets = module.make(per_class=per_class, seed=seed)
    return [Version("old", sets["old"], sets["old-queries"]), Version("new", sets["new"], sets["new-queries"])]


def test_index_metrics_keep_what_a_list_defines_and_add_map_at_k():
    names = [m.name for m in index_metrics(parse_metrics(("cmc@1", "map", "map@r", "cmc@5")), 10)]
    assert names == ["cmc@1", "cmc@5", "map@10"]
    assert with_index_metrics(["cmc@1", "map"], 20) == ("cmc@1", "map", "map@20")
    assert with_index_metrics(["map@20"], 20) == ("map@20",)


def test_flat_index_gives_the_exact_evaluators_values_and_neighbours():
    chain = _chain()
    ev = RetrievalEvaluator(with_index_metrics(("cmc@1", "cmc@5")), device="cpu")
    report = evaluate_chain(chain, ev, index=IndexSetup(IndexSpec(factory="Flat")))
    for m in ("cmc@1", "cmc@5", "map@10"):
        assert report.index.matrices[m] == report.matrices[m]
    assert report.index.recall == [[1.0, N], [1.0, 1.0]]
    index = build_index(chain[0].gallery.features, IndexSpec(factory="Flat"))
    cell = evaluate_index_cell(ev, chain[1].gallery, chain[0].gallery, index)
    own = np.arange(500)
    exact = knn(chain[1].gallery.features, chain[0].gallery.features, 10, exclude=own)[1]
    np.testing.assert_array_equal(cell.neighbours, exact)
    np.testing.assert_array_equal(cell.result.per_query["cmc@1"], ev.evaluate(chain[1].gallery, chain[0].gallery)
                                  .per_query["cmc@1"])


def test_compatible_exactly_but_not_through_an_ivf_index_trained_on_the_old_gallery():
    chain = _example()
    ev = RetrievalEvaluator(("cmc@1",), similarity="l2", device="cpu")
    one = evaluate_chain(chain, ev, index=IndexSetup(IndexSpec(factory="IVF20,Flat", nprobe=1)))
    assert one.summary["cmc@1"].ecc[1][0] is True  # exact: 86.7 > 70.9
    assert one.index.summary["cmc@1"].ecc[1][0] is False  # nprobe 1: the new queries reach the distractors' list
    assert one.index.matrices["cmc@1"][1][0] < one.matrices["cmc@1"][1][0] - 0.3
    assert one.index.recall[1][0] < 0.5 < one.index.recall[0][0]
    # the reverse: probing four lists (or an HNSW graph) keeps the criterion through the index
    four = evaluate_chain(chain, ev, index=IndexSetup(IndexSpec(factory="IVF20,Flat", nprobe=4)))
    assert four.index.summary["cmc@1"].ecc[1][0] is True
    assert four.index.matrices["cmc@1"][1][0] == pytest.approx(four.matrices["cmc@1"][1][0], abs=0.01)


def test_compat_json_gains_the_index_key_in_the_matrix_layout(tmp_path):
    ev = RetrievalEvaluator(with_index_metrics(("cmc@1",)), device="cpu")
    report = evaluate_chain(_chain(), ev, index=IndexSetup(IndexSpec(factory="IVF4,Flat", nprobe=2, seed=3)))
    write_reports(report, tmp_path)
    doc = json.loads((tmp_path / "compat.json").read_text())
    index = doc["index"]
    assert set(index) == {"factory", "params", "metrics", "recall", "summary"}
    assert index["factory"] == "IVF4,Flat"
    assert index["params"] == {"nprobe": 2, "k": 10, "train_size": None, "seed": 3}
    assert set(index["metrics"]) == {"cmc@1", "map@10"} == set(index["summary"])
    for matrix in (*index["metrics"].values(), index["recall"]):
        assert matrix[0][1] is None and all(isinstance(v, float) for v in (matrix[0][0], matrix[1][0], matrix[1][1]))
    ecc = report.index.summary["cmc@1"].ecc[1][0]
    assert index["summary"]["cmc@1"]["ecc"] == [[None, None], [ecc, None]]
    markdown = render_markdown(report)
    assert "## Through the index IVF4,Flat (nprobe 2)" in markdown and "### Recall@10 of the index" in markdown
    assert (tmp_path / "compat.png").read_bytes().startswith(b"\x89PNG")


def test_update_gain_reference_is_searched_through_its_own_index():
    chain = _chain()
    ev = RetrievalEvaluator(with_index_metrics(("cmc@1",)), device="cpu")
    report = evaluate_chain(chain, ev, independent=chain[1].gallery, index=IndexSetup(IndexSpec(factory="Flat")))
    m = report.index.matrices["cmc@1"]
    s = report.index.summary["cmc@1"]
    expected = (m[1][0] - m[0][0]) / (m[1][1] - m[0][0])  # the reference is v2 itself here
    assert s.update_gain == pytest.approx(expected)


def test_partial_matrices_summarise_only_the_pairs_they_define():
    s = summarize_partial([[0.5, N, N], [0.6, N, N], [0.4, N, N]])
    assert s.ecc == [[N, N, N], [True, N, N], [False, N, N]] and s.ac == 0.5
    assert (s.am, s.bc, s.fc, s.update_gain) == (None, None, None, None)


def test_index_cell_refuses_to_change_the_gallery_and_other_protocols():
    chain = _chain()
    ev = RetrievalEvaluator(("cmc@1",), device="cpu")
    short = FeatureSet.from_arrays(chain[1].gallery.features[:, :8], chain[1].gallery.labels, chain[1].gallery.ids)
    index = build_index(chain[0].gallery.features, IndexSpec(factory="Flat"))
    with pytest.raises(CompatError, match="only the queries may change size"):
        evaluate_index_cell(ev, short, chain[0].gallery, index, dim_policy="truncate")
    padded = evaluate_index_cell(ev, short, chain[0].gallery, index, dim_policy="pad")  # queries padded: allowed
    assert 0 <= padded["cmc@1"] <= 1
    template = RetrievalEvaluator(("cmc@1",), protocol="template", device="cpu")
    with pytest.raises(CompatError, match="protocol loo only"):
        evaluate_chain(chain, template, index=IndexSetup(IndexSpec(factory="Flat")))
    with pytest.raises(CompatError, match="--index-file"):
        IndexSetup(IndexSpec())
