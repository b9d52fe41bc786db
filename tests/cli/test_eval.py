"""End-to-end tests of ``compat eval`` through click's CliRunner, on tiny seeded synthetic feature sets.

Covers the command's contract (docs/design.md): the three report files, the ``compat.json`` schema, every cell equal to
what the library's :class:`RetrievalEvaluator` gives for that cell, the summaries recomputed by hand,
the options (protocols, metrics, similarity, backends, memory budget, dimension policies, separate
queries, the independent reference, directory inputs), exit code 2 with one line on stderr and no
output for every kind of bad input, and MLflow tracking on and off.

click >= 8.2 keeps stderr apart from stdout in CliRunner results (``result.stderr`` / ``result.stdout``;
``result.output`` is both, interleaved), so no ``mix_stderr`` argument is needed or accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from compat.cli import cli
from compat.features import FeatureSet, load_features, save_features
from compat.retrieval.evaluator import RetrievalEvaluator

N, C, D = 400, 8, 16  # items, classes, feature size: 50 items per class
REPORT_FILES = ("compat.json", "compat.md", "compat.png")
SUMMARY_KEYS = {"ac", "am", "bc", "fc", "ecc", "update_gain"}
DEFAULT_METRICS = ["cmc@1", "cmc@5", "map"]


# --------------------------------------------------------------------------------------------------
# Synthetic feature sets
# --------------------------------------------------------------------------------------------------


def _fs(features: np.ndarray, labels: np.ndarray, ids: np.ndarray, version: str) -> FeatureSet:
    meta = {"model": "synthetic", "version": version, "dataset": "blobs", "split": "test", "normalized": False}
    return FeatureSet.from_arrays(features, labels, ids, meta=meta)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Feature files of one synthetic 'dataset' seen by several model versions.

    - v1: class centres + noise 1.5 (the old model);
    - v2: the same centres, noise 1.0 (a compatible, better model); rows stored in another order;
    - v3: the same centres, noise 0.7 (compatible with both);
    - v2rot: v2 times a random orthogonal matrix (as good as v2 on its own, incompatible with v1);
    - v24: 24-d, its first 16 coordinates are v2's (for --dim-policy);
    - q2: a separate query set for v2: 120 of the gallery ids, freshly drawn features;
    - indep: an 'independently trained' newest model (other centres, noise 0.6);
    - v1_dir, v2_dir: v1 and v2 in the directory (.npy) format.
    """
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(12345)
    labels = np.repeat(np.arange(C), N // C).astype(np.int64)
    ids = rng.permutation(np.arange(10_000, 10_000 + N)).astype(np.int64)
    centres = rng.normal(size=(C, D))
    base = centres[labels]
    v1 = base + 1.5 * rng.normal(size=(N, D))
    v2 = base + 1.0 * rng.normal(size=(N, D))
    v3 = base + 0.7 * rng.normal(size=(N, D))
    rotation, _ = np.linalg.qr(rng.normal(size=(D, D)))
    v2rot = v2 @ rotation
    v24 = np.concatenate([v2, rng.normal(size=(N, 8))], axis=1)
    sub = np.sort(rng.choice(N, 120, replace=False))
    q2 = base[sub] + 1.0 * rng.normal(size=(len(sub), D))
    indep = rng.normal(size=(C, D))[labels] + 0.6 * rng.normal(size=(N, D))
    perm = rng.permutation(N)  # v2 stores its rows in another order: items are matched by id

    sets = {
        "v1": _fs(v1, labels, ids, "v1"),
        "v2": _fs(v2[perm], labels[perm], ids[perm], "v2"),
        "v3": _fs(v3, labels, ids, "v3"),
        "v2rot": _fs(v2rot, labels, ids, "v2rot"),
        "v24": _fs(v24, labels, ids, "v24"),
        "q2": _fs(q2, labels[sub], ids[sub], "v2"),
        "indep": _fs(indep, labels, ids, "indep"),
    }
    paths = {name: save_features(fs, root / f"{name}.npz") for name, fs in sets.items()}
    paths["v1_dir"] = save_features(sets["v1"], root / "v1_dir")
    paths["v2_dir"] = save_features(sets["v2"], root / "v2_dir")
    assert paths["v1_dir"].is_dir() and (paths["v1_dir"] / "features.npy").is_file()
    return paths


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


def versions(data: dict[str, Path], *names: str, as_names: tuple[str, ...] | None = None) -> list[str]:
    """``--version NAME=PATH`` arguments; the version name is the data key unless ``as_names`` says."""
    out = []
    for i, key in enumerate(names):
        out += ["--version", f"{as_names[i] if as_names else key}={data[key]}"]
    return out


def run_ok(out: Path, *args: str | Path) -> dict:
    """Run ``compat eval``, expect success and the three reports; return compat.json."""
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "compat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reports written to" in result.stdout
    assert result.stderr == ""
    doc = json.loads((out / "compat.json").read_text(encoding="utf-8"))
    flips = () if doc["flips"] is None else ("flips.csv",)  # every protocol but pairs ranks items
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES + flips)  # no temporary left behind
    return doc


