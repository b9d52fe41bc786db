"""Relevance files ("qrels"): for each query, the gallery items that are positives and those that are junk.

A qrels file is a CSV with the header ``query_id,gallery_id,relevance``; ``relevance`` is
``positive`` or ``junk``. Under the query-gallery protocol it replaces label relevance: listed
positives are a query's positives, listed junk is removed from its ranking (as in the revisited
Oxford and Paris Medium and Hard protocols), every other gallery item is a negative.

Ids are read as text and compared with the feature sets' ids of the same kind: as integers when the
feature sets' ids are integers, as strings otherwise. The file is validated when it is read (header,
three fields per row, relevance values, no repeated ``(query_id, gallery_id)`` pair) and against the
feature sets before anything is evaluated (:func:`check_qrels_ids`); every message names the file
and the line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from compat.errors import CompatError

__all__ = ["QRELS_HEADER", "Qrels", "Relevance", "check_qrels_ids", "load_qrels"]

QRELS_HEADER = ("query_id", "gallery_id", "relevance")


class Relevance(str, Enum):
    POSITIVE = "positive"
    JUNK = "junk"


@dataclass(frozen=True, eq=False)
class Qrels:
    """The rows of a relevance file.

    Attributes:
        query_ids, gallery_ids: (R,) ids as text.
        positive: (R,) bool; ``False`` rows are junk.
        lines: (R,) the 1-based line of each row in the file (the header is line 1).
        source: the file, for messages.
    """

    query_ids: np.ndarray
    gallery_ids: np.ndarray
    positive: np.ndarray
    lines: np.ndarray
    source: str = "<memory>"
    _converted: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __len__(self) -> int:
        return len(self.positive)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[object, object, str]], *, source: str = "<memory>") -> Qrels:
        """From ``(query_id, gallery_id, relevance)`` tuples, validated as a file's rows would be."""
        q, g, rel = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
        return _build([str(x) for x in q], [str(x) for x in g], list(rel), list(range(2, len(q) + 2)), source)

    def ids_as(self, column: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """A column's ids converted to the kind of a feature set's ids (``"i"``: int64, ``"U"``: text).

        Returns:
            The converted ids and a mask of the rows whose id can be of that kind (an id that is not
            an integer can match no integer id).
        """
        if (column, kind) not in self._converted:  # converted once per column and kind, then reused
            self._converted[(column, kind)] = _convert(self.query_ids if column == "query" else self.gallery_ids,
                                                       kind)
        return self._converted[(column, kind)]


def _convert(text: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "U":
        return text, np.ones(len(text), dtype=bool)
    body = np.char.lstrip(text, "-")
    length = np.char.str_len(text)
    valid = np.char.isdigit(body) & (np.char.str_len(body) >= length - 1) & (length <= 18)
    out = np.full(len(text), -1, dtype=np.int64)
    out[valid] = text[valid].astype(np.int64)
    return out, valid


def load_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Read and validate a relevance file.

    Raises:
        CompatError: the file is missing or unreadable, its header is not ``query_id,gallery_id,relevance``,
            a row has not three fields or an empty id, a relevance value is not ``positive`` / ``junk``,
            or a ``(query_id, gallery_id)`` pair is listed twice; the message names the line.
    """
    p = Path(path)
    if not p.is_file():
        raise CompatError(f"{p}: no such relevance file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatError(f"{p}: not a readable UTF-8 CSV file ({exc})") from None
    return _build(*_columns(text, p), str(p))


def _columns(text: str, p: Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """The three columns of the rows after the header, and the line of each row."""
    body = text.replace("\r\n", "\n").rstrip("\n")
    raw = np.frombuffer(body.encode("utf-8"), dtype=np.uint8)  # UTF-8 never hides ',' or '\n' in a character
    if '"' not in body and len(raw):
        commas = np.searchsorted(np.flatnonzero(raw == ord(",")), np.append(np.flatnonzero(raw == ord("\n")), len(raw)))
        if (np.diff(commas, prepend=0) == 2).all():  # two commas on every line, no blank line, no quote: one split
            flat = body.replace("\n", ",").split(",")
            _check_header(flat[:3], p)
            return flat[3::3], flat[4::3], flat[5::3], np.arange(2, len(commas) + 1)
    lines = text.splitlines(keepends=True)
    rows = list(csv.reader(lines))
    _check_header(rows[0] if rows else None, p)
    if len(rows) == len(lines):  # one row per line: line numbers are positions
        body_rows, numbers = rows[1:], np.arange(2, len(rows) + 1)
    else:  # a quoted field spans lines: number each row by the line it starts on
        reader = csv.reader(lines[1:])
        body_rows, starts, previous = [], [], 0
        for row in reader:
            body_rows.append(row)
            starts.append(previous + 2)
            previous = reader.line_num
        numbers = np.asarray(starts, dtype=np.int64)
    sizes = np.fromiter(map(len, body_rows), dtype=np.int64, count=len(body_rows))
    bad = np.flatnonzero((sizes != 3) & (sizes != 0))  # blank lines are skipped
    if len(bad):
        raise CompatError(f"{p}:{numbers[bad[0]]}: expected 3 fields (query_id,gallery_id,relevance), "
                          f"got {sizes[bad[0]]}")
    keep = np.flatnonzero(sizes == 3)
    rows_kept = [body_rows[i] for i in keep] if len(keep) < len(body_rows) else body_rows
    q, g, rel = (list(c) for c in zip(*rows_kept, strict=True)) if rows_kept else ([], [], [])
    return q, g, rel, numbers[keep]


def _check_header(header: list[str] | None, p: Path) -> None:
    if header is None or tuple(h.strip() for h in header) != QRELS_HEADER:
        raise CompatError(f"{p}:1: expected the header {','.join(QRELS_HEADER)}, got {','.join(header or [])!r}")


def _build(q: list[str], g: list[str], rel: list[str], lines, source: str) -> Qrels:
    if not q:
        raise CompatError(f"{source}: no rows after the header; expected {','.join(QRELS_HEADER)} rows")
    line = np.asarray(lines, dtype=np.int64)
    query_ids, gallery_ids, values = (_stripped(column) for column in (q, g, rel))
    for name, ids in (("query_id", query_ids), ("gallery_id", gallery_ids)):
        empty = np.flatnonzero(np.char.str_len(ids) == 0)
        if len(empty):
            raise CompatError(f"{source}:{line[empty[0]]}: empty {name}")
    positive = values == Relevance.POSITIVE.value
    bad = np.flatnonzero(~positive & (values != Relevance.JUNK.value))
    if len(bad):
        raise CompatError(f"{source}:{line[bad[0]]}: unknown relevance {str(values[bad[0]])!r}; "
                          "expected positive or junk")
    pairs = np.sort(_text_keys(query_ids) * np.uint64(0xD6E8FEB86659FD93) + _text_keys(gallery_ids))  # wraps
    if (pairs[1:] == pairs[:-1]).any():  # a repeated pair, or two pairs sharing a key: the text decides
        _raise_duplicate(query_ids, gallery_ids, line, source)
    return Qrels(query_ids, gallery_ids, positive, line, source)


def _stripped(column: list[str]) -> np.ndarray:
    """Text array of a column, surrounding white space removed."""
    return np.char.strip(np.asarray(column, dtype=str))


def _raise_duplicate(query_ids: np.ndarray, gallery_ids: np.ndarray, line: np.ndarray, source: str) -> None:
    """Name the first line that repeats an earlier (query_id, gallery_id) pair (none: keys collided)."""
    order = np.lexsort((gallery_ids, query_ids))
    same = (query_ids[order][1:] == query_ids[order][:-1]) & (gallery_ids[order][1:] == gallery_ids[order][:-1])
    repeats = order[1:][same]  # the stable sort keeps a pair's earlier line first
    if len(repeats) == 0:
        return
    r = repeats[np.argmin(line[repeats])]
    first = line[np.flatnonzero((query_ids == query_ids[r]) & (gallery_ids == gallery_ids[r]))[0]]
    raise CompatError(f"{source}:{line[r]}: duplicate row for query {str(query_ids[r])!r} and gallery "
                      f"{str(gallery_ids[r])!r} (first on line {first})")


def check_qrels_ids(qrels: Qrels, query_ids: Sequence[np.ndarray], gallery_ids: Sequence[np.ndarray]) -> None:
    """Every query id of the file is in one of the query sets, every gallery id in one of the galleries.

    Raises:
        CompatError: naming the line of the first row with an unknown id.
    """
    for column, sets, what in (("query", query_ids, "query"), ("gallery", gallery_ids, "gallery")):
        found = np.zeros(len(qrels), dtype=bool)
        for ids in sets:
            found |= resolve_ids(qrels, column, ids) >= 0
        if not found.all():
            r = int(np.flatnonzero(~found)[np.argmin(qrels.lines[~found])])
            value = (qrels.query_ids if column == "query" else qrels.gallery_ids)[r]
            raise CompatError(f"{qrels.source}:{qrels.lines[r]}: {what} id {str(value)!r} is in no {what} "
                              "feature set")


def resolve_ids(qrels: Qrels, column: str, ids: np.ndarray) -> np.ndarray:
    """Index into ``ids`` of each row's id in ``column`` (``"query"`` or ``"gallery"``), -1 when absent.

    Text ids are searched by a 64-bit key of each string (sorting numbers is many times faster than
    sorting text); a match is confirmed on the text itself, and if two of ``ids`` share a key the
    text is sorted instead.
    """
    kind = "U" if ids.dtype.kind == "U" else "i"
    wanted, valid = qrels.ids_as(column, kind)
    keys, wanted_keys = (_text_keys(ids), _text_keys(wanted)) if kind == "U" else (ids, wanted)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if kind == "U" and (sorted_keys[1:] == sorted_keys[:-1]).any():  # two ids share a key: sort the text
        order = np.argsort(ids, kind="stable")
        sorted_keys, wanted_keys = ids[order], wanted
    needles = np.argsort(wanted_keys, kind="stable")  # sorted needles: each search starts where the last ended
    pos = np.empty(len(wanted), dtype=np.int64)
    pos[needles] = np.searchsorted(sorted_keys, wanted_keys[needles])
    idx = order[np.minimum(pos, len(ids) - 1)]
    found = valid & (ids[idx] == wanted)
    return np.where(found, idx, -1).astype(np.int64)


def _text_keys(text: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
    """A 64-bit key per string (equal strings, equal keys): its code points weighted by a splitmix64
    value of their position, summed modulo 2**64; in blocks of rows."""
    width = max(1, text.dtype.itemsize // 4)
    z = np.arange(1, width + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    weights = z ^ (z >> np.uint64(31))
    codes = np.ascontiguousarray(text).view(np.uint32).reshape(len(text), -1)
    out = np.empty(len(text), dtype=np.uint64)
    for s in range(0, len(text), rows):
        block = codes[s : s + rows].astype(np.uint64)
        out[s : s + rows] = (block * weights[: block.shape[1]]).sum(1)  # wraps modulo 2**64
    return out
