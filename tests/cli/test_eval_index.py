"""``compat eval --index`` / ``--index-file``: the report through the index, and one-line exit 2 for
every bad index input (unknown factory, too few training vectors, a stored index of another size or
metric, ids that do not map, options without an index)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from compat.cli import cli
from compat.compatibility import Version, evaluate_chain
from compat.compatibility.indexed import IndexFile, IndexSetup, with_index_metrics
from compat.features import FeatureSet, load_features, save_features
from compat.retrieval import RetrievalEvaluator
from compat.retrieval.index import IndexSpec

faiss = pytest.importorskip("faiss")

N, D, C = 400, 16, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("index-cli")
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(C), N // C)
    ids = np.arange(N) * 3 + 11
    centres = rng.normal(size=(C, D))
    paths = {}
    for name, noise in (("v1", 1.0), ("v2", 0.7)):
        fs = FeatureSet.from_arrays(centres[labels] + noise * rng.normal(size=(N, D)), labels, ids)
        paths[name] = save_features(fs, root / f"{name}.npz")
    x = np.load(paths["v1"])["features"].copy()
    faiss.normalize_L2(x)
    index = faiss.IndexIDMap(faiss.index_factory(D, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, ids)
    paths["prod"] = root / "prod.index"
    faiss.write_index(index, str(paths["prod"]))
    plain = faiss.IndexFlatL2(D)
    plain.add(x)
    paths["l2"] = root / "l2.index"
    faiss.write_index(plain, str(paths["l2"]))
    np.save(root / "wrong-ids.npy", ids + 1)
    paths["wrong-ids"] = root / "wrong-ids.npy"
    paths["root"] = root
    return paths


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["eval", "--quiet", "--device", "cpu", *map(str, args)])


def test_eval_through_an_index_writes_exact_and_ann_values(data, tmp_path):
    result = invoke("--version", f"v1={data['v1']}", "--version", f"v2={data['v2']}", "--index", "IVF4,Flat",
                    "--nprobe", "2", "--seed", "3", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "compat.json").read_text())
    assert list(doc["metrics"]) == ["cmc@1", "cmc@5", "map", "map@10"]  # map@10 added to the exact side
    assert list(doc["index"]["metrics"]) == ["cmc@1", "cmc@5", "map@10"]
    chain = [Version(n, load_features(data[n])) for n in ("v1", "v2")]
    ev = RetrievalEvaluator(with_index_metrics(("cmc@1", "cmc@5", "map")), device="cpu")
    library = evaluate_chain(chain, ev, index=IndexSetup(IndexSpec(factory="IVF4,Flat", nprobe=2, seed=3)))
    assert doc["index"] == json.loads(json.dumps(library.index.to_json()))
    assert "cmc@1 through the index" in result.stdout


def test_a_stored_index_is_searched_for_its_version_only(data, tmp_path):
    before = data["prod"].read_bytes()
    result = invoke("--version", f"v1={data['v1']}", "--version", f"v2={data['v2']}",
                    "--index-file", f"v1={data['prod']}", "--nprobe", "4", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "compat.json").read_text())["index"]
    assert index["factory"] is None and index["files"] == {"v1": str(data["prod"])}
    assert index["params"]["nprobe"] == 4
    cmc = index["metrics"]["cmc@1"]
    assert cmc[1][1] is None and cmc[0][0] is not None and cmc[1][0] is not None  # v2 has no index
    assert index["summary"]["cmc@1"]["am"] is None and index["summary"]["cmc@1"]["ecc"][1][0] is not None
    assert data["prod"].read_bytes() == before
    library = evaluate_chain(
        [Version(n, load_features(data[n])) for n in ("v1", "v2")],
        RetrievalEvaluator(with_index_metrics(("cmc@1", "cmc@5", "map")), device="cpu"),
        index=IndexSetup(IndexSpec(nprobe=4), {"v1": IndexFile(data["prod"])}))
    assert library.index.matrices["cmc@1"] == cmc


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index", "IVF4,Bogus"], "'IVF4,Bogus'.*cannot build it"),
        (["--index", " "], "--index: factory: .*expected a faiss index_factory string"),
        (["--index", "IVF64,Flat", "--index-train-size", "50"], "training on 50 vectors failed"),
        (["--index-file", "v1={l2}"], "uses the L2 metric but similarity cosine needs inner product"),
        (["--index-file", "v1={l2}", "--similarity", "l2", "--index-ids", "v1={wrong}"],
         "400 of the index's 400 ids are not gallery ids"),
        (["--index-file", "v1={prod}", "--index-ids", "v1={wrong}"], "has its own ids"),
        (["--index-file", "v3={prod}"], "'v3' is not one of the versions"),
        (["--index-ids", "v1={wrong}"], "has no --index-file"),
        (["--nprobe", "4"], "--nprobe: applies to an index"),
        (["--index", "HNSW8", "--nprobe", "4"], "no parameter nprobe"),
        (["--index", "Flat", "--protocol", "template"], "protocol loo only"),
        (["--index", "Flat", "--backfill", "random"], "cannot be combined with --adapter or --backfill"),
        (["--index", "Flat", "--query-sample", "50"], "--index: an index is searched with every query"),
    ],
)
def test_bad_index_input_exits_2_with_one_line(data, tmp_path, args, message):
    args = [a.format(l2=data["l2"], prod=data["prod"], wrong=data["wrong-ids"]) for a in args]
    result = invoke("--version", f"v1={data['v1']}", "--version", f"v2={data['v2']}", *args, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "r" / "compat.json").exists()


def test_dimension_mismatch_of_a_stored_index_exits_2(data, tmp_path):
    small = faiss.IndexFlatIP(8)
    small.add(np.zeros((N, 8), np.float32))
    faiss.write_index(small, str(tmp_path / "small.index"))
    result = invoke("--version", f"v1={data['v1']}", "--index-file", f"v1={tmp_path / 'small.index'}",
                    "--out", tmp_path / "r")
    assert result.exit_code == 2 and "holds 8-d vectors but the gallery's features are 16-d" in result.stderr