def check_schema(doc: dict, names: list[str], protocol: str, metrics: list[str]) -> None:
    assert set(doc) == {"versions", "protocol", "metrics", "summary", "queries", "ranks", "query_sample", "flips",
                        "classes", "warnings"}
    assert doc["versions"] == names
    assert doc["protocol"] == protocol
    assert list(doc["metrics"]) == metrics
    assert list(doc["summary"]) == metrics
    t = len(names)
    for m in metrics:
        matrix = doc["metrics"][m]
        assert len(matrix) == t and all(len(row) == t for row in matrix)
        for i in range(t):
            for j in range(t):
                if j > i:
                    assert matrix[i][j] is None, (m, i, j)
                else:
                    assert isinstance(matrix[i][j], float) and 0.0 <= matrix[i][j] <= 1.0, (m, i, j)
        assert set(doc["summary"][m]) == SUMMARY_KEYS
    counts = doc["queries"]
    assert len(counts) == t and all(len(row) == t for row in counts)
    for i in range(t):
        for j in range(t):
            if j > i:
                assert counts[i][j] is None
            else:
                assert set(counts[i][j]) == {"n", "without_positive"}
                assert counts[i][j]["n"] > 0 and 0 <= counts[i][j]["without_positive"] <= counts[i][j]["n"]


def check_cells(doc: dict, cells: dict[tuple[int, int], tuple[FeatureSet, FeatureSet]], evaluator) -> None:
    """Every cell of compat.json equals ``evaluator.evaluate(query, gallery)`` called directly."""
    t = len(doc["versions"])
    assert set(cells) == {(i, j) for i in range(t) for j in range(i + 1)}
    for (i, j), (query, gallery) in cells.items():
        expected = evaluator.evaluate(query, gallery)
        for m in doc["metrics"]:
            assert doc["metrics"][m][i][j] == expected[m], (m, i, j)


def chain_cells(sets: list[FeatureSet], queries: dict[int, FeatureSet] | None = None):
    queries = queries or {}
    return {(i, j): (queries.get(i, sets[i]), sets[j]) for i in range(len(sets)) for j in range(i + 1)}


def hand_summary(m: list[list[float | None]], *, reference_self: float | None = None) -> dict:
    """AC / AM / BC / FC / ECC / update gain as README.md defines them (ties fail)."""
    t = len(m)
    lower = [m[i][j] for i in range(t) for j in range(i + 1)]
    ecc = [[(m[i][j] > m[j][j]) if j < i else None for j in range(t)] for i in range(t)]
    out: dict = {"am": sum(lower) / len(lower), "ecc": ecc}
    if t < 2:
        return out | {"ac": None, "bc": None, "fc": None, "update_gain": None}
    pairs = [ecc[i][j] for i in range(t) for j in range(i)]
    last = t - 1
    ref = m[last][last] if reference_self is None else reference_self
    denom = ref - m[last - 1][last - 1]
    return out | {
        "ac": sum(pairs) / len(pairs),
        "bc": sum(m[last][j] - m[j][j] for j in range(last)) / last,
        "fc": sum(m[i][i - 1] - m[i][i] for i in range(1, t)) / (t - 1),
        "update_gain": None if denom == 0 else (m[last][last - 1] - m[last - 1][last - 1]) / denom,
    }


