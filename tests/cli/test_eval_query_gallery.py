"""``compat eval --protocol query-gallery``: re-identification-style runs (separate queries, camera groups), a
relevance file, flips.csv; every bad input exits 2 with one line naming the file (and the line) and no output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from compat.cli import cli
from compat.compatibility import Version, evaluate_chain
from compat.features import FeatureSet, load_features, save_features
from compat.retrieval import RetrievalEvaluator, load_qrels
from tests.paths import EXAMPLES

IDS, CAMS, D = 40, 4, 12


@pytest.fixture(scope="module")
def reid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of a small re-identification set: 40 identities seen by 4 cameras; queries are other
    images (ids q*) than the gallery's (ids g*); v2 is a less noisy view of the same identities."""
    root = tmp_path_factory.mktemp("reid")
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((IDS, D))
    g_labels, q_labels = np.repeat(np.arange(IDS), 6), np.arange(IDS).repeat(2)
    g_cams, q_cams = rng.integers(0, CAMS, len(g_labels)), rng.integers(0, CAMS, len(q_labels))
    g_ids = np.array([f"g{i:04d}" for i in range(len(g_labels))])
    q_ids = np.array([f"q{i:04d}" for i in range(len(q_labels))])
    paths = {}
    for version, noise in (("v1", 1.4), ("v2", 0.9)):
        for part, labels, ids, cams in (("gallery", g_labels, g_ids, g_cams), ("query", q_labels, q_ids, q_cams)):
            x = centres[labels] + noise * rng.standard_normal((len(labels), D))
            fs = FeatureSet.from_arrays(x, labels, ids, meta={"version": version}, groups=cams)
            paths[f"{version}-{part}"] = save_features(fs, root / f"{version}-{part}.npz")
            plain = FeatureSet.from_arrays(x, labels, ids, meta={"version": version})
            paths[f"{version}-{part}-nogroups"] = save_features(plain, root / f"{version}-{part}-nogroups.npz")
    lines = ["query_id,gallery_id,relevance"]
    for q in range(len(q_ids)):  # the same-identity items are positives, one of them junk
        same = np.flatnonzero(g_labels == q_labels[q])
        lines += [f"{q_ids[q]},{g_ids[g]},{'junk' if k == 0 else 'positive'}" for k, g in enumerate(same)]
    (root / "qrels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths["qrels"] = root / "qrels.csv"
    return paths


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


def chain_args(reid: dict[str, Path], suffix: str = "") -> list[str]:
    return ["--protocol", "query-gallery",
            "--version", f"v1={reid['v1-gallery' + suffix]}", "--query", f"v1={reid['v1-query' + suffix]}",
            "--version", f"v2={reid['v2-gallery' + suffix]}", "--query", f"v2={reid['v2-query' + suffix]}"]


def library_report(reid: dict[str, Path], **options):
    chain = [Version(v, load_features(reid[f"{v}-gallery"]), load_features(reid[f"{v}-query"])) for v in ("v1", "v2")]
    return evaluate_chain(chain, RetrievalEvaluator(("cmc@1", "cmc@5", "map"), protocol="query-gallery",
                                                    device="cpu", **options))


@pytest.mark.parametrize("options", [[], ["--exclude", "same-group"], ["--qrels", "QRELS"],
                                     ["--qrels", "QRELS", "--exclude", "same-group"]])
def test_query_gallery_runs_equal_the_library(reid, tmp_path: Path, options):
    options = [str(reid["qrels"]) if o == "QRELS" else o for o in options]
    out = tmp_path / "out"
    result = invoke(*chain_args(reid), *options, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["compat.json", "compat.md", "compat.png", "flips.csv"]
    doc = json.loads((out / "compat.json").read_text(encoding="utf-8"))
    kwargs = {}
    if "--exclude" in options:
        kwargs["exclude"] = "same-group"
    if "--qrels" in options:
        kwargs["qrels"] = load_qrels(reid["qrels"])
    expected = library_report(reid, **kwargs).to_json()
    assert doc["protocol"] == "query-gallery"
    assert doc["metrics"] == expected["metrics"] and doc["flips"] == expected["flips"]
    assert doc["queries"][1][0] == {"n": 2 * IDS, "without_positive": expected["queries"][1][0]["without_positive"]}
    with open(out / "flips.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(round(f["negative"] * f["n"]) for f in doc["flips"].values())
    assert all(r["query_id"].startswith("q") and r["before"].startswith("g") for r in rows)
    assert "## Flips" in result.stdout and "## Classes that lost most" in result.stdout


def test_same_group_exclusion_changes_the_numbers(reid, tmp_path: Path):
    plain = library_report(reid).matrices["map"][1][0]
    reid_map = library_report(reid, exclude="same-group").matrices["map"][1][0]
    assert plain != reid_map


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _bad_groups(tmp_path: Path, reid) -> tuple[list[str], list[str]]:
    arrays = dict(np.load(reid["v1-query"], allow_pickle=False))
    arrays["groups"] = arrays["groups"].astype(np.float32)
    p = tmp_path / "bad-groups.npz"
    np.savez(p, **arrays)
    args = chain_args(reid)
    args[args.index(f"v1={reid['v1-query']}")] = f"v1={p}"
    return args, [str(p), "field 'groups'", "int64"]


BAD = {
    "qrels-unknown-query-id": lambda t, r: (
        ["--qrels", _write(t, "q.csv", "query_id,gallery_id,relevance\nq0000,g0000,positive\nq9999,g0001,junk\n")],
        ["q.csv:3:", "query id 'q9999' is in no query feature set"]),
    "qrels-unknown-gallery-id": lambda t, r: (
        ["--qrels", _write(t, "q.csv", "query_id,gallery_id,relevance\nq0000,x,positive\n")],
        ["q.csv:2:", "gallery id 'x' is in no gallery feature set"]),
    "qrels-duplicate-row": lambda t, r: (
        ["--qrels", _write(t, "q.csv", "query_id,gallery_id,relevance\nq0000,g0000,positive\nq0000,g0000,junk\n")],
        ["q.csv:3:", "duplicate row", "first on line 2"]),
    "qrels-unknown-relevance": lambda t, r: (
        ["--qrels", _write(t, "q.csv", "query_id,gallery_id,relevance\nq0000,g0000,relevant\n")],
        ["q.csv:2:", "unknown relevance 'relevant'"]),
    "qrels-bad-header": lambda t, r: (["--qrels", _write(t, "q.csv", "q,g,r\n")], ["q.csv:1:", "header"]),
    "qrels-missing": lambda t, r: (["--qrels", t / "none.csv"], ["none.csv", "no such relevance file"]),
}


@pytest.mark.parametrize("case", list(BAD) + ["same-group-without-groups", "no-query-set", "qrels-with-loo",
                                              "exclude-with-template", "groups-not-int", "independent-query-alone"])
def test_bad_inputs_exit_2_with_one_line_and_no_output(reid, tmp_path: Path, case: str):
    args = chain_args(reid)
    if case in BAD:
        extra, expect = BAD[case](tmp_path, reid)
        args += extra
    elif case == "same-group-without-groups":
        args = chain_args(reid, "-nogroups") + ["--exclude", "same-group"]
        expect = [str(reid["v1-query-nogroups"]), "field 'groups' is missing", "same-group"]
    elif case == "no-query-set":
        args = ["--protocol", "query-gallery", "--version", f"v1={reid['v1-gallery']}"]
        expect = ["version v1", "--query v1=FEATURES", str(reid["v1-gallery"])]
    elif case == "qrels-with-loo":
        args = ["--version", f"v1={reid['v1-gallery']}", "--qrels", str(reid["qrels"])]
        expect = ["--qrels", "query-gallery protocol"]
    elif case == "exclude-with-template":
        args = ["--version", f"v1={reid['v1-gallery']}", "--protocol", "template", "--exclude", "same-group"]
        expect = ["--exclude", "query-gallery protocol"]
    elif case == "groups-not-int":
        args, expect = _bad_groups(tmp_path, reid)
    else:
        args += ["--independent-query", str(reid["v2-query"])]
        expect = ["--independent-query", "needs --independent"]
    out = tmp_path / "out"
    result = invoke(*args, "--out", out)
    assert result.exit_code == 2, (result.output, result.exception)
    assert not out.exists() or not any(out.iterdir())
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compat: error: "), result.stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])
    assert result.stdout == ""


def test_shipped_examples_regenerate_and_give_the_readme_numbers(tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_retrieval_examples", EXAMPLES / "make_retrieval_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for shipped in sorted((EXAMPLES / "reid").glob("*.npz")) + sorted((EXAMPLES / "landmarks").glob("*.npz")):
        a, b = load_features(shipped), load_features(tmp_path / shipped.parent.name / shipped.name)
        assert np.array_equal(a.features, b.features) and np.array_equal(a.ids, b.ids), shipped
    assert (tmp_path / "landmarks" / "qrels.csv").read_text() == (EXAMPLES / "landmarks" / "qrels.csv").read_text()
    out = tmp_path / "reid-report"
    result = invoke("--protocol", "query-gallery", "--exclude", "same-group",
                    *[x for v in ("v1", "v2") for x in ("--version", f"{v}={EXAMPLES}/reid/{v}-gallery.npz",
                                                        "--query", f"{v}={EXAMPLES}/reid/{v}-query.npz")],
                    "--metric", "cmc@1", "--metric", "map", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    doc = json.loads((out / "compat.json").read_text(encoding="utf-8"))
    assert doc["metrics"]["cmc@1"] == [[0.415, None], [0.75, 0.945]]
    assert doc["flips"]["v2_on_v1"] == {"negative": 0.03, "positive": 0.365, "n": 200, "against": "v1_on_v1"}
    result = invoke("--protocol", "query-gallery", "--qrels", EXAMPLES / "landmarks" / "qrels.csv",
                    *[x for v in ("v1", "v2") for x in ("--version", f"{v}={EXAMPLES}/landmarks/{v}-gallery.npz",
                                                        "--query", f"{v}={EXAMPLES}/landmarks/{v}-query.npz")],
                    "--metric", "cmc@1", "--metric", "map", "--out", tmp_path / "landmarks-report")
    assert result.exit_code == 0, (result.output, result.exception)
    doc = json.loads((tmp_path / "landmarks-report" / "compat.json").read_text(encoding="utf-8"))
    assert [round(100 * v, 2) for v in (doc["metrics"]["map"][0][0], doc["metrics"]["map"][1][0])] == [50.55, 54.25]
