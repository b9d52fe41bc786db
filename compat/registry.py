"""The one registry shape: methods, backbones and datasets are built by name from explicit tables.

An unknown name is a :class:`CompatError` in one format, with the choices and the closest match::

    method: unknown name 'bcd' (did you mean 'bct'?); expected one of bct, bt2, cl2r, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compat.errors import CompatError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries (builders, dataset descriptions), filled explicitly by the module that owns it.

    Args:
        kind: what the entries are, for messages (``method``, ``backbone``, ``dataset``).
        entries: the built-in entries.
    """

    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = dict(entries or {})

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name is registered once."""
        if name in self._entries:
            raise CompatError(f"{self.kind}: {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry of ``name``, or a :class:`CompatError` listing the choices."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CompatError(f"{self.kind}: unknown name {name!r}{hint}; expected one of {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
