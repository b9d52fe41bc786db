"""Taking a registry change back: each step that changes the registry records how to undo itself.

:func:`compat.gate.registry.promote` registers a version, tags it and moves two aliases. If any step
fails, or the caller cannot finish its own work afterwards (writing the gate's reports), the steps
already made are undone newest first, so that a run that exits non-zero leaves the registry as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Journal"]

logger = logging.getLogger(__name__)


class Journal:
    """Undo steps of one registry change, in the order the change was made."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        """Record that ``what`` was done and how ``undo`` takes it back."""
        self._steps.append((what, undo))

    def undo(self) -> list[str]:
        """Undo every step, newest first; a step that cannot be undone is logged and skipped.

        Returns:
            The steps that could not be undone (empty when the registry is back as it was).
        """
        failed = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # noqa: BLE001  (keep undoing the other steps)
                logger.warning("registry: could not undo %s (%s)", what, exc)
                failed.append(what)
        return failed
