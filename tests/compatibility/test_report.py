"""compat.compatibility.report: compat.json schema, markdown marks, heatmap, all-or-nothing writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import compat.compatibility.report as report_mod
from compat.compatibility.matrix import CellCount, CompatibilityReport
from compat.compatibility.report import plot_heatmaps, render_markdown, write_reports
from compat.compatibility.summary import summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ("compat.json", "compat.md", "compat.png")

# cmc@1: v2 on v1 passes, v3 on v1 fails, v3 on v2 passes.
CMC1 = [[0.50, None, None], [0.55, 0.70, None], [0.45, 0.72, 0.80]]
# map: v2 on v1 ties (fails under the strict criterion); equal last two diagonals -> update gain null.
MAP = [[0.30, None, None], [0.30, 0.40, None], [0.35, 0.45, 0.40]]


def make_report(
    matrices: dict[str, list[list[float | None]]],
    versions: tuple[str, ...],
    counts: list[list[CellCount | None]] | None = None,
) -> CompatibilityReport:
    t = len(versions)
    if counts is None:
        counts = [[CellCount(100, 0) if j <= i else None for j in range(t)] for i in range(t)]
    return CompatibilityReport(
        versions=versions,
        protocol="loo",
        metrics=tuple(matrices),
        matrices=matrices,
        summary={m: summarize(v) for m, v in matrices.items()},
        queries=counts,
    )


def chain3() -> CompatibilityReport:
    counts = [[CellCount(100, 0) if j <= i else None for j in range(3)] for i in range(3)]
    counts[2][0] = CellCount(100, 3)
    return make_report({"cmc@1": CMC1, "map": MAP}, ("v1", "v2", "v3"), counts)


def chain1() -> CompatibilityReport:
    return make_report({"cmc@1": [[0.9]], "map": [[0.6]]}, ("v1",))


def assert_same(actual, expected, where: str = "$") -> None:
    """Equal structure (types, keys, nulls, booleans) with floats compared approximately."""
    if isinstance(expected, float):
        assert isinstance(actual, float) and actual == pytest.approx(expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), where
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert type(actual) is type(expected) and actual == expected, where


def test_compat_json_matches_design_schema_for_three_versions(tmp_path: Path) -> None:
    write_reports(chain3(), tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "compat.json").read_text())
    expected = {
        "versions": ["v1", "v2", "v3"],
        "protocol": "loo",
        "metrics": {"cmc@1": CMC1, "map": MAP},
        "summary": {
            "cmc@1": {
                "ac": 2 / 3,
                "am": 0.62,
                "bc": -0.015,
                "fc": -0.115,
                "ecc": [[None, None, None], [True, None, None], [False, True, None]],
                "update_gain": 0.2,
            },
            "map": {
                "ac": 2 / 3,
                "am": 2.2 / 6,
                "bc": 0.05,
                "fc": -0.025,
                "ecc": [[None, None, None], [False, None, None], [True, True, None]],
                "update_gain": None,
            },
        },
        "queries": [
            [{"n": 100, "without_positive": 0}, None, None],
            [{"n": 100, "without_positive": 0}, {"n": 100, "without_positive": 0}, None],
            [{"n": 100, "without_positive": 3}, {"n": 100, "without_positive": 0}, {"n": 100, "without_positive": 0}],
        ],
        "ranks": 1,
        "query_sample": None,
        "flips": None,  # a report built by hand carries no per-query results
        "classes": None,
        "warnings": [],
    }
    assert_same(doc, expected)


def test_compat_json_for_a_single_version_has_nulls(tmp_path: Path) -> None:
    write_reports(chain1(), tmp_path)
    doc = json.loads((tmp_path / "compat.json").read_text())
    expected = {
        "versions": ["v1"],
        "protocol": "loo",
        "metrics": {"cmc@1": [[0.9]], "map": [[0.6]]},
        "summary": {
            "cmc@1": {"ac": None, "am": 0.9, "bc": None, "fc": None, "ecc": [[None]], "update_gain": None},
            "map": {"ac": None, "am": 0.6, "bc": None, "fc": None, "ecc": [[None]], "update_gain": None},
        },
        "queries": [[{"n": 100, "without_positive": 0}]],
        "ranks": 1,
        "query_sample": None,
        "flips": None,
        "classes": None,
        "warnings": [],
    }
    assert_same(doc, expected)


def test_extra_json_keys_are_merged_at_top_level(tmp_path: Path) -> None:
    write_reports(chain1(), tmp_path, extra_json={"dim_policy": "truncate"})
    doc = json.loads((tmp_path / "compat.json").read_text())
    assert doc["dim_policy"] == "truncate"
    assert list(doc) == ["versions", "protocol", "metrics", "summary", "queries", "ranks", "query_sample", "flips",
                         "classes", "warnings", "dim_policy"]


def test_markdown_shows_percent_and_compatibility_marks() -> None:
    md = render_markdown(chain3())
    assert "v1, v2, v3" in md and "protocol: loo" in md
    assert "## cmc@1" in md and "## map" in md
    assert "| **v1** | 50.00 | – | – |" in md
    assert "| **v2** | 55.00 ✓ | 70.00 | – |" in md
    assert "| **v3** | 45.00 ✗ | 72.00 ✓ | 80.00 |" in md
    assert "| **v2** | 30.00 ✗ | 40.00 | – |" in md  # a tie fails
    assert "AC 0.67 (2/3 pairs) · AM 62.00% · BC -1.50 pp · FC -11.50 pp · update gain 0.20" in md
    assert "AM 36.67% · BC +5.00 pp · FC -2.50 pp · update gain n/a" in md
    assert "## Queries" in md and "| **v3** | 100 / 3 | 100 / 0 | 100 / 0 |" in md


def test_markdown_single_version_has_no_marks() -> None:
    md = render_markdown(chain1())
    assert "| **v1** | 90.00 |" in md
    assert "✓" not in md.split("## cmc@1")[1] and "✗" not in md.split("## cmc@1")[1]
    assert "AC n/a · AM 90.00% · BC n/a · FC n/a · update gain n/a" in md


def test_markdown_escapes_pipes_in_version_names() -> None:
    report = make_report({"map": [[0.5, None], [0.6, 0.7]]}, ("a|b", "c"))
    assert "| **a\\|b** | 50.00 | – |" in render_markdown(report)


@pytest.mark.parametrize("make", [chain1, chain3])
def test_write_reports_writes_three_files_and_no_temp(tmp_path: Path, make) -> None:
    out = tmp_path / "nested" / "out"
    paths = write_reports(make(), out)
    assert paths == [out / n for n in NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == ["out"]
    assert (out / "compat.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "compat.md").read_text(encoding="utf-8") == render_markdown(make())


def test_heatmap_is_deterministic(tmp_path: Path) -> None:
    plot_heatmaps(chain3(), tmp_path / "a.png")
    plot_heatmaps(chain3(), tmp_path / "b.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in data and b"tIME" not in data


def test_failed_plot_leaves_no_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(report, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report_mod, "plot_heatmaps", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_reports(chain3(), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_move_rolls_back_moved_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import compat._atomic as atomic_mod

    real_replace = atomic_mod.os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_mod.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        write_reports(chain1(), tmp_path)
    assert list(tmp_path.iterdir()) == []