def check_summary(doc: dict, *, reference_self: dict[str, float] | None = None) -> None:
    for metric, matrix in doc["metrics"].items():
        got = doc["summary"][metric]
        want = hand_summary(matrix, reference_self=(reference_self or {}).get(metric))
        assert got["ecc"] == want["ecc"], metric
        for key in ("ac", "am", "bc", "fc", "update_gain"):
            if want[key] is None:
                assert got[key] is None, (metric, key)
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), (metric, key)


def load(data: dict[str, Path], *names: str) -> list[FeatureSet]:
    return [load_features(data[n]) for n in names]


# --------------------------------------------------------------------------------------------------
# 1. Successful evaluations
# --------------------------------------------------------------------------------------------------


def test_two_version_chain_defaults(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2"))
    check_schema(doc, ["v1", "v2"], "loo", DEFAULT_METRICS)
    check_cells(doc, chain_cells(load(data, "v1", "v2")), RetrievalEvaluator())
    check_summary(doc)
    # v2 is v1's structure with less noise: compatible, and better on its own gallery.
    m = doc["metrics"]["cmc@1"]
    assert doc["summary"]["cmc@1"]["ecc"] == [[None, None], [True, None]]
    assert doc["summary"]["cmc@1"]["ac"] == 1.0
    assert m[1][0] > m[0][0] and m[1][1] > m[0][0]


def test_three_version_chain(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2", "v3"))
    check_schema(doc, ["v1", "v2", "v3"], "loo", DEFAULT_METRICS)
    check_cells(doc, chain_cells(load(data, "v1", "v2", "v3")), RetrievalEvaluator())
    check_summary(doc)
    ecc = doc["summary"]["cmc@1"]["ecc"]
    assert ecc[1][0] is True and ecc[2][0] is True and ecc[2][1] is True
    assert doc["summary"]["cmc@1"]["ac"] == 1.0
    md = (tmp_path / "out" / "compat.md").read_text(encoding="utf-8")
    assert all(v in md for v in ("v1", "v2", "v3"))


def test_rotated_model_fails_the_compatibility_criterion(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2rot", as_names=("v1", "v2")))
    check_cells(doc, chain_cells(load(data, "v1", "v2rot")), RetrievalEvaluator())
    check_summary(doc)
    m = doc["metrics"]["cmc@1"]
    assert doc["summary"]["cmc@1"]["ecc"] == [[None, None], [False, None]]
    assert doc["summary"]["cmc@1"]["ac"] == 0.0
    assert m[1][1] > m[0][0] > 2 * m[1][0]  # better alone, near chance on the old gallery


def test_template_protocol(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2"), "--protocol", "template")
    check_schema(doc, ["v1", "v2"], "template", DEFAULT_METRICS)
    check_cells(doc, chain_cells(load(data, "v1", "v2")), RetrievalEvaluator(protocol="template"))
    check_summary(doc)


def test_pairs_protocol_is_seeded(data, tmp_path) -> None:
    args = [*versions(data, "v1", "v2"), "--protocol", "pairs", "--pairs", "1000"]
    first = run_ok(tmp_path / "a", *args)
    check_schema(first, ["v1", "v2"], "pairs", ["acc"])
    check_cells(first, chain_cells(load(data, "v1", "v2")), RetrievalEvaluator(protocol="pairs", pairs=1000))
    check_summary(first)
    assert run_ok(tmp_path / "b", *args, "--seed", "0") == first
    others = [run_ok(tmp_path / f"seed{s}", *args, "--seed", str(s)) for s in (1, 2)]
    assert any(o["metrics"] != first["metrics"] for o in others)
    check_cells(
        others[0], chain_cells(load(data, "v1", "v2")), RetrievalEvaluator(protocol="pairs", pairs=1000, seed=1)
    )


def test_map_at_r_metric(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2"), "--metric", "map@r", "--metric", "cmc@1")
    check_schema(doc, ["v1", "v2"], "loo", ["map@r", "cmc@1"])
    check_cells(doc, chain_cells(load(data, "v1", "v2")), RetrievalEvaluator(("map@r", "cmc@1")))
    check_summary(doc)


def test_l2_similarity(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2"), "--similarity", "l2")
    check_schema(doc, ["v1", "v2"], "loo", DEFAULT_METRICS)
    check_cells(doc, chain_cells(load(data, "v1", "v2")), RetrievalEvaluator(similarity="l2"))
    check_summary(doc)
    cosine = json.loads(json.dumps(RetrievalEvaluator().evaluate(*load(data, "v1", "v1")).values))
    assert doc["metrics"]["map"][0][0] != cosine["map"]  # the option reached the evaluator


@pytest.mark.parametrize(
    ("similarity", "metrics"),
    [
        ("cosine", ()),  # map needs the full ranking: streamed score rows, top-k re-scored
        ("cosine", ("cmc@1", "cmc@5")),  # CMC only: the backend's top-k search (torch or faiss)
        ("l2", ("cmc@1", "cmc@5")),
        ("l2", ("map",)),
    ],
)
def test_backends_and_memory_budget_give_identical_reports(data, tmp_path, similarity, metrics) -> None:
    args = [*versions(data, "v1", "v2", "v3"), "--similarity", similarity]
    for m in metrics:
        args += ["--metric", m]
    texts = {}
    for backend in ("torch", "faiss"):
        for budget in ("1GiB", "1MiB"):  # 1MiB: the 400 queries go in several chunks
            out = tmp_path / f"{backend}-{budget}"
            extra = [] if budget == "1GiB" else ["--memory-budget", budget]  # 1GiB: the default
            run_ok(out, *args, "--backend", backend, *extra)
            texts[backend, budget] = (out / "compat.json").read_text(encoding="utf-8")
    assert len(set(texts.values())) == 1, texts


@pytest.mark.parametrize("policy", ["truncate", "pad"])
def test_dim_policy(data, tmp_path, policy) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v24"), "--dim-policy", policy)
    check_schema(doc, ["v1", "v24"], "loo", DEFAULT_METRICS)
    v1, v24 = load(data, "v1", "v24")
    if policy == "truncate":
        cross = (FeatureSet.from_arrays(v24.features[:, :16], v24.labels, v24.ids), v1)
    else:
        padded = np.concatenate([v1.features, np.zeros((v1.n, 8), np.float32)], axis=1)
        cross = (v24, FeatureSet.from_arrays(padded, v1.labels, v1.ids))
    check_cells(doc, {(0, 0): (v1, v1), (1, 0): cross, (1, 1): (v24, v24)}, RetrievalEvaluator())
    check_summary(doc)
    if policy == "truncate":  # v24's first 16 coordinates are v2: the cross cell is v2 on v1
        v2_on_v1 = RetrievalEvaluator().evaluate(*load(data, "v2", "v1"))
        assert doc["metrics"]["cmc@1"][1][0] == v2_on_v1["cmc@1"]


def test_separate_query_set(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2"), "--query", f"v2={data['q2']}")
    check_schema(doc, ["v1", "v2"], "loo", DEFAULT_METRICS)
    v1, v2, q2 = load(data, "v1", "v2", "q2")
    check_cells(doc, chain_cells([v1, v2], {1: q2}), RetrievalEvaluator())
    check_summary(doc)
    plain = RetrievalEvaluator().evaluate(v2, v1)
    assert doc["metrics"]["map"][1][0] != plain["map"]  # the query set was used
    assert "120" in (tmp_path / "out" / "compat.md").read_text(encoding="utf-8")  # per-cell query count


def test_independent_reference(data, tmp_path) -> None:
    doc = run_ok(tmp_path / "out", *versions(data, "v1", "v2"), "--independent", data["indep"])
    check_schema(doc, ["v1", "v2"], "loo", DEFAULT_METRICS)
    check_cells(doc, chain_cells(load(data, "v1", "v2")), RetrievalEvaluator())
    indep = load_features(data["indep"])
    reference = RetrievalEvaluator().evaluate(indep, indep).values
    check_summary(doc, reference_self=reference)
    without = hand_summary(doc["metrics"]["map"])["update_gain"]
    assert doc["summary"]["map"]["update_gain"] != pytest.approx(without)


def test_directory_inputs_match_npz(data, tmp_path) -> None:
    npz = run_ok(tmp_path / "npz", *versions(data, "v1", "v2"))
    both = run_ok(tmp_path / "dir", *versions(data, "v1_dir", "v2_dir", as_names=("v1", "v2")))
    mixed = run_ok(tmp_path / "mixed", *versions(data, "v1_dir", "v2", as_names=("v1", "v2")))
    assert both == npz and mixed == npz


def test_string_ids_match_integer_ids(data, tmp_path) -> None:
    paths = []
    for name in ("v1", "v2"):
        fs = load_features(data[name])
        ids = np.array([f"item-{i}" for i in fs.ids])  # unicode ids of several lengths
        paths.append(
            save_features(
                FeatureSet.from_arrays(fs.features, fs.labels, ids, meta=fs.meta), tmp_path / f"{name}-str.npz"
            )
        )
    ints = run_ok(tmp_path / "int", *versions(data, "v1", "v2"))
    strs = run_ok(tmp_path / "str", "--version", f"v1={paths[0]}", "--version", f"v2={paths[1]}")
    assert strs == ints


def test_ties_fail_unless_ties_pass(data, tmp_path) -> None:
    same = versions(data, "v1", "v1_dir", as_names=("v1", "v1b"))  # the same features twice: every cell ties
    strict = run_ok(tmp_path / "strict", *same)
    loose = run_ok(tmp_path / "loose", *same, "--ties-pass")
    assert strict["metrics"] == loose["metrics"]
    for m in DEFAULT_METRICS:
        matrix = strict["metrics"][m]
        assert matrix[1][0] == matrix[0][0] == matrix[1][1]
        assert strict["summary"][m]["ecc"][1][0] is False and strict["summary"][m]["ac"] == 0.0
        assert loose["summary"][m]["ecc"][1][0] is True and loose["summary"][m]["ac"] == 1.0


# --------------------------------------------------------------------------------------------------
# 2. Bad input: exit 2, one line on stderr naming the file or field, no traceback, no output
# --------------------------------------------------------------------------------------------------


def _arrays(path: Path) -> dict[str, np.ndarray]:
    fs = load_features(path)
    return {
        "features": np.array(fs.features),
        "labels": np.array(fs.labels),
        "ids": np.array(fs.ids),
        "meta": np.array(json.dumps(fs.meta)),
    }


def _raw_npz(tmp: Path, data: dict[str, Path], name: str = "bad", **changes: np.ndarray | None) -> Path:
    """v2's arrays with ``changes`` (None drops an array), written with no validation."""
    arrays = _arrays(data["v2"]) | changes
    path = tmp / f"{name}.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})  # savez pickles object arrays
    return path


def _raw_dir(tmp: Path, data: dict[str, Path], **changes: np.ndarray | None) -> Path:
    arrays = _arrays(data["v2"]) | changes
    meta = arrays.pop("meta")
    path = tmp / "bad_dir"
    path.mkdir()
    for key, arr in arrays.items():
        if arr is not None:
            np.save(path / f"{key}.npy", arr, allow_pickle=True)
    (path / "meta.json").write_text(str(meta), encoding="utf-8")
    return path


def _bad_v2(path: Path, data: dict[str, Path]) -> list[str]:
    return ["--version", f"v1={data['v1']}", "--version", f"v2={path}"]


def _features(data, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return fn(_arrays(data["v2"])["features"].copy())


def _set(x: np.ndarray, index, value) -> np.ndarray:
    x[index] = value
    return x


# Each builder returns (arguments without --out, substrings the stderr line must contain).
Builder = Callable[[Path, dict[str, Path]], tuple[list[str], list[str]]]


def _missing(tmp, data):
    p = tmp / "nope.npz"
    return _bad_v2(p, data), [str(p)]


def _random_bytes(tmp, data):
    p = tmp / "random.npz"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return _bad_v2(p, data), [str(p)]


def _truncated_zip(tmp, data):
    p = tmp / "truncated.npz"
    blob = data["v2"].read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    return _bad_v2(p, data), [str(p)]


def _single_npy(tmp, data):
    p = tmp / "single.npz"
    with open(p, "wb") as fh:
        np.save(fh, _arrays(data["v2"])["features"])
    return _bad_v2(p, data), [str(p)]


def _npz_case(expect: list[str], **changes) -> Builder:
    """A raw .npz for v2 with some arrays replaced; the file's path is always expected in the message."""

    def build(tmp, data):
        values = {k: (v(data) if callable(v) else v) for k, v in changes.items()}
        p = _raw_npz(tmp, data, **values)
        return _bad_v2(p, data), [str(p), *expect]

    return build


def _dir_case(expect: list[str], **changes) -> Builder:
    def build(tmp, data):
        values = {k: (v(data) if callable(v) else v) for k, v in changes.items()}
        p = _raw_dir(tmp, data, **values)
        return _bad_v2(p, data), [str(p), *expect]

    return build


def _absent_id(tmp, data):
    ids = _arrays(data["v2"])["ids"]
    ids[7] = 99_999  # v2 has an item that v1 does not
    p = _raw_npz(tmp, data, ids=ids)
    return _bad_v2(p, data), ["99999", "v2", "v1", "absent"]


def _dim_mismatch(tmp, data):
    return versions(data, "v1", "v24"), ["feature sizes", "16", "24", "v24"]


def _options(*extra: str, expect: list[str]) -> Builder:
    def build(tmp, data):
        return [*versions(data, "v1", "v2"), *extra], expect

    return build


def _version_twice(tmp, data):
    return versions(data, "v1", "v2", as_names=("v1", "v1")), ["--version", "'v1'", "twice"]


def _unknown_query_version(tmp, data):
    return [*versions(data, "v1", "v2"), "--query", f"v9={data['q2']}"], ["--query", "'v9'"]


def _bad_query_set(tmp, data):
    p = _raw_npz(tmp, data, "badq", features=_features(data, lambda x: _set(x, (3, 2), np.nan)))
    return [*versions(data, "v1", "v2"), "--query", f"v2={p}"], [str(p), "features"]


def _bad_independent(tmp, data):
    p = _raw_npz(tmp, data, "badi", ids=np.zeros(N, np.int64))
    return [*versions(data, "v1", "v2"), "--independent", str(p)], [str(p), "ids"]


def _object_array(value) -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = value
    return arr


BAD_INPUTS = [
    pytest.param(_missing, id="missing-file"),
    pytest.param(_random_bytes, id="random-bytes"),
    pytest.param(_truncated_zip, id="truncated-zip"),
    pytest.param(_single_npy, id="single-npy-array"),
    pytest.param(_npz_case(["ids"], ids=None), id="missing-array"),
    pytest.param(_npz_case(["features"], features=lambda d: _features(d, lambda x: x[:, 0].copy())), id="features-1d"),
    pytest.param(_npz_case(["labels"], labels=np.zeros(N - 1, np.int64)), id="labels-wrong-length"),
    pytest.param(_npz_case(["ids"], ids=np.arange(N + 1, dtype=np.int64)), id="ids-wrong-length"),
    pytest.param(
        _npz_case(["features"], features=lambda d: _features(d, lambda x: _set(x, (5, 3), np.nan))), id="nan-features"
    ),
    pytest.param(
        _npz_case(["features"], features=lambda d: _features(d, lambda x: _set(x, (0, 0), -np.inf))), id="inf-features"
    ),
    pytest.param(
        _npz_case(["ids"], ids=lambda d: _set(_arrays(d["v2"])["ids"], 1, _arrays(d["v2"])["ids"][0])),
        id="duplicate-ids",
    ),
    pytest.param(
        _npz_case(
            ["empty"], features=np.zeros((0, D), np.float32), labels=np.zeros(0, np.int64), ids=np.zeros(0, np.int64)
        ),
        id="empty-set",
    ),
    pytest.param(_npz_case(["meta", "pickle"], meta=_object_array({"model": "x"})), id="pickle-in-meta"),
    pytest.param(_npz_case(["labels", "pickle"], labels=np.array([object()] * N, dtype=object)), id="pickle-in-labels"),
    pytest.param(_npz_case(["meta"], meta=np.array("{not json")), id="meta-not-json"),
    pytest.param(_dir_case(["features.npy"], features=None), id="dir-missing-array"),
    pytest.param(_dir_case([], labels=np.array([object()] * N, dtype=object)), id="dir-pickle-in-labels"),
    pytest.param(
        _dir_case(["features"], features=lambda d: _features(d, lambda x: _set(x, (9, 1), np.inf))),
        id="dir-inf-features",
    ),
    pytest.param(_absent_id, id="query-id-absent-from-gallery"),
    pytest.param(_dim_mismatch, id="dim-mismatch"),
    pytest.param(_options("--metric", "cmc@0", expect=["metric", "cmc@0"]), id="metric-cmc@0"),
    pytest.param(_options("--metric", "foo", expect=["metric", "foo"]), id="metric-foo"),
    pytest.param(
        _options("--protocol", "pairs", "--metric", "map", expect=["map", "pairs"]), id="metric-not-for-protocol"
    ),
    pytest.param(
        _options("--protocol", "template", "--metric", "map@r", expect=["map@r", "template"]),
        id="map@r-not-for-template",
    ),
    pytest.param(_options("--memory-budget", "lots", expect=["memory_budget", "lots"]), id="bad-memory-budget"),
    pytest.param(_version_twice, id="version-twice"),
    pytest.param(_unknown_query_version, id="query-unknown-version"),
    pytest.param(_bad_query_set, id="nan-in-query-set"),
    pytest.param(_bad_independent, id="bad-independent-set"),
]


def assert_clean_failure(result: Result, out: Path) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.parametrize("build", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(data, tmp_path, build: Builder) -> None:
    args, expect = build(tmp_path, data)
    out = tmp_path / "out"
    result = invoke(*args, "--out", out)
    assert_clean_failure(result, out)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("compat: error: "), lines[0]
    for text in expect:
        assert text in lines[0], (text, lines[0])
    assert result.stdout == ""


# click's own usage errors: exit 2 and click's 'Error: ...' line naming the option (after the usage line).
USAGE_ERRORS = [
    pytest.param(["--protocol", "bogus"], "--protocol", id="unknown-protocol"),
    pytest.param(["--similarity", "dot"], "--similarity", id="unknown-similarity"),
    pytest.param(["--dim-policy", "crop"], "--dim-policy", id="unknown-dim-policy"),
    pytest.param(["--version", "v3features.npz"], "--version", id="version-without-equals"),
    pytest.param(["--version", "v3="], "--version", id="version-without-path"),
    pytest.param(["--version", "=x.npz"], "--version", id="version-without-name"),
    pytest.param(["--query", "q2.npz"], "--query", id="query-without-equals"),
]


@pytest.mark.parametrize(("extra", "option"), USAGE_ERRORS)
def test_usage_error_exits_2(data, tmp_path, extra: list[str], option: str) -> None:
    out = tmp_path / "out"
    result = invoke(*versions(data, "v1", "v2"), *extra, "--out", out)
    assert_clean_failure(result, out)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.stderr
    assert result.stdout == ""


def test_no_version_is_a_usage_error(tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("--out", out)
    assert_clean_failure(result, out)
    assert "--version" in result.stderr


# --------------------------------------------------------------------------------------------------
# 3. MLflow
# --------------------------------------------------------------------------------------------------


def test_track_logs_a_run(data, tmp_path, tmp_mlflow, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # any default artifact root stays under tmp_path
    out = tmp_path / "out"
    result = invoke(*versions(data, "v1", "v2"), "--track", "--experiment", "cli-eval", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    doc = json.loads((out / "compat.json").read_text(encoding="utf-8"))
    run_line = [line for line in result.stdout.splitlines() if line.startswith("MLflow run ")]
    assert len(run_line) == 1, result.stdout
    run_id = run_line[0].split()[-1]

    client = MlflowClient(tracking_uri=tmp_mlflow)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "cli-eval"
    metrics = run.data.metrics
    assert metrics["cmc_at_1.v2_on_v1"] == pytest.approx(doc["metrics"]["cmc@1"][1][0], rel=1e-12)
    assert metrics["map.v1_on_v1"] == pytest.approx(doc["metrics"]["map"][0][0], rel=1e-12)
    assert metrics["cmc_at_5.am"] == pytest.approx(doc["summary"]["cmc@5"]["am"], rel=1e-12)
    assert "cmc_at_1.v1_on_v2" not in metrics  # no cell above the diagonal
    assert run.data.params["protocol"] == "loo" and run.data.params["versions"] == "v1,v2"
    assert {a.path for a in client.list_artifacts(run_id)} >= set(REPORT_FILES)

    # MLFLOW_TRACKING_URI set (by tmp_mlflow) is enough, without --track.
    again = invoke(*versions(data, "v1", "v2"), "--experiment", "cli-eval", "--out", tmp_path / "again")
    assert again.exit_code == 0, (again.output, again.exception)
    assert "MLflow run " in again.stdout
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_no_tracking_without_flag_or_uri(data, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run_ok(tmp_path / "out", *versions(data, "v1", "v2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no mlflow.db, no mlruns/
    assert not (tmp_path / "mlflow.db").exists()
