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
from typing import TypeVar

__all__ = ["interactive", "progress"]

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
