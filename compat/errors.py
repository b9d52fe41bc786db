"""The one error type for bad input, usage or data, and the exit codes of the ``compat`` command.

The library raises :class:`CompatError` for anything a user can fix (a wrong file, field, shape or
option); the CLI turns it into a one-line message on stderr and exit code 2. Anything else is a bug:
exit code 3, one line, the traceback in a log file (docs/reliability.md).
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_GATE_FAILED",
    "EXIT_INTERNAL_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CompatError",
]

EXIT_OK = 0
EXIT_GATE_FAILED = 1  # the gate refused the candidate (compat demo: a verdict was not the expected one)
EXIT_BAD_INPUT = 2  # bad input, usage, or a file that cannot be read or written
EXIT_INTERNAL_ERROR = 3  # a bug: an unexpected exception
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report 128 + 2


class CompatError(ValueError):
    """Bad input: the message names the file or field and what was expected."""
