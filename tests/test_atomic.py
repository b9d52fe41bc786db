"""Report writes replace every file or none, and what a killed writer leaves is cleaned by the next write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compat import _atomic
from compat._atomic import atomic_path, write_all_or_nothing
from tests.paths import REPO


def _writers(text: str) -> dict:
    return {name: (lambda p, n=name: p.write_text(f"{text} {n}", encoding="utf-8")) for name in ("a.json", "b.md", "c.png")}


def _contents(d: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(d.iterdir())}


def test_a_rename_failing_half_way_puts_every_previous_file_back(tmp_path, monkeypatch) -> None:
    write_all_or_nothing(tmp_path, _writers("old"))
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 4:  # a.json moved aside and replaced, b.md moved aside; the new b.md fails
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        write_all_or_nothing(tmp_path, _writers("new"))
    monkeypatch.setattr(_atomic.os, "replace", real)
    assert _contents(tmp_path) == {"a.json": "old a.json", "b.md": "old b.md", "c.png": "old c.png"}


def test_a_writer_failing_leaves_the_previous_files_and_no_temporary(tmp_path) -> None:
    write_all_or_nothing(tmp_path, _writers("old"))

    def broken(p: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_all_or_nothing(tmp_path, {**_writers("new"), "c.png": broken})
    assert _contents(tmp_path) == {"a.json": "old a.json", "b.md": "old b.md", "c.png": "old c.png"}


def test_new_files_are_removed_when_a_later_one_fails(tmp_path, monkeypatch) -> None:
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "c.png":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", replace)
    with pytest.raises(OSError):
        write_all_or_nothing(tmp_path, _writers("new"))
    assert _contents(tmp_path) == {}


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path) -> None:
    """A writer killed (SIGKILL) while it writes leaves its temporary folder; the next write removes it."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from compat._atomic import atomic_path, write_all_or_nothing
        out = Path({str(tmp_path)!r})
        def hang(p):
            p.write_text("half", encoding="utf-8")
            print("writing", flush=True)
            time.sleep(60)
        with atomic_path(out / "model.pt") as tmp:
            Path(tmp).write_text("half", encoding="utf-8")
            write_all_or_nothing(out, {{"gate.json": hang}})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith(".compat-tmp-") for n in left) and any(n.startswith(".model.pt.") for n in left), left

    write_all_or_nothing(tmp_path, {"gate.json": lambda p: p.write_text("{}", encoding="utf-8")})
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_text("whole", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.json", "model.pt"]


def test_temporaries_of_a_live_writer_are_left_alone(tmp_path) -> None:
    mine = tmp_path / f".compat-tmp-{os.getpid()}-abc"
    mine.mkdir()
    write_all_or_nothing(tmp_path, {"x.json": lambda p: p.write_text("{}", encoding="utf-8")})
    assert mine.is_dir()
