"""Relevance files: reading, validation with the line named, ids matched as integers or strings."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from compat.errors import CompatError
from compat.retrieval.qrels import Qrels, check_qrels_ids, load_qrels, resolve_ids


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "qrels.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_rows_lines_and_relevance(tmp_path: Path):
    p = _write(tmp_path, "query_id,gallery_id,relevance\nq1, g1 ,positive\n\nq1,g2,junk\n\"q,2\",g1,positive\n")
    qrels = load_qrels(p)
    assert qrels.query_ids.tolist() == ["q1", "q1", "q,2"]
    assert qrels.gallery_ids.tolist() == ["g1", "g2", "g1"]  # fields are stripped
    assert qrels.positive.tolist() == [True, False, True]
    assert qrels.lines.tolist() == [2, 4, 5]  # the blank line 3 is skipped and counted


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("query,gallery,relevance\nq,g,positive\n", ":1: expected the header query_id,gallery_id,relevance"),
        ("", ":1: expected the header"),
        ("query_id,gallery_id,relevance\n", "no rows after the header"),
        ("query_id,gallery_id,relevance\nq1,g1,positive\nq1,g2\n", ":3: expected 3 fields"),
        ("query_id,gallery_id,relevance\nq1,g1,positive\nq1,g2,relevant\n", ":3: unknown relevance 'relevant'"),
        ("query_id,gallery_id,relevance\nq1,g1,positive\nq1,,junk\n", ":3: empty gallery_id"),
        ("query_id,gallery_id,relevance\nq1,g1,positive\nq2,g1,junk\nq1,g1,junk\n",
         ":4: duplicate row for query 'q1' and gallery 'g1' (first on line 2)"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, text: str, expect: str):
    p = _write(tmp_path, text)
    with pytest.raises(CompatError) as info:
        load_qrels(p)
    assert str(info.value).startswith(str(p))
    assert expect in str(info.value)


def test_a_quoted_field_over_two_lines_keeps_the_line_numbers(tmp_path: Path):
    p = _write(tmp_path, 'query_id,gallery_id,relevance\n"q\n1",g1,positive\n\nq2,g2,relevant\n')
    with pytest.raises(CompatError, match=r":5: unknown relevance 'relevant'"):
        load_qrels(p)
    qrels = load_qrels(_write(tmp_path, 'query_id,gallery_id,relevance\n"q\n1",g1,positive\nq2,g2,junk\n'))
    assert qrels.query_ids.tolist() == ["q\n1", "q2"] and qrels.lines.tolist() == [2, 4]


def test_missing_and_undecodable_files(tmp_path: Path):
    with pytest.raises(CompatError, match="no such relevance file"):
        load_qrels(tmp_path / "nope.csv")
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00query")
    with pytest.raises(CompatError, match="not a readable UTF-8 CSV file"):
        load_qrels(p)


def test_ids_match_integer_and_string_feature_ids(tmp_path: Path):
    qrels = load_qrels(_write(tmp_path, "query_id,gallery_id,relevance\n7,-3,positive\n8,abc,junk\n007,12,junk\n"))
    assert resolve_ids(qrels, "query", np.array([8, 7, 9])).tolist() == [1, 0, 1]  # 007 is the integer 7
    assert resolve_ids(qrels, "gallery", np.array([12, -3])).tolist() == [1, -1, 0]  # "abc" is no integer
    assert resolve_ids(qrels, "gallery", np.array(["abc", "12"])).tolist() == [-1, 0, 1]


def test_every_id_must_be_in_some_feature_set(tmp_path: Path):
    p = _write(tmp_path, "query_id,gallery_id,relevance\n1,10,positive\n2,11,junk\n3,10,positive\n")
    qrels = load_qrels(p)
    check_qrels_ids(qrels, [np.array([1, 2]), np.array([3])], [np.array([10, 11])])  # ids spread over sets
    with pytest.raises(CompatError, match=rf"^{p}:4: query id '3' is in no query feature set$"):
        check_qrels_ids(qrels, [np.array([1, 2])], [np.array([10, 11])])
    with pytest.raises(CompatError, match=rf"^{p}:3: gallery id '11' is in no gallery feature set$"):
        check_qrels_ids(qrels, [np.array([1, 2, 3])], [np.array([10])])


def test_text_ids_found_by_key_and_by_text_when_keys_collide(monkeypatch):
    qrels = Qrels.from_rows([("a", "xy", "positive"), ("b", "yx", "junk"), ("c", "zz", "junk"), ("d", "x", "junk")])
    ids = np.array(["yx", "x", "xy", "w"])
    assert resolve_ids(qrels, "gallery", ids).tolist() == [2, 0, -1, 1]
    qrels_module = importlib.import_module("compat.retrieval.qrels")
    monkeypatch.setattr(qrels_module, "_text_keys", lambda text: np.zeros(len(text), dtype=np.uint64))  # all collide
    assert resolve_ids(qrels, "gallery", ids).tolist() == [2, 0, -1, 1]


def test_duplicates_are_decided_on_the_text_when_keys_collide(tmp_path: Path, monkeypatch):
    qrels_module = importlib.import_module("compat.retrieval.qrels")
    monkeypatch.setattr(qrels_module, "_text_keys", lambda text: np.zeros(len(text), dtype=np.uint64))
    assert len(load_qrels(_write(tmp_path, "query_id,gallery_id,relevance\na,b,junk\nb,a,junk\n"))) == 2
    with pytest.raises(CompatError, match=r":4: duplicate row for query 'b' and gallery 'a' \(first on line 3\)"):
        load_qrels(_write(tmp_path, "query_id,gallery_id,relevance\na,b,junk\nb,a,junk\nb,a,positive\n"))
