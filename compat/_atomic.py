"""Atomic file writes: write under a temporary name in the target's directory, then rename.

Temporary names carry the writer's process id (``.compat-tmp-<pid>-...``, ``.<name>.<pid>.*.tmp``),
so that what a killed writer left behind is recognised and removed by the next write into the same
directory, while the temporary files of a writer still running are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "clean_stale_temporaries", "umask", "write_all_or_nothing"]

TMP_DIR_PREFIX = ".compat-tmp-"
_TMP_DIR = re.compile(r"^\.compat-tmp-(\d+)-")


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temporaries(directory: Path, file_name: str | None = None) -> None:
    """Remove the temporary folders (and, with ``file_name``, the temporary copies of that file) that a
    writer killed before it could clean up left in ``directory``. Those of live processes stay."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    tmp_file = re.compile(rf"^\.{re.escape(file_name)}\.(\d+)\..*\.tmp$") if file_name else None
    for entry in entries:
        match = _TMP_DIR.match(entry.name)
        if match is None and tmp_file is not None:
            match = tmp_file.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success give it the usual permissions and rename
    it onto ``path``, on failure remove it. Readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
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

    Each writer gets a path in a temporary directory inside ``out_dir`` (same filesystem, writable
    whenever ``out_dir`` is) and writes its file there. Then each existing file is moved aside into
    that directory and the new one renamed into place. On any failure (an exception, Ctrl-C) the
    new files are removed and the old ones put back, so ``out_dir`` holds the previous set, whole.
    A writer killed outright leaves its temporary directory, which the next write removes.

    Returns:
        The final paths, in the order of ``writers``.
    """
    out_dir = Path(out_dir)
    clean_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_DIR_PREFIX}{os.getpid()}-", dir=out_dir))
    backup = tmp / "previous"
    done: list[tuple[Path, Path | None]] = []  # (target, its previous version moved aside, if any)
    try:
        for name, write in writers.items():
            write(tmp / name)
        backup.mkdir()
        for name in writers:
            target = out_dir / name
            old = backup / name if os.path.lexists(target) else None
            if old is not None:
                os.replace(target, old)
            done.append((target, old))
            os.replace(tmp / name, target)
    except BaseException:
        for target, old in reversed(done):
            if old is None:
                target.unlink(missing_ok=True)
            elif os.path.lexists(old):
                os.replace(old, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [target for target, _ in done]
