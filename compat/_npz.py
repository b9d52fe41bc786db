"""Reading one array of a ``.npz`` archive without trusting its header.

An ``.npy`` header states a shape and a dtype; numpy allocates that much memory before it reads a
byte of data. A 1 KB file can claim a terabyte. Here the header is read first, the size it claims is
compared with the bytes the archive really holds for that member and with the machine's memory, and
only then is the array read.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from compat.errors import CompatError

__all__ = ["physical_memory", "read_npz_member"]


def physical_memory() -> int | None:
    """Bytes of physical memory, or ``None`` where the system does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def _header(z: Any, key: str) -> tuple[tuple[int, ...], np.dtype, int, int] | None:
    """(shape, dtype, header length, bytes stored) of member ``key``; ``None`` when it cannot be told."""
    archive = getattr(z, "zip", None)
    if not isinstance(archive, zipfile.ZipFile):
        return None
    names = [n for n in (f"{key}.npy", key) if n in archive.namelist()]
    if not names:
        return None
    info = archive.getinfo(names[0])
    with archive.open(info) as fh:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(fh)
        else:
            return None  # numpy itself decides whether it can read another version
        return tuple(int(s) for s in shape), dtype, fh.tell(), int(info.file_size)


def read_npz_member(z: Any, key: str, p: Path) -> np.ndarray:
    """Array ``key`` of the open ``.npz`` archive ``z`` (read from ``p``), refusing pickled objects and
    headers that claim more data than the archive holds or than fits in memory.

    Shared by every ``.npz`` reader of the package (feature files, adapter files).
    """
    try:
        head = _header(z, key)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CompatError(f"{p}: array '{key}' has no readable .npy header ({exc})") from None
    if head is not None and not head[1].hasobject:
        shape, dtype, header_len, stored = head
        claimed = math.prod(shape) * dtype.itemsize
        if claimed != stored - header_len:
            raise CompatError(f"{p}: array '{key}': its header claims shape {shape} of {dtype} ({claimed} bytes), "
                              f"but the archive holds {stored - header_len} bytes of data")
        memory = physical_memory()
        if memory is not None and claimed > memory:
            raise CompatError(f"{p}: array '{key}' needs {_gib(claimed)}, more than this machine's {_gib(memory)} "
                              "of memory (a feature directory of .npy files is memory-mapped instead)")
    try:
        return z[key]
    except ValueError as exc:  # numpy refuses object arrays when allow_pickle=False
        if "pickle" in str(exc).lower():
            raise CompatError(f"{p}: array '{key}' holds pickled Python objects; refusing to load it") from None
        raise CompatError(f"{p}: array '{key}' cannot be read ({exc})") from None
    except MemoryError:
        raise CompatError(f"{p}: array '{key}' does not fit in memory") from None
