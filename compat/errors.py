"""The one error type for bad input, usage or data.

The library raises :class:`CompatError` for anything a user can fix (a wrong file, field, shape or
option); the CLI turns it into a one-line message on stderr and exit code 2. Anything else is a bug.
"""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE_FAILED", "EXIT_OK", "CompatError"]

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2


class CompatError(ValueError):
    """Bad input: the message names the file or field and what was expected."""
