"""JSON reports that every parser reads: an undefined number is ``null``, never ``NaN`` or ``Infinity``.

``json.dumps`` writes ``NaN`` for a float NaN by default, which is not JSON (strict parsers, ``jq``
and most CI tools refuse the file). Every report compat writes goes through :func:`report_json`.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["finite_or_none", "report_json"]


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
