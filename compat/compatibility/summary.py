"""Summary metrics over a compatibility matrix (docs/metrics.md, "The compatibility matrix and its summaries").

``M[i][j]`` is the metric of version i's queries against version j's gallery, defined for j <= i
(versions oldest first). Cells above the diagonal are ``None``, and so is an undefined cell (no
query had a positive in the gallery): it is left out of every summary, and a summary with nothing
left to average is ``None`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MetricSummary", "ecc_matrix", "summarize", "update_gain"]

Matrix = Sequence[Sequence[float | None]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class MetricSummary:
    """AC, AM, BC, FC, the ECC matrix and the update gain of one metric's matrix.

    Values that a chain of one version cannot define (AC, BC, FC, update gain) are ``None``, and so
    are those whose every term involves an undefined cell.
    """

    ac: float | None
    am: float | None
    bc: float | None
    fc: float | None
    ecc: list[list[bool | None]]
    update_gain: float | None

    def to_json(self) -> dict:
        return {
            "ac": self.ac,
            "am": self.am,
            "bc": self.bc,
            "fc": self.fc,
            "ecc": self.ecc,
            "update_gain": self.update_gain,
        }


def ecc_matrix(m: Matrix, *, strict: bool = True) -> list[list[bool | None]]:
    """``ecc[i][j]`` (j < i): does version i against gallery j beat version j against itself?

    Ties fail when ``strict`` (the default, as in BCT's criterion); ``None`` when either cell is undefined.
    """
    t = len(m)
    out: list[list[bool | None]] = [[None] * t for _ in range(t)]
    for i in range(t):
        for j in range(i):
            if m[i][j] is not None and m[j][j] is not None:
                out[i][j] = bool(m[i][j] > m[j][j]) if strict else bool(m[i][j] >= m[j][j])
    return out


def update_gain(cross: float | None, old_self: float | None, reference_self: float | None) -> float | None:
    """``(M(t,k) - M(k,k)) / (M(t*,t*) - M(k,k))``; ``None`` when the denominator is 0 or a cell is undefined."""
    if cross is None or old_self is None or reference_self is None:
        return None
    denom = reference_self - old_self
    if denom == 0:
        return None
    return (cross - old_self) / denom


def summarize(m: Matrix, *, strict: bool = True, reference_self: float | None = None) -> MetricSummary:
    """Summaries of a T x T lower-triangular matrix.

    Args:
        m: ``m[i][j]`` for j <= i (``None`` where undefined); entries above the diagonal are ignored.
        strict: ties fail the compatibility criterion.
        reference_self: ``M(t*, t*)`` of an independently trained newest model, the update gain's
            upper bound; when ``None`` the newest version's own ``M(t, t)`` is used.

    Returns:
        The summary, over the defined cells only. The update gain is the newest version's (t = T-1)
        over the one before it (k = T-2): the upgrade the chain has just made.
    """
    t = len(m)
    am = _mean([m[i][j] for i in range(t) for j in range(i + 1) if m[i][j] is not None])
    ecc = ecc_matrix(m, strict=strict)
    if t < 2:
        return MetricSummary(ac=None, am=am, bc=None, fc=None, ecc=ecc, update_gain=None)
    pairs = [ecc[i][j] for i in range(t) for j in range(i) if ecc[i][j] is not None]
    ac = _mean([float(p) for p in pairs])
    last = t - 1
    bc = _mean([m[last][j] - m[j][j] for j in range(last) if m[last][j] is not None and m[j][j] is not None])
    fc = _mean([m[i][i - 1] - m[i][i] for i in range(1, t) if m[i][i - 1] is not None and m[i][i] is not None])
    ref = m[last][last] if reference_self is None else reference_self
    gain = update_gain(m[last][last - 1], m[last - 1][last - 1], ref)
    return MetricSummary(ac=ac, am=am, bc=bc, fc=fc, ecc=ecc, update_gain=gain)
