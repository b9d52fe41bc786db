"""Atomic file writes: write under a temporary name in the target's directory, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "umask", "write_all_or_nothing"]


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success give it the usual permissions and rename
    it onto ``path``, on failure remove it. Readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all_or_nothing(out_dir: Path, writers: Mapping[str, Callable[[Path], object]]) -> list[Path]:
    """Write several files into ``out_dir`` so that either all of them are replaced or none is.

    Each writer gets a temporary path (in a temporary directory inside ``out_dir``: same
    filesystem, writable whenever ``out_dir`` is) and writes its file there; the files are then
    renamed into place. On any failure the files already moved are removed and the error raised.

    Returns:
        The final paths, in the order of ``writers``.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".compat-tmp-", dir=out_dir))
    moved: list[Path] = []
    try:
        for name, write in writers.items():
            write(tmp / name)
        for name in writers:
            os.replace(tmp / name, out_dir / name)
            moved.append(out_dir / name)
    except BaseException:
        for p in moved:
            p.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return moved
