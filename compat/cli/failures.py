"""How a command fails: one line on stderr and an exit code CI can read (docs/reliability.md).

- bad input, usage, or a file that cannot be read or written: ``compat: error: ...``, exit 2 (under
  torchrun every rank exits 2 and rank 0 prints the line of a bad input);
- Ctrl-C (SIGINT): ``compat: interrupted``, exit 130;
- anything else is a bug: ``compat: internal error: ...``, exit 3, with the traceback in
  ``compat-error.log`` under ``--out`` (or printed on stderr with ``compat --debug``).

Exit 1 is left to its one meaning: the gate refused the candidate.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from compat.errors import EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, CompatError

__all__ = ["DEBUG_KEY", "LOG_NAME", "fail", "report_bug", "run_cleanly"]

LOG_NAME = "compat-error.log"
DEBUG_KEY = "compat.debug"  # in the click context's meta: set by ``compat --debug``
_PASS_THROUGH = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int, *, main_rank_only: bool = False) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``; with ``main_rank_only``, under
    torchrun only rank 0 prints (bad input, which every rank finds alike)."""
    if not main_rank_only or os.environ.get("RANK", "0") == "0":
        click.echo(_one_line(message), err=True)
    sys.exit(code)


def describe_os_error(exc: OSError) -> str:
    """``PATH: reason`` for a file that cannot be read or written."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(DEBUG_KEY))


def _log_dir(out: Any) -> Path:
    """Where the traceback goes: ``--out`` (its folder, for a file output), else the temporary directory."""
    if out is None:
        return Path(tempfile.gettempdir())
    out = Path(out)
    return out.parent if out.suffix else out


def _write_log(text: str, out: Any) -> Path | None:
    for folder in (_log_dir(out), Path(tempfile.gettempdir())):
        path = folder / (LOG_NAME if folder != Path(tempfile.gettempdir()) else f"compat-error-{os.getpid()}.log")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def report_bug(exc: BaseException, *, out: Any = None, debug: bool | None = None) -> NoReturn:
    """Exit 3 for an unexpected exception: one line, the traceback in a log file (or on stderr)."""
    text = "".join(traceback.format_exception(exc))
    first = (str(exc).strip().splitlines() or [""])[0]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if _debug() if debug is None else debug:
        click.echo(text, err=True, nl=False)
        fail(f"compat: internal error: {what} (a bug in compat; the traceback is above)", EXIT_INTERNAL_ERROR)
    log = _write_log(text, out)
    where = f"the traceback is in {log}" if log is not None else "no log could be written"
    fail(f"compat: internal error: {what} (a bug in compat; {where}; 'compat --debug' prints it)",
         EXIT_INTERNAL_ERROR)


def run_cleanly(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a command's function; turn what it raises into a one-line message and an exit code."""
    try:
        return fn(*args, **kwargs)
    except CompatError as exc:
        fail(f"compat: error: {exc}", EXIT_BAD_INPUT, main_rank_only=True)
    except _PASS_THROUGH:
        raise
    except OSError as exc:
        fail(f"compat: error: {describe_os_error(exc)}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        fail("compat: interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001  (a bug: reported, not hidden)
        report_bug(exc, out=kwargs.get("out"))
