"""compat.features: FeatureSet validation, the .npz and .npy-directory formats, atomic writes."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

import compat.features as features_mod
from compat.errors import CompatError
from compat.features import FeatureSet, load_features, save_features

META = {
    "model": "resnet18",
    "version": "v2",
    "dataset": "mnist",
    "split": "test",
    "normalized": True,
    "checkpoint_digest": "sha256:abc123",
    "extra": {"nested": [1, 2.5, None, "x"]},
}


def make_set(n: int = 6, d: int = 4, *, ids=None, meta=None, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    labels = np.arange(n, dtype=np.int64) % 3
    return FeatureSet.from_arrays(feats, labels, ids, meta=META if meta is None else meta)


def good_arrays(n: int = 6, d: int = 4) -> dict[str, np.ndarray]:
    return {
        "features": np.ones((n, d), dtype=np.float32),
        "labels": np.zeros(n, dtype=np.int64),
        "ids": np.arange(n, dtype=np.int64),
    }


def write_raw(fmt: str, path: Path, arrays: dict[str, np.ndarray], meta: str | None = "{}") -> Path:
    """Write arrays in the on-disk layout with no validation, to build bad files."""
    if fmt == "npz":
        target = path.with_suffix(".npz")
        extra = {} if meta is None else {"meta": np.array(meta)}
        np.savez(target, **arrays, **extra)
        return target
    path.mkdir()
    for key, arr in arrays.items():
        np.save(path / f"{key}.npy", arr, allow_pickle=True)
    if meta is not None:
        (path / "meta.json").write_text(meta, encoding="utf-8")
    return path


def target(fmt: str, tmp_path: Path, name: str = "feats") -> Path:
    return tmp_path / (f"{name}.npz" if fmt == "npz" else name)


def assert_same(a: FeatureSet, b: FeatureSet) -> None:
    np.testing.assert_array_equal(np.asarray(a.features), np.asarray(b.features))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.features.dtype == b.features.dtype == np.float32
    assert a.labels.dtype == b.labels.dtype == np.int64
    assert a.ids.dtype == b.ids.dtype
    assert a.meta == b.meta


FORMATS = pytest.mark.parametrize("fmt", ["npz", "dir"])


# --- round trips ---------------------------------------------------------------------------------


@FORMATS
@pytest.mark.parametrize("ids", [None, np.array([10, 3, 7, 100, -5, 0]), ["a", "bb", "c", "dé", "e", "f"]])
def test_round_trip_preserves_arrays_ids_and_meta(fmt, ids, tmp_path):
    fs = make_set(ids=ids)
    out = save_features(fs, target(fmt, tmp_path))
    assert out == target(fmt, tmp_path)
    loaded = load_features(out)
    assert_same(fs, loaded)
    assert loaded.source == str(out)
    assert len(loaded) == 6 and loaded.n == 6 and loaded.dim == 4


def test_string_ids_stay_unicode(tmp_path):
    fs = make_set(ids=[f"img_{i:03d}.png" for i in range(6)])
    for out in (tmp_path / "s.npz", tmp_path / "s"):
        loaded = load_features(save_features(fs, out))
        assert loaded.ids.dtype.kind == "U"
        assert loaded.ids[2] == "img_002.png"


def test_directory_features_are_memory_mapped(tmp_path):
    out = save_features(make_set(), tmp_path / "gallery")
    loaded = load_features(out)
    assert isinstance(loaded.features, np.memmap)
    assert not loaded.features.flags.writeable
    assert sorted(os.listdir(out)) == ["features.npy", "ids.npy", "labels.npy", "meta.json"]
    assert json.loads((out / "meta.json").read_text(encoding="utf-8")) == META


def test_npz_is_a_plain_zip_without_pickles(tmp_path):
    out = save_features(make_set(ids=["a", "b", "c", "d", "e", "f"]), tmp_path / "f.npz")
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["features.npy", "ids.npy", "labels.npy", "meta.npy"]
    with np.load(out, allow_pickle=False) as z:
        assert json.loads(str(z["meta"])) == META


@FORMATS
def test_missing_meta_loads_as_empty_dict(fmt, tmp_path):
    path = write_raw(fmt, tmp_path / "f", good_arrays(), meta=None)
    assert load_features(path).meta == {}


def test_save_creates_parent_directories(tmp_path):
    out = save_features(make_set(), tmp_path / "a" / "b" / "f.npz")
    assert out.is_file()


def test_memory_mapped_set_can_be_saved_again(tmp_path):
    fs = load_features(save_features(make_set(), tmp_path / "gallery"))
    assert_same(fs, load_features(save_features(fs, tmp_path / "copy.npz")))
    assert_same(fs, load_features(save_features(fs, tmp_path / "gallery")))  # onto its own source


# --- FeatureSet.from_arrays ----------------------------------------------------------------------


def test_from_arrays_casts_float64_to_float32_and_defaults_ids():
    feats = np.arange(12, dtype=np.float64).reshape(4, 3)
    fs = FeatureSet.from_arrays(feats, [0, 1, 1, 0])
    assert fs.features.dtype == np.float32
    assert fs.features.flags.c_contiguous
    np.testing.assert_array_equal(fs.features, feats.astype(np.float32))
    assert fs.labels.dtype == np.int64
    assert fs.ids.dtype == np.int64
    np.testing.assert_array_equal(fs.ids, np.arange(4))
    assert fs.meta == {}
    assert fs.source == "<memory>"


def test_from_arrays_casts_int32_labels_and_ids_and_copies_meta():
    meta = {"version": "v1"}
    fs = FeatureSet.from_arrays(
        np.ones((3, 2), dtype=np.float32),
        np.array([1, 2, 3], dtype=np.int32),
        np.array([7, 8, 9], dtype=np.uint16),
        meta=meta,
    )
    assert fs.labels.dtype == np.int64 and fs.ids.dtype == np.int64
    meta["version"] = "changed"
    assert fs.meta == {"version": "v1"}


def test_from_arrays_accepts_non_contiguous_input():
    feats = np.ones((4, 6), dtype=np.float32)[:, ::2]
    fs = FeatureSet.from_arrays(feats, [0, 0, 1, 1])
    assert fs.features.flags.c_contiguous and fs.dim == 3


def test_repr_names_size_and_source():
    assert repr(make_set()) == "FeatureSet(n=6, dim=4, source='<memory>')"


# --- validation in memory ------------------------------------------------------------------------


def build(**overrides) -> FeatureSet:
    arrays = good_arrays()
    meta = overrides.pop("meta", {})
    arrays.update(overrides)
    return FeatureSet(arrays["features"], arrays["labels"], arrays["ids"], meta, "src.npz")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"features": np.ones((6, 4), dtype=np.float64)}, ["'features'", "float32", "float64"]),
        ({"features": np.ones((6, 4), dtype=np.float16)}, ["'features'", "float32"]),
        ({"features": np.ones(6, dtype=np.float32)}, ["'features'", "2-D"]),
        ({"features": np.ones((6, 4, 1), dtype=np.float32)}, ["'features'", "2-D"]),
        ({"features": [[1.0, 2.0]] * 6}, ["'features'", "2-D"]),
        ({"features": np.ones((6, 0), dtype=np.float32)}, ["'features'", "0 columns"]),
        ({"labels": np.zeros(5, dtype=np.int64)}, ["'labels'", "(6,)", "(5,)"]),
        ({"labels": np.zeros((6, 1), dtype=np.int64)}, ["'labels'", "(6,)"]),
        ({"labels": np.zeros(6, dtype=np.float32)}, ["'labels'", "int64"]),
        ({"labels": np.zeros(6, dtype=np.int32)}, ["'labels'", "int64"]),
        ({"ids": np.arange(7, dtype=np.int64)}, ["'ids'", "(6,)", "(7,)"]),
        ({"ids": np.arange(6, dtype=np.float64)}, ["'ids'", "int64"]),
        ({"ids": np.array([b"a", b"b", b"c", b"d", b"e", b"f"])}, ["'ids'", "unicode"]),
        ({"ids": np.array([0, 1, 2, 3, 3, 5], dtype=np.int64)}, ["'ids'", "unique", "3"]),
        ({"ids": np.array(["a", "b", "c", "x", "x", "y"])}, ["'ids'", "unique", "x"]),
        ({"meta": ["not", "a", "dict"]}, ["'meta'", "JSON object"]),
        ({"meta": {"when": object()}}, ["'meta'", "JSON"]),
    ],
)
def test_invalid_set_raises_compat_error_naming_the_field(overrides, words):
    with pytest.raises(CompatError) as info:
        build(**overrides)
    msg = str(info.value)
    assert msg.startswith("src.npz: ")
    for word in words:
        assert word in msg


def test_empty_set_is_rejected():
    with pytest.raises(CompatError, match="empty"):
        FeatureSet.from_arrays(np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 3, 5])
def test_non_finite_value_reports_its_row(bad, row):
    feats = np.ones((6, 4), dtype=np.float32)
    feats[row, 2] = bad
    feats[5, 0] = bad  # a later bad row must not hide the first
    with pytest.raises(CompatError, match=rf"'features' has a NaN or infinite value in row {row};"):
        build(features=feats)


def test_non_finite_row_is_right_past_the_first_scan_block(monkeypatch):
    monkeypatch.setattr(features_mod, "_SCAN_ROWS", 4)
    feats = np.ones((10, 3), dtype=np.float32)
    feats[9, 1] = np.nan
    feats[6, 2] = np.inf
    with pytest.raises(CompatError, match=r"in row 6;"):
        FeatureSet.from_arrays(feats, np.zeros(10, dtype=np.int64))


def test_validation_is_not_an_assert():
    # CompatError is what the CLI maps to exit 2; it must survive `python -O`.
    assert issubclass(CompatError, ValueError)
    with pytest.raises(CompatError):
        build(labels=np.zeros(2, dtype=np.int64))


def test_duplicate_message_counts_the_id_it_names():
    with pytest.raises(CompatError, match=r"appears 2 times"):
        build(ids=np.array([1, 1, 2, 2, 2, 3], dtype=np.int64))


# --- validation on load: the message names the file ----------------------------------------------


def bad_arrays(case: str) -> dict[str, np.ndarray]:
    arrays = good_arrays()
    if case == "float64":
        arrays["features"] = arrays["features"].astype(np.float64)
    elif case == "1d":
        arrays["features"] = np.ones(6, dtype=np.float32)
    elif case == "labels_len":
        arrays["labels"] = np.zeros(4, dtype=np.int64)
    elif case == "ids_len":
        arrays["ids"] = np.arange(8, dtype=np.int64)
    elif case == "dup_ids":
        arrays["ids"] = np.array([5, 1, 2, 5, 4, 0], dtype=np.int64)
    elif case == "nan":
        arrays["features"][4, 1] = np.nan
    elif case == "inf":
        arrays["features"][2, 3] = np.inf
    elif case == "empty":
        arrays = {
            "features": np.zeros((0, 4), dtype=np.float32),
            "labels": np.zeros(0, dtype=np.int64),
            "ids": np.zeros(0, dtype=np.int64),
        }
    return arrays


@FORMATS
@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("float64", r"'features' must be float32, got float64"),
        ("1d", r"'features' must be a 2-D array"),
        ("labels_len", r"'labels' must have shape \(6,\), got \(4,\)"),
        ("ids_len", r"'ids' must have shape \(6,\), got \(8,\)"),
        ("dup_ids", r"'ids' must be unique; id .*5"),
        ("nan", r"'features' has a NaN or infinite value in row 4;"),
        ("inf", r"'features' has a NaN or infinite value in row 2;"),
        ("empty", r"empty \(0 rows\)"),
    ],
)
def test_bad_file_raises_compat_error_naming_file_and_field(fmt, case, pattern, tmp_path):
    path = write_raw(fmt, tmp_path / "bad", bad_arrays(case))
    with pytest.raises(CompatError, match=pattern) as info:
        load_features(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_path_is_a_compat_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(CompatError, match="no such feature file") as info:
        load_features(missing)
    assert str(missing) in str(info.value)


def test_missing_array_in_npz_is_named(tmp_path):
    arrays = good_arrays()
    del arrays["ids"]
    path = write_raw("npz", tmp_path / "f", arrays)
    with pytest.raises(CompatError, match=r"missing array 'ids'") as info:
        load_features(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["features", "labels", "ids"])
def test_missing_npy_in_directory_is_named(key, tmp_path):
    arrays = good_arrays()
    del arrays[key]
    path = write_raw("dir", tmp_path / "d", arrays)
    with pytest.raises(CompatError, match="missing") as info:
        load_features(path)
    assert str(path / f"{key}.npy") in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty-file"),
        pytest.param(b"PK\x03\x04" + b"\x00" * 40, id="truncated-zip"),
        pytest.param(zipfile.ZipFile, id="zip-with-garbage-member"),
    ],
)
def test_corrupt_npz_is_a_compat_error(payload, tmp_path):
    path = tmp_path / "corrupt.npz"
    if payload is zipfile.ZipFile:
        with zipfile.ZipFile(path, "w") as z:
            for key in ("features", "labels", "ids"):
                z.writestr(f"{key}.npy", b"not an npy header at all")
    else:
        path.write_bytes(payload)
    with pytest.raises(CompatError) as info:
        load_features(path)
    assert str(path) in str(info.value)


def test_non_zip_file_is_a_compat_error(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("this is not a feature file\n", encoding="utf-8")
    with pytest.raises(CompatError, match="notes.npz"):
        load_features(path)


def test_bare_npy_file_is_a_compat_error(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.ones((3, 2), dtype=np.float32))
    with pytest.raises(CompatError, match="features.npy"):
        load_features(path)


@pytest.mark.parametrize("key", ["meta", "ids", "features"])
def test_pickle_inside_npz_is_refused(key, tmp_path):
    arrays: dict[str, np.ndarray] = dict(good_arrays())
    arrays["meta"] = np.array("{}")
    arrays[key] = np.array([{"a": 1}] * (1 if key == "meta" else 6), dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays)
    with pytest.raises(CompatError, match="pickle") as info:
        load_features(path)
    assert f"'{key}'" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("key", ["ids", "labels", "features"])
def test_pickle_inside_directory_is_refused(key, tmp_path):
    arrays: dict[str, np.ndarray] = dict(good_arrays())
    arrays[key] = np.array([{"a": 1}] * 6, dtype=object)
    path = write_raw("dir", tmp_path / "evil", arrays)
    with pytest.raises(CompatError, match="pickle") as info:
        load_features(path)
    assert str(path / f"{key}.npy") in str(info.value)


@pytest.mark.parametrize(
    ("meta", "pattern"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object, got list"), ('"text"', "JSON object, got str")],
)
@FORMATS
def test_bad_meta_is_a_compat_error(fmt, meta, pattern, tmp_path):
    path = write_raw(fmt, tmp_path / "m", good_arrays(), meta=meta)
    with pytest.raises(CompatError, match=pattern) as info:
        load_features(path)
    assert "'meta'" in str(info.value)


def test_non_scalar_meta_in_npz_is_a_compat_error(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, **good_arrays(), meta=np.array(["{}", "{}"]))
    with pytest.raises(CompatError, match="'meta'"):
        load_features(path)


def test_non_utf8_meta_json_is_a_compat_error(tmp_path):
    path = write_raw("dir", tmp_path / "m", good_arrays(), meta=None)
    (path / "meta.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(CompatError, match="meta.json"):
        load_features(path)


# --- atomic writes -------------------------------------------------------------------------------


@FORMATS
def test_save_leaves_no_temporary_files(fmt, tmp_path):
    out = save_features(make_set(), target(fmt, tmp_path))
    assert os.listdir(tmp_path) == [out.name]
    if fmt == "dir":
        assert sorted(os.listdir(out)) == ["features.npy", "ids.npy", "labels.npy", "meta.json"]


@FORMATS
def test_overwriting_an_existing_target_replaces_it(fmt, tmp_path):
    path = target(fmt, tmp_path)
    save_features(make_set(n=6, seed=1, meta={"version": "v1"}), path)
    new = make_set(n=9, d=5, seed=2, ids=[f"i{k}" for k in range(9)], meta={"version": "v2"})
    save_features(new, path)
    assert_same(new, load_features(path))
    assert os.listdir(tmp_path) == [path.name]


def test_overwriting_a_directory_drops_its_stale_files(tmp_path):
    path = tmp_path / "gallery"
    save_features(make_set(), path)
    (path / "stale.txt").write_text("old", encoding="utf-8")
    save_features(make_set(seed=3), path)
    assert "stale.txt" not in os.listdir(path)


def _boom(*args, **kwargs):
    raise OSError("disk full")


def test_failed_npz_write_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", _boom)
    with pytest.raises(OSError, match="disk full"):
        save_features(make_set(), tmp_path / "f.npz")
    assert os.listdir(tmp_path) == []


def test_failed_npz_write_keeps_the_existing_target(tmp_path, monkeypatch):
    path = save_features(make_set(meta={"version": "v1"}), tmp_path / "f.npz")
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", _boom)
    with pytest.raises(OSError, match="disk full"):
        save_features(make_set(seed=5, meta={"version": "v2"}), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["f.npz"]
    monkeypatch.undo()
    assert load_features(path).meta == {"version": "v1"}


def _fail_on_second_save(monkeypatch):
    real_save = np.save
    calls = []

    def save(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save)


def test_failed_directory_write_leaves_nothing_behind(tmp_path, monkeypatch):
    _fail_on_second_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_features(make_set(), tmp_path / "gallery")
    assert os.listdir(tmp_path) == []


def test_failed_directory_write_keeps_the_existing_target(tmp_path, monkeypatch):
    path = save_features(make_set(meta={"version": "v1"}), tmp_path / "gallery")
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}
    _fail_on_second_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_features(make_set(seed=5, meta={"version": "v2"}), path)
    assert os.listdir(tmp_path) == ["gallery"]
    assert {name: (path / name).read_bytes() for name in os.listdir(path)} == before
    monkeypatch.undo()
    assert load_features(path).meta == {"version": "v1"}


@pytest.mark.parametrize("fmt", ["npz", "dir"])
def test_groups_round_trip_and_stay_optional(fmt, tmp_path):
    rng = np.random.default_rng(0)
    fs = FeatureSet.from_arrays(rng.standard_normal((6, 3)), [0, 0, 1, 1, 2, 2], groups=np.array([1, 2, 1, 2, 1, 2],
                                                                                                    dtype=np.int32))
    assert fs.groups.dtype == np.int64
    path = save_features(fs, tmp_path / ("g.npz" if fmt == "npz" else "g"))
    assert load_features(path).groups.tolist() == [1, 2, 1, 2, 1, 2]
    plain = save_features(FeatureSet.from_arrays(fs.features, fs.labels), path)  # overwritten without groups
    assert load_features(plain).groups is None


@pytest.mark.parametrize(("groups", "words"), [(np.zeros(5, np.int64), "shape (6,)"),
                                               (np.zeros(6, np.float64), "must be int64")])
def test_bad_groups_name_the_field(groups, words):
    with pytest.raises(CompatError, match=rf"field 'groups'.*{re.escape(words)}"):
        FeatureSet(np.zeros((6, 2), np.float32), np.zeros(6, np.int64), np.arange(6), groups=groups, source="x")
