"""The one explicit list of training methods, and how to build one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compat.errors import CompatError
from compat.methods.base import Method
from compat.methods.bct import BCT, L2Regression
from compat.methods.bt2 import BT2
from compat.methods.cl2r import CL2R
from compat.methods.cores import CoReS
from compat.methods.hoc import HOC
from compat.methods.independent import Independent
from compat.registry import Registry

__all__ = ["METHODS", "build_method", "list_methods", "register_method"]

METHODS: Registry[Callable[..., Method]] = Registry("method", {
    "independent": Independent,
    "cores": CoReS,
    "hoc": HOC,
    "cl2r": CL2R,
    "bct": BCT,
    "l2": L2Regression,
    "bt2": BT2,
})


def register_method(name: str, builder: Callable[..., Method]) -> None:
    """Add a method of your own (a :class:`Method` subclass or a factory) under ``name``."""
    METHODS.add(name, builder)


def list_methods() -> list[str]:
    return METHODS.names()


def build_method(name: str, **options: Any) -> Method:
    """Build a method by name with keyword options; unknown names and options are errors."""
    builder = METHODS.get(name)
    try:
        return builder(**options)
    except TypeError as exc:
        raise CompatError(f"method {name!r}: {exc}") from None
