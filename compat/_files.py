"""Paths given by a user, checked before anything is read or written.

Inputs must be regular files (or directories where a directory is expected): a FIFO, a device or a
socket would block a reader or never end, so they are refused. Outputs are checked before any work,
so that a run never computes for minutes and then finds that ``--out`` is a file or lies under one.
Every failure is a one-line :class:`CompatError` naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from compat.errors import CompatError

__all__ = ["check_output_dir", "check_output_file", "input_dir", "input_file", "is_input_dir"]


def _stat(path: Path, what: str) -> os.stat_result | None:
    """``os.stat(path)``; ``None`` when nothing is there; a :class:`CompatError` when it cannot be looked at."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise CompatError(f"{path}: no such {what} (a part of the path is a file, not a directory)") from None
    except OSError as exc:
        reason = "permission denied" if exc.errno == errno.EACCES else (exc.strerror or str(exc))
        raise CompatError(f"{path}: cannot read the {what} ({reason})") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def input_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as an existing regular file (symbolic links followed).

    Raises:
        CompatError: missing, a directory, a FIFO / device / socket, or unreadable.
    """
    p = Path(path)
    st = _stat(p, what)
    if st is None:
        raise CompatError(f"{p}: no such {what}")
    if stat.S_ISDIR(st.st_mode):
        raise CompatError(f"{p}: is a directory, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise CompatError(f"{p}: {_kind(st.st_mode)}, expected a {what} (a regular file)")
    if not os.access(p, os.R_OK):
        raise CompatError(f"{p}: cannot read the {what} (permission denied)")
    return p


def is_input_dir(path: str | os.PathLike[str], what: str) -> bool:
    """Whether ``path`` is an existing directory; ``False`` when nothing is there.

    Raises:
        CompatError: the path cannot be looked at (a directory on the way is unreadable).
    """
    st = _stat(Path(path), what)
    return st is not None and stat.S_ISDIR(st.st_mode)


def input_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as an existing, readable directory."""
    p = Path(path)
    st = _stat(p, what)
    if st is None:
        raise CompatError(f"{p}: no such {what}")
    if not stat.S_ISDIR(st.st_mode):
        raise CompatError(f"{p}: not a directory, expected a {what}")
    if not os.access(p, os.R_OK | os.X_OK):
        raise CompatError(f"{p}: cannot read the {what} (permission denied)")
    return p


def _existing_ancestor(p: Path, option: str) -> Path:
    """The nearest path at or above ``p`` that exists; it must be a writable directory (or ``p`` itself)."""
    here = p
    while True:
        try:
            st = os.stat(here)
            break
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise CompatError(f"{option} {p}: cannot look at {here} ({exc.strerror or exc})") from None
        if here.parent == here:
            raise CompatError(f"{option} {p}: no existing directory above it")
        here = here.parent
    if here != p and not stat.S_ISDIR(st.st_mode):
        raise CompatError(f"{option} {p}: {here} is a file, so nothing can be created under it")
    return here


def _writable(d: Path, option: str, p: Path) -> None:
    if not os.access(d, os.W_OK | os.X_OK):
        raise CompatError(f"{option} {p}: cannot write into {d} (permission denied)")


def check_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` can be used as an output directory: it is one, or can be created, and is writable.

    Nothing is created: a run that fails later leaves no empty directory behind.

    Raises:
        CompatError: ``path`` is a file, lies under a file, or cannot be written.
    """
    p = Path(path)
    here = _existing_ancestor(p, option)
    if here == p and not stat.S_ISDIR(os.stat(p).st_mode):
        raise CompatError(f"{option} {p}: is a file, expected a directory")
    _writable(here, option, p)
    return p


def check_output_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` can be written as a file (or, for feature sets without ``.npz``, as a directory):
    its parent is a directory or can be created, and it is not a directory where a file is expected.

    Raises:
        CompatError: the path lies under a file, is a directory where a file is expected, or
            cannot be written.
    """
    p = Path(path)
    here = _existing_ancestor(p, option)
    if here == p:
        st = os.stat(p)
        if p.suffix and stat.S_ISDIR(st.st_mode):
            raise CompatError(f"{option} {p}: is a directory, expected a file")
        if not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(st.st_mode):
            raise CompatError(f"{option} {p}: {_kind(st.st_mode)}, expected a regular file")
        here = p.parent
    _writable(here, option, p)
    return p
