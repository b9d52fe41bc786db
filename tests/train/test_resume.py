"""``--resume`` reuses only what the same recipe trained, and continues exactly where a run stopped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from compat.cli import cli
from compat.errors import CompatError
from compat.methods import build_method
from compat.models import build_model, load_checkpoint, save_checkpoint
from compat.train import train_version
from compat.train.config import TrainConfig
from tests.fakes import fake_cifar

# Two versions on a fake CIFAR-10 (its training augmentation draws from torch's RNG, so a resume
# that restored the wrong RNG state would train other weights), one epoch, an update-gain reference.
RECIPE = """
name: resume
seed: 5
data: {dataset: cifar10, root: ROOT, protocol: growth, fractions: [0.5, 1.0]}
model: {backbone: smallcnn, backbone_kwargs: {in_channels: 3}}
method: {name: cores}
train: {epochs: 1, batch_size: 8, lr: 0.05}
eval: {metrics: [cmc@1], independent_reference: true}
"""


def _train(recipe: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["train", str(recipe), "--out", str(out), "--device", "cpu", "--quiet", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """A recipe and its finished, uninterrupted run (the fake dataset stays in place for the module)."""
    root = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        fake_cifar(root / "data", mp, hundred=False, per_file=10, every_class=True)
        recipe = root / "resume.yaml"
        recipe.write_text(RECIPE.replace("ROOT", str(root / "data")), encoding="utf-8")
        result = _train(recipe, root / "run")
        assert result.exit_code == 0, result.output
        yield recipe, root / "run"


def _copy(run: Path, tmp_path: Path, *drop: str) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    for name in drop:
        (out / name).unlink()
    return out


@pytest.mark.parametrize(("override", "key"), [("seed=6", "seed"), ("train.epochs=2", "train.epochs"),
                                               ("model.backbone=mlp", "model.backbone")])
def test_resume_with_another_recipe_names_the_first_key_that_differs(finished, tmp_path, override, key) -> None:
    recipe, run = finished
    out = _copy(run, tmp_path)
    before = (out / "recipe.yaml").read_bytes()
    result = _train(recipe, out, "--resume", "--set", override)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "recipe.yaml" in line and f"{key} is " in line, line
    assert (out / "recipe.yaml").read_bytes() == before  # not rewritten with the refused settings


def test_every_reused_file_is_checked_not_only_recipe_yaml(finished, tmp_path) -> None:
    recipe, run = finished
    out = _copy(run, tmp_path, "recipe.yaml")
    for name in ("checkpoint.pt", "model.pt"):
        result = _train(recipe, out, "--resume", "--set", "seed=6")
        assert result.exit_code == 2, result.output
        assert f"v0/{name}: trained with another recipe: seed is 5 there and 6 now" in result.stderr, result.stderr
        assert not (out / "recipe.yaml").exists()  # a refused resume writes nothing
        for version in ("v0", "v1", "v1-independent"):
            (out / version / name).unlink()


def test_resume_after_the_reference_is_exact(finished, tmp_path) -> None:
    """Stopped after v1's update-gain reference was trained, before v1's first epoch: the resumed v1
    loads the reference and ends with the same weights, to the bit, as the uninterrupted run."""
    recipe, run = finished
    out = _copy(run, tmp_path, "v1/checkpoint.pt", "v1/model.pt")
    result = _train(recipe, out, "--resume")
    assert result.exit_code == 0, result.output
    want, got = (torch.load(d / "v1" / "model.pt", weights_only=True)["model"] for d in (run, out))
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def _checkpointed(tmp_path: Path, *, feature_dim: int, drop: str | None = None) -> tuple[Path, dict]:
    """A one-epoch training's checkpoint (optionally without one of its fields), and the run's arguments."""
    from compat.data import build_dataset

    method = build_method("independent")
    args = {"method": method, "dataset": build_dataset("mnist-mini", split="train", train_transform=False),
            "new_indices": np.arange(32), "memory_indices": np.empty(0, np.int64), "old_model": None,
            "cfg": TrainConfig(epochs=2, batch_size=16), "seed": 0, "device": "cpu", "progress": False}
    path = tmp_path / "checkpoint.pt"
    torch.manual_seed(0)
    model = build_model("smallcnn", feature_dim=feature_dim, head="linear", num_classes=10)
    train_version(model, **{**args, "cfg": TrainConfig(epochs=1, batch_size=16)}, checkpoint_path=path, resume=False)
    if drop is not None:
        state = load_checkpoint(path)
        del state[drop]
        save_checkpoint(path, state)
    return path, args


@pytest.mark.parametrize(("feature_dim", "drop", "expect"), [(16, None, "field 'model'"),
                                                            (8, "optimizer", "no 'optimizer'"),
                                                            (8, "rng", "no 'rng'")])
def test_a_checkpoint_that_does_not_fit_is_a_one_line_error(tmp_path, feature_dim, drop, expect) -> None:
    path, args = _checkpointed(tmp_path, feature_dim=8, drop=drop)
    model = build_model("smallcnn", feature_dim=feature_dim, head="linear", num_classes=10)
    with pytest.raises(CompatError, match=expect) as info:
        train_version(model, **args, checkpoint_path=path, resume=True)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_first_difference_names_nested_keys_and_list_items() -> None:
    from compat.train.resume import first_difference, training_settings

    a = {"seed": 0, "train": {"lr": 0.1, "milestones": [3, 6]}, "versions": [{}, {"feature_dim": 96}]}
    assert first_difference(a, a) is None
    assert first_difference(a, {**a, "train": {"lr": 0.1, "milestones": [3, 7]}}) == ("train.milestones.1", 6, 7)
    assert first_difference(a, {**a, "versions": [{}, {"feature_dim": 64}]}) == ("versions.1.feature_dim", 96, 64)
    assert first_difference({"x": 1}, {"x": 1.0}) is None and first_difference({"x": 1}, {"x": True}) is not None
    assert first_difference({"x": 1}, {"x": 1, "y": 2}) == ("y", "<absent>", 2)
    # What cannot change a trained weight is not compared: where the data lies, how the chain is evaluated.
    assert training_settings({"data": {"root": "/a", "dataset": "mnist"}, "eval": {}, "name": "n"}) == \
        {"data": {"dataset": "mnist"}}


def test_an_adapter_is_reused_only_with_the_model_files_it_was_trained_on(tmp_path) -> None:
    from compat.adapters.fit import AdapterConfig
    from compat.features import FeatureSet
    from compat.train.adapters import _adapter

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    old = rng.normal(size=(4, 8))[labels] + 0.3 * rng.normal(size=(100, 8))
    new = old @ np.linalg.qr(rng.normal(size=(8, 8)))[0]

    def train(digest: str) -> dict[str, FeatureSet]:
        return {"v1": FeatureSet.from_arrays(new, labels, meta={"checkpoint": digest}),
                "v0": FeatureSet.from_arrays(old, labels, meta={"checkpoint": "sha256:old"})}

    cfg = AdapterConfig(kind="procrustes", forward="none", epochs=1)
    path = tmp_path / "adapters" / "v1-v0-procrustes.npz"
    first = _adapter(tmp_path, "procrustes", cfg, ("v1", "v0"), train("sha256:a"), resume=True, device="cpu",
                     progress=False)
    assert first.info.training["models"] == {"new": "sha256:a", "old": "sha256:old"}
    stamp = path.stat().st_ino  # a file written again is a new file (written aside, then renamed)
    _adapter(tmp_path, "procrustes", cfg, ("v1", "v0"), train("sha256:a"), resume=True, device="cpu", progress=False)
    assert path.stat().st_ino == stamp  # the same settings and model files: reused
    again = _adapter(tmp_path, "procrustes", cfg, ("v1", "v0"), train("sha256:b"), resume=True, device="cpu",
                     progress=False)
    assert path.stat().st_ino != stamp and again.info.training["models"]["new"] == "sha256:b"  # trained again
