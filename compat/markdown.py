"""Markdown pieces every report uses: numbers as percentages, escaped cells, tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["FAIL_MARK", "PASS_MARK", "UNDEFINED", "escape", "mark", "num", "pct", "pp", "table"]

PASS_MARK = "✓"
FAIL_MARK = "✗"
UNDEFINED = "–"


def pct(value: float | None) -> str:
    """A fraction in percent with two decimals; ``n/a`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}"


def pp(value: float | None) -> str:
    """A difference of fractions as signed percentage points."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:+.2f} pp"


def num(value: float | None) -> str:
    """A plain number with two decimals (ratios, AC, update gain); ``n/a`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}"


def mark(passed: bool | None) -> str:
    """✓ / ✗ for a criterion, nothing when it does not apply."""
    return "" if passed is None else (PASS_MARK if passed else FAIL_MARK)


def escape(text: object) -> str:
    """Escape what would break a table cell."""
    return str(text).replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
