"""What a backfill plan aims at: a budget (a share or a count of the gallery) or a target metric,
and where the predicted curve flattens (docs/metrics.md, "Planning a backfill")."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from compat.errors import CompatError
from compat.retrieval.metrics import parse_metric

__all__ = [
    "DEFAULT_FLAT_TOLERANCE",
    "Budget",
    "Comparison",
    "Target",
    "flattening_index",
    "parse_budget",
    "parse_target",
    "target_index",
]

# Remaining gain (a fraction of the metric, 0.005 = 0.5 percentage points) below which the
# predicted curve counts as flat.
DEFAULT_FLAT_TOLERANCE = 0.005

_TARGET = re.compile(r"^\s*(?P<metric>[^<>=\s]+)\s*(?P<op>>=|>)\s*(?P<value>[0-9]*\.?[0-9]+)\s*(?P<pct>%?)\s*$")


class Comparison(str, Enum):
    AT_LEAST = ">="
    ABOVE = ">"


@dataclass(frozen=True)
class Target:
    """``metric >= threshold`` (or ``>``): the predicted value the backfill must reach."""

    metric: str
    comparison: Comparison
    threshold: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.comparison.value}{self.threshold:g}"

    def reached(self, value: float) -> bool:
        return value >= self.threshold if self.comparison is Comparison.AT_LEAST else value > self.threshold


def parse_target(text: str) -> Target:
    """``"cmc@1>=0.95"``, ``"map > 0.9"`` or ``"cmc@1>=95%"``.

    Raises:
        CompatError: not ``METRIC>=VALUE`` / ``METRIC>VALUE``, an unknown metric, a value outside [0, 1].
    """
    match = _TARGET.match(str(text))
    if match is None:
        raise CompatError(f"--target {text!r}: expected METRIC>=VALUE or METRIC>VALUE, e.g. cmc@1>=0.95")
    metric = parse_metric(match.group("metric")).name
    value = float(match.group("value")) / (100.0 if match.group("pct") else 1.0)
    if not 0.0 <= value <= 1.0:
        raise CompatError(f"--target {text!r}: the value must be a fraction in [0, 1] (or a percentage up to 100%)")
    return Target(metric, Comparison(match.group("op")), value)


@dataclass(frozen=True)
class Budget:
    """How much of the gallery may be re-extracted: a ``fraction`` in [0, 1] or a ``count`` of items."""

    fraction: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.count is None):
            raise CompatError("budget: give a fraction or a count, not both")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise CompatError(f"--budget {100 * self.fraction:g}%: expected a share of the gallery between 0% and 100%")
        if self.count is not None and self.count < 0:
            raise CompatError(f"--budget {self.count}: expected a number of items >= 0")

    @property
    def text(self) -> str:
        return f"{100 * self.fraction:g}%" if self.fraction is not None else str(self.count)

    def items(self, gallery_size: int, *, where: str = "gallery") -> int:
        """The number of items to re-extract in a gallery of ``gallery_size``."""
        if self.count is None:
            return round(self.fraction * gallery_size)
        if self.count > gallery_size:
            raise CompatError(f"--budget {self.count}: more items than the {gallery_size} of {where}")
        return self.count


def parse_budget(text: str) -> Budget:
    """``"20%"`` (a share of the gallery) or ``"2000"`` (items).

    Raises:
        CompatError: neither form, or a share above 100%.
    """
    value = str(text).strip()
    try:
        number = float(value[:-1]) / 100.0 if value.endswith("%") else int(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise CompatError(f"--budget {text!r}: expected a share such as 20% or a number of items such as 2000")
    return Budget(fraction=number) if value.endswith("%") else Budget(count=int(number))


def target_index(values: Sequence[float], target: Target) -> int | None:
    """The first grid point whose value reaches ``target`` (None: none does)."""
    return next((k for k, v in enumerate(values) if target.reached(v)), None)


def flattening_index(values: Sequence[float], tolerance: float = DEFAULT_FLAT_TOLERANCE) -> int:
    """The first grid point after which the curve gains at most ``tolerance``.

    With ``M_k`` the value at grid point k, the remaining gain is ``max_{j >= k} M_j - M_k``; the
    curve flattens at the smallest k whose remaining gain is ``<= tolerance`` (the last point
    always qualifies).
    """
    if tolerance < 0:
        raise CompatError(f"--flat-tolerance: expected a gain >= 0, got {tolerance}")
    best_after = -math.inf
    remaining = [0.0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        best_after = max(best_after, values[k])
        remaining[k] = best_after - values[k]
    return next(k for k, gain in enumerate(remaining) if gain <= tolerance)
