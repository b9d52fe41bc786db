"""Sharded feature sets: the manifest round trip, every check naming its shard, and reads identical to
the unsharded set (evaluation, block reads)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from compat.cli import cli
from compat.errors import CompatError
from compat.features import FeatureSet, load_features, save_features
from compat.manifest import check_unique_ids, load_manifest, read_manifest, save_sharded, shard_digest
from compat.retrieval import RetrievalEvaluator
from compat.sharded import ShardedArray
from compat.stored import open_stored


def _set(n=70, d=8, classes=5, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    feats = (rng.standard_normal((classes, d))[labels] + rng.standard_normal((n, d))).astype(np.float32)
    ids = np.arange(1000, 1000 + n) if ids is None else ids
    return FeatureSet.from_arrays(feats, labels, ids, meta={"version": "v1", "model": "synthetic"})


def test_round_trip_keeps_rows_order_and_meta(tmp_path):
    fs = _set()
    manifest_file = save_sharded(fs, tmp_path / "g", shard_rows=30)
    manifest = read_manifest(tmp_path / "g")
    assert manifest_file == tmp_path / "g" / "manifest.json"
    assert [s.rows for s in manifest.shards] == [30, 30, 10] and manifest.dim == 8 and manifest.rows == 70
    assert manifest.shards[1].sha256 == shard_digest(tmp_path / "g" / "shard-00001")
    loaded = load_features(tmp_path / "g")
    assert isinstance(loaded.features, ShardedArray) and loaded.n == 70
    np.testing.assert_array_equal(np.asarray(loaded.features), fs.features)
    np.testing.assert_array_equal(loaded.labels, fs.labels)
    np.testing.assert_array_equal(loaded.ids, fs.ids)
    assert loaded.meta == fs.meta
    assert load_features(manifest_file).n == 70  # the manifest file itself names the set too


def test_evaluation_and_block_reads_match_the_unsharded_set(tmp_path):
    fs = _set(n=300, d=12, classes=9)
    save_sharded(fs, tmp_path / "g", shard_rows=77)
    sharded = load_features(tmp_path / "g")
    ev = RetrievalEvaluator(("cmc@1", "cmc@5", "map", "map@r"), device="cpu", memory_budget=1 << 20)
    assert ev.evaluate(sharded, sharded).values == ev.evaluate(fs, fs).values
    blocks = list(open_stored(tmp_path / "g").blocks(50))
    np.testing.assert_array_equal(np.concatenate([b.features for b in blocks]), fs.features)
    np.testing.assert_array_equal(np.concatenate([b.ids for b in blocks]), fs.ids)
    assert [b.start for b in blocks] == list(range(0, 300, 50))


def test_ids_unique_across_shards_in_bounded_memory(tmp_path):
    ids = np.arange(5000)
    parts = [("a", ids[:2000]), ("b", ids[2000:4000]), ("c", ids[4000:])]
    check_unique_ids(iter(parts), np.dtype(np.int64), source="s", tmp_dir=tmp_path, memory_budget=1 << 16)
    dup = ids.copy()
    dup[4500] = 1234  # shard c row 500 repeats shard a row 1234
    parts = [("a", dup[:2000]), ("b", dup[2000:4000]), ("c", dup[4000:])]
    with pytest.raises(CompatError, match=r"id 1234 appears in shard a row 1234 and shard c row 500"):
        check_unique_ids(iter(parts), np.dtype(np.int64), source="s", tmp_dir=tmp_path, memory_budget=1 << 16)
    assert list(tmp_path.iterdir()) == []  # the sorted runs are removed


def test_string_ids_of_different_widths(tmp_path):
    fs = _set(n=40, ids=np.array([f"item-{i}" + "x" * (i % 3) for i in range(40)]))
    save_sharded(fs, tmp_path / "g", shard_rows=15)
    np.testing.assert_array_equal(load_features(tmp_path / "g").ids, fs.ids)


def _broken(tmp_path, how: str):
    root = tmp_path / "g"
    save_sharded(_set(), root, shard_rows=30)
    manifest = json.loads((root / "manifest.json").read_text())
    if how == "missing":
        shutil.rmtree(root / "shard-00001")
    elif how == "checksum":
        feats = np.load(root / "shard-00001" / "features.npy")
        feats[3, 2] += 1
        np.save(root / "shard-00001" / "features.npy", feats)
    elif how == "dimension":
        other = _set(n=30, d=6, ids=np.arange(1030, 1060))
        save_features(other, root / "shard-00001")
        manifest["shards"][1]["sha256"] = shard_digest(root / "shard-00001")
    elif how == "duplicate":
        ids = np.load(root / "shard-00002" / "ids.npy")
        ids[4] = 1007
        np.save(root / "shard-00002" / "ids.npy", ids)
        manifest["shards"][2]["sha256"] = shard_digest(root / "shard-00002")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize(("how", "shard", "says"), [
    ("missing", "shard-00001", "missing"),
    ("checksum", "shard-00001", "checksum mismatch"),
    ("dimension", "shard-00001", "dimension 6; the manifest says 8"),
    ("duplicate", "shard-00002", "id 1007 appears in shard shard-00000 row 7 and shard shard-00002 row 4"),
])
def test_a_bad_shard_exits_2_with_one_line_naming_it(tmp_path, how, shard, says):
    root = _broken(tmp_path, how)
    with pytest.raises(CompatError, match=shard):
        load_manifest(root)
    result = CliRunner().invoke(cli, ["eval", "--version", f"v1={root}", "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and shard in lines[0] and says in lines[0], lines
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("edit", "says"), [
    (lambda m: m.update(extra=1), "unknown key 'extra'"),
    (lambda m: m.pop("dim"), "missing key 'dim'"),
    (lambda m: m.update(rows=71), "field 'rows' is 71"),
    (lambda m: m["shards"][0].update(path="../x"), "relative path"),
    (lambda m: m["shards"][0].update(sha256="abc"), "64 lowercase hex"),
    (lambda m: m.update(format_version=2), "version 1"),
])
def test_manifest_fields_are_validated(tmp_path, edit, says):
    save_sharded(_set(), tmp_path / "g", shard_rows=30)
    doc = json.loads((tmp_path / "g" / "manifest.json").read_text())
    edit(doc)
    (tmp_path / "g" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CompatError, match=says):
        read_manifest(tmp_path / "g")
