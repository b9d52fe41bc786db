"""Exit codes CI can read: 3 for a bug (one line, the traceback in a log), 130 for Ctrl-C; 1 stays the gate's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import click
import numpy as np
import pytest
from click.testing import CliRunner

from compat import cli as cli_module
from compat.cli import cli
from compat.cli.failures import LOG_NAME
from compat.errors import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED
from compat.features import FeatureSet, save_features
from tests.paths import REPO


@pytest.fixture
def chain(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    paths = []
    for name in ("v1", "v2"):
        path = save_features(FeatureSet.from_arrays(rng.normal(size=(40, 6)) + labels[:, None], labels),
                             tmp_path / f"{name}.npz")
        paths += ["--version", f"{name}={path}"]
    return paths


def _boom(*args, **kwargs):
    raise RuntimeError("an internal invariant broke\nsecond line")


def test_a_bug_exits_3_with_one_line_and_the_traceback_in_a_log_under_out(chain, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("compat.compatibility.matrix.evaluate_chain", _boom)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["eval", *chain, "--out", str(out)])
    assert result.exit_code == EXIT_INTERNAL_ERROR, result.output
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("compat: internal error: RuntimeError: an internal invariant broke")
    assert str(out / LOG_NAME) in line and "Traceback" not in result.output
    log = (out / LOG_NAME).read_text(encoding="utf-8")
    assert log.startswith("Traceback") and "second line" in log and "_boom" in log
    assert sorted(p.name for p in out.iterdir()) == [LOG_NAME]  # no report


def test_debug_prints_the_traceback_instead(chain, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("compat.compatibility.matrix.evaluate_chain", _boom)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["--debug", "eval", *chain, "--out", str(out)])
    assert result.exit_code == EXIT_INTERNAL_ERROR
    assert "Traceback" in result.stderr and "_boom" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("compat: internal error: RuntimeError")
    assert not out.exists()


def test_ctrl_c_inside_a_command_exits_130(chain, tmp_path, monkeypatch) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("compat.compatibility.matrix.evaluate_chain", interrupt)
    result = CliRunner().invoke(cli, ["eval", *chain, "--out", str(tmp_path / "r")])
    assert result.exit_code == EXIT_INTERRUPTED and result.stderr.strip() == "compat: interrupted"


def test_a_file_that_cannot_be_written_is_exit_2_not_a_bug(chain, tmp_path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "r" / "compat.png"))

    monkeypatch.setattr("compat.compatibility.matrix.evaluate_chain", full)
    result = CliRunner().invoke(cli, ["eval", *chain, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "compat.png: No space left on device" in result.stderr


@pytest.mark.parametrize(("raised", "code", "line"), [
    (click.Abort(), EXIT_INTERRUPTED, "compat: interrupted"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "compat: interrupted"),
    (ValueError("outside any command"), EXIT_INTERNAL_ERROR, "compat: internal error: ValueError: outside any command"),
])
def test_the_entry_point_maps_what_escapes_a_command(monkeypatch, capsys, tmp_path, raised, code, line) -> None:
    monkeypatch.setattr(cli_module.cli, "main", lambda **kwargs: (_ for _ in ()).throw(raised))
    monkeypatch.setattr(sys, "argv", ["compat", "eval"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the log of a bug outside a command goes
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    assert info.value.code == code
    assert capsys.readouterr().err.strip().startswith(line)


def test_sigint_exits_130(chain) -> None:
    """A real SIGINT while a command runs: one line, exit 130 (Python's own default would be a traceback)."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import compat.cli.evaluate as command
        # Python keeps SIGINT ignored when its parent ignored it (a background job, nohup): a terminal does not.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        def wait(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        command._load_chain = wait
        sys.argv = ["compat", "eval", *{chain!r}, "--out", "unused"]
        from compat.cli import main
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          cwd=REPO, check=False)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert done.stderr.strip() == "compat: interrupted"
