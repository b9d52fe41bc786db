"""Progress bars for the long loops: on a terminal only, quiet in CI logs and when switched off.

Extraction, the evaluator's chunk loop, the gate's bootstrap, adapter training and backfill curves
wrap their loops in :func:`progress`. A bar is drawn (tqdm, on stderr) only when the caller enables
it, stderr is a terminal and the ``CI`` environment variable is not set; otherwise the iterable is
returned as it is, so the loop costs nothing more.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["Counter", "counter", "interactive", "progress"]

T = TypeVar("T")


def interactive() -> bool:
    """stderr is a terminal and this is not a CI run."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterable[T]:
    """``items``, wrapped in a transient tqdm bar when enabled and interactive."""
    if not enabled or not interactive():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


class Counter:
    """A bar advanced by hand (``update``), or nothing when disabled or not interactive."""

    def __init__(self, bar: Any = None):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set(self, done: int) -> None:
        """Move the bar to ``done`` (never backwards)."""
        if self._bar is not None and done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def counter(*, desc: str, total: int, enabled: bool = True, position: int = 0) -> Counter:
    """A :class:`Counter` on its own line (``position``): one per process when several share a terminal."""
    if not enabled or not interactive():
        return Counter()
    from tqdm import tqdm

    return Counter(tqdm(desc=desc, total=total, position=position, leave=False, dynamic_ncols=True))
