"""Choices given as text (config values, options) parsed into their ``Enum``, with one error format."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from compat.errors import CompatError

__all__ = ["parse_choice"]

E = TypeVar("E", bound=Enum)


def parse_choice(enum_cls: type[E], value: object, field: str) -> E:
    """``enum_cls(value)``, or a :class:`CompatError` naming ``field``, the value and the choices.

    Example:
        >>> parse_choice(Similarity, "cosine", "similarity")    # doctest: +SKIP
        <Similarity.COSINE: 'cosine'>
    """
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum_cls)
        raise CompatError(f"{field}: unknown value {value!r}; expected one of {choices}") from None
