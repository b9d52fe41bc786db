"""JSON reports that every parser reads: an undefined number is ``null``, never ``NaN`` or ``Infinity``.

``json.dumps`` writes ``NaN`` for a float NaN by default, which is not JSON (strict parsers, ``jq``
and most CI tools refuse the file). Every report compat writes goes through :func:`report_json`;
JSON files compat reads as one object go through :func:`read_json_object`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compat.errors import CompatError

__all__ = ["finite_or_none", "read_json_object", "report_json"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf), at any depth, replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def report_json(document: Any) -> str:
    """The text of a JSON report: indented, undefined numbers as ``null``, a final newline."""
    return json.dumps(finite_or_none(document), indent=2, allow_nan=False) + "\n"


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names it in the one-line error (``field 'meta'``, ``a compat.json``).

    Raises:
        CompatError: a file that cannot be read or parsed, or JSON that is not an object.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompatError(f"{path}: {what} is not a readable JSON file ({exc})") from None
    if not isinstance(document, dict):
        raise CompatError(f"{path}: {what} must be a JSON object, got {type(document).__name__}")
    return document
