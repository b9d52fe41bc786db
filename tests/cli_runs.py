"""Running a tiny recipe through ``compat train`` in a test."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from compat.cli import cli


def train_recipe_text(tmp_path: Path, text: str) -> tuple[Result, Path]:
    """Write ``text`` as a recipe under ``tmp_path``, train it on the CPU into ``tmp_path / "run"``.

    Returns:
        The click result and the output directory.
    """
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(out), "--device", "cpu", "--quiet"])
    return result, out
