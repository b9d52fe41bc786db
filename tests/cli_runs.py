"""Running a tiny recipe through ``compat train`` in a test."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from compat.cli import cli

# A two-version CoReS chain on the shipped MNIST subset: one epoch, seconds on a CPU.
TINY = """
name: tiny
seed: 3
data: {dataset: mnist-mini, protocol: growth, fractions: [0.05, 0.1]}
model: {backbone: smallcnn}
method: {name: cores}
train: {epochs: 1, batch_size: 32, lr: 0.05}
eval: {metrics: [cmc@1, map]}
"""


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
