"""``--set`` overrides of a recipe: nested keys, list items by index, and bad keys named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compat.cli import cli
from compat.errors import CompatError
from compat.train import apply_overrides, load_recipe
from tests.paths import RECIPES

ARCH = RECIPES / "mnist-bct-arch.yaml"


def test_set_addresses_a_list_item_by_index() -> None:
    recipe = load_recipe(ARCH, ["versions.1.feature_dim=96", "versions.0.backbone=smallcnn"])
    assert recipe.versions[1].feature_dim == 96
    assert recipe.versions[1].backbone == "smallcnn"
    assert recipe.versions[0].backbone == "smallcnn" and recipe.versions[0].feature_dim == 64
    assert len(recipe.versions) == 2


def test_set_replaces_a_whole_list_and_a_list_leaf() -> None:
    raw = {"data": {"fractions": [0.1, 1.0]}, "versions": [{}, {"feature_dim": 8}]}
    out = apply_overrides(raw, ["data.fractions.0=0.2", "versions=[{}, {}, {}]"])
    assert out["data"]["fractions"] == [0.2, 1.0]
    assert out["versions"] == [{}, {}, {}]
    assert raw == {"data": {"fractions": [0.1, 1.0]}, "versions": [{}, {"feature_dim": 8}]}  # not mutated


@pytest.mark.parametrize(("override", "fragment"), [
    ("versions.2.feature_dim=96", "versions.2"),
    ("versions.-1.feature_dim=96", "versions.-1"),
    ("versions.x.feature_dim=96", "versions.x"),
    ("data.fractions.5=0.3", "data.fractions.5"),
])
def test_a_bad_index_names_the_key(override: str, fragment: str) -> None:
    with pytest.raises(CompatError, match=fragment.replace(".", r"\.")):
        load_recipe(ARCH, [override])


def test_an_index_into_a_list_the_recipe_does_not_have_says_how_to_give_it() -> None:
    with pytest.raises(CompatError, match=r"--set versions\.1: versions is not a list here .*--set 'versions=\["):
        load_recipe(RECIPES / "mnist-bct.yaml", ["versions.1.feature_dim=96"])
    recipe = load_recipe(RECIPES / "mnist-bct.yaml", ["versions=[{}, {feature_dim: 96}]"])
    assert recipe.versions[1].feature_dim == 96


def test_cli_index_out_of_range_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(ARCH), "--set", "versions.5.feature_dim=96",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "versions.5" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_recipe_refuses_the_query_gallery_protocol_before_training(tmp_path):
    from compat.errors import CompatError
    from compat.train import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("eval: {protocol: query-gallery}\n", encoding="utf-8")
    with pytest.raises(CompatError, match="eval.protocol: .*query-gallery needs separate query and gallery sets"):
        load_recipe(recipe)
