"""Gate policies: which checks decide whether a candidate model may replace the production model.

A policy is a YAML file (read with ``yaml.safe_load``) validated into a frozen :class:`GatePolicy`;
unknown keys and wrong types are errors that name the file and the key (values are never coerced:
``required: "yes"`` or ``threshold: "0.1"`` are errors), and at least one check must be required. The default policy ships
with the package (``compat/gate/default.yaml``, the same file as ``configs/gate/default.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compat.configfile import read_yaml_mapping, validate_model
from compat.retrieval.index import IndexSpec
from compat.retrieval.metrics import parse_metric

__all__ = ["DEFAULT_POLICY", "Bound", "CheckKind", "CheckSpec", "GatePolicy", "Rule", "load_policy"]

DEFAULT_POLICY = Path(__file__).with_name("default.yaml")


class Bound(str, Enum):
    """Which end of a confidence interval a rule reads."""

    LOW = "ci_low"
    HIGH = "ci_high"


@dataclass(frozen=True)
class Rule:
    """How a check's confidence interval decides it: ``bound op threshold`` (ties never pass ``>``)."""

    bound: Bound
    op: str  # ">", ">=" or "<="

    def passes(self, low: float, high: float, threshold: float) -> bool:
        x = low if self.bound is Bound.LOW else high
        return bool({">": x > threshold, ">=": x >= threshold, "<=": x <= threshold}[self.op])

    def __str__(self) -> str:
        return f"{self.bound.value} {self.op} threshold"


class CheckKind(str, Enum):
    """What a check measures (``M(q, g)``: queries of model q against the gallery of model g).

    ``compatibility``: ``M(new, old) - M(old, old)``, the empirical compatibility criterion.
    ``improvement``: ``M(new, new) - M(old, old)``, what the upgrade brings once backfilled.
    ``update_gain``: ``(M(new, old) - M(old, old)) / (M(ind, ind) - M(old, old))``, the share of an
    independently trained model's improvement that the candidate reaches without backfilling.
    ``max_drop``: ``max_g M(old, g) - M(new, g)`` over every gallery older than the candidate (the
    production gallery and any older ones of the chain): the worst loss a search suffers when the
    candidate's queries replace the production model's.
    ``negative_flips``: the fraction of queries that ``M(old, old)`` answers right at top-1 and
    ``M(new, old)`` wrong: the users a release makes worse off, however good the average.
    """

    COMPATIBILITY = "compatibility"
    IMPROVEMENT = "improvement"
    UPDATE_GAIN = "update_gain"
    MAX_DROP = "max_drop"
    NEGATIVE_FLIPS = "negative_flips"

    @property
    def bounds_a_loss(self) -> bool:
        """The value is a loss that must stay small: passes on the interval's high end, threshold >= 0."""
        return self in (CheckKind.MAX_DROP, CheckKind.NEGATIVE_FLIPS)

    @property
    def rule(self) -> Rule:
        """How the confidence interval decides the check."""
        if self.bounds_a_loss:
            return Rule(Bound.HIGH, "<=")
        if self is CheckKind.UPDATE_GAIN:
            return Rule(Bound.LOW, ">=")
        return Rule(Bound.LOW, ">")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CheckSpec(_Strict):
    """One check of a policy.

    Args:
        kind: what is measured (:class:`CheckKind`).
        metric: ``cmc@K``, ``map`` or ``map@r``; values are fractions in [0, 1].
        threshold: a difference of fractions (``compatibility``, ``improvement``), a gain ratio
            (``update_gain``), the largest drop allowed (``max_drop``, >= 0) or the largest fraction of
            queries allowed to flip from right to wrong (``negative_flips``, >= 0; metric ``cmc@1``).
        required: a failing required check fails the gate; others are reported only.
        name: unique within the policy; default ``"<kind> <metric>"``.
        index: evaluate the check's cells through each gallery's approximate index built with this
            faiss factory string (``{factory: IVF1024,PQ16, nprobe: 16}``); its metric must then be
            one a returned list defines (``cmc@K`` or ``map@K``).
    """

    kind: CheckKind = Field(strict=False)  # read from its YAML text
    metric: str = "cmc@1"
    threshold: float
    required: bool = True
    name: str | None = None
    index: IndexSpec | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        metric = parse_metric(value)  # a CompatError is a ValueError: pydantic reports it with the key
        if metric.kind.value == "acc":
            raise ValueError(f"{value!r} is a pair-verification metric; the gate needs cmc@K, map or map@r")
        return metric.name

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> CheckSpec:
        if self.kind is CheckKind.MAX_DROP and self.threshold < 0:
            raise ValueError(f"max_drop: threshold is the largest drop allowed, expected >= 0, got {self.threshold}")
        if self.kind is CheckKind.NEGATIVE_FLIPS and not 0 <= self.threshold <= 1:
            raise ValueError("negative_flips: threshold is the largest fraction of queries allowed to flip, expected "
                             f"a value in [0, 1], got {self.threshold}")
        if self.kind is CheckKind.NEGATIVE_FLIPS and self.metric != "cmc@1":
            raise ValueError(f"negative_flips: flips are defined at top-1; metric must be cmc@1, got {self.metric!r}")
        if self.name is not None and not self.name.strip():
            raise ValueError("name: expected a non-empty name")
        if self.index is not None:
            if self.index.factory is None:
                raise ValueError("index: expected a factory string (index: {factory: IVF1024,PQ16, nprobe: 16})")
            if not parse_metric(self.metric).from_top_k:
                raise ValueError(f"index: metric {self.metric} needs the full ranking, which an index does not "
                                 "return; use cmc@K or map@K (e.g. map@10)")
            if self.kind is CheckKind.NEGATIVE_FLIPS:
                raise ValueError("index: negative_flips compares exact top-1 results; it does not take an index")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.kind.value} {self.metric}"


class GatePolicy(_Strict):
    """A validated gate policy.

    Args:
        confidence: level of the bootstrap intervals (default 0.95).
        checks: at least one; their names must be unique.
    """

    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    checks: list[CheckSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> GatePolicy:
        if not any(c.required for c in self.checks):
            raise ValueError("at least one check must be required (a policy of optional checks passes every candidate)")
        seen: set[str] = set()
        for check in self.checks:
            if check.label in seen:
                raise ValueError(f"check name {check.label!r} is used twice")
            seen.add(check.label)
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics the checks need, in order of first use."""
        return tuple(dict.fromkeys(c.metric for c in self.checks))


def load_policy(path: str | Path | None = None) -> GatePolicy:
    """Read and validate a policy file (``None``: the default policy).

    Raises:
        CompatError: the file is missing or not YAML, or a key is unknown or has a wrong value (the
            message names the file and the key).
    """
    p = DEFAULT_POLICY if path is None else Path(path)
    return validate_model(GatePolicy, read_yaml_mapping(p, "gate policy"), p)
