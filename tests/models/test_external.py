"""The user's own models: a TorchScript file and a Python factory through ``compat extract`` and ``compat gate``,
refused (nothing loaded, nothing imported) without --trust-model-code; explicit preprocessing recorded and
compared; timm backbones in recipes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from compat.cli import cli
from compat.data import build_dataset
from compat.errors import CompatError
from compat.features import load_features
from compat.models import build_model, read_model_file, save_model
from compat.models.external import parse_model_spec, preprocessing_transform
from compat.preprocessing import Preprocessing, preprocessing_warnings, resolve_preprocessing
from tests.gate.common import assert_one_line_exit_2

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

MNIST = ["--preprocessing", "mnist"]


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


class Pixels(nn.Module):
    """A fixed projection of the pixels of 28 x 28 grey images."""

    def __init__(self, seed: int, dim: int = 12) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images)


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> dict[str, object]:
    """A TorchScript file, and an importable module (unique name per test) whose import leaves a marker."""
    script = tmp_path / "model.pt"
    torch.jit.script(Pixels(0)).save(str(script))
    module = f"user_models_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        import torch
        Path({str(marker)!r}).touch()

        def module():
            torch.manual_seed(1)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 12))

        def function():
            return lambda images: images.mean(dim=(2, 3))  # a plain callable: each channel's mean

        def wrong_shape():
            return lambda images: images.mean()
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return {"script": script, "module": module, "marker": marker}


def test_torchscript_model_through_compat_extract(user_code, tmp_path: Path):
    out = tmp_path / "f.npz"
    result = run("extract", "--model", f"torchscript:{user_code['script']}", "--trust-model-code", *MNIST,
                 "--data", "mnist-mini", "--out", out, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    fs = load_features(out)
    assert (fs.n, fs.dim) == (1000, 12)
    assert fs.meta["model"] == f"torchscript:{user_code['script']}" and fs.meta["checkpoint"].startswith("sha256:")
    assert fs.meta["preprocessing"] == {"image_size": 28, "resize": None, "mean": [0.1307], "std": [0.3081],
                                        "preset": "mnist"}
    ds = build_dataset("mnist-mini", split="test", train_transform=False)  # the dataset's own transform
    images = torch.stack([ds[i][0] for i in range(5)])
    with torch.no_grad():
        expected = Pixels(0)(images).numpy()
    np.testing.assert_allclose(fs.features[:5], expected, rtol=1e-5, atol=1e-6)
    assert fs.labels.tolist() == ds.labels.tolist()


def test_python_factory_through_compat_extract_with_explicit_preprocessing(user_code, tmp_path: Path):
    out = tmp_path / "f.npz"
    result = run("extract", "--model", f"python:{user_code['module']}:function", "--trust-model-code",
                 "--image-size", 28, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--data", "mnist-mini",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    fs = load_features(out)
    assert fs.dim == 3 and fs.meta["model"] == f"python:{user_code['module']}:function"
    assert fs.meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and fs.meta["preprocessing"]["preset"] is None
    # grey images given 3 channels, each normalised by (x - 0.5) / 0.25: the mean pixel of each channel
    ds = build_dataset("mnist-mini", split="test", train_transform=False)
    raw = ds.base.data[:4].float().div(255).flatten(1)
    np.testing.assert_allclose(fs.features[:4], ((raw - 0.5) / 0.25).mean(1, keepdim=True).repeat(1, 3).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_user_models_through_compat_gate(user_code, tmp_path: Path):
    out = tmp_path / "out"
    result = run("gate", "--old", f"torchscript:{user_code['script']}", "--new", f"python:{user_code['module']}:module",
                 "--trust-model-code", *MNIST, "--dataset", "mnist-mini", "--n-resamples", 200, "--out", out)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    doc = json.loads((out / "gate.json").read_text(encoding="utf-8"))
    assert doc["inputs"]["old"]["meta"]["model"] == f"torchscript:{user_code['script']}"
    assert doc["inputs"]["new"]["meta"]["preprocessing"]["preset"] == "mnist"
    assert doc["inputs"]["new"]["n"] == 1000 and doc["warnings"] == []
    # the same candidate against features made with other preprocessing: a warning, in the report too
    other = tmp_path / "other.npz"
    assert run("extract", "--model", f"torchscript:{user_code['script']}", "--trust-model-code", "--image-size", 28,
               "--mean", "0.5", "--std", "0.5", "--data", "mnist-mini", "--out", other, "--quiet").exit_code == 0
    result = run("gate", "--old", other, "--new", f"python:{user_code['module']}:module", "--trust-model-code",
                 *MNIST, "--dataset", "mnist-mini", "--n-resamples", 200, "--out", tmp_path / "out2")
    assert result.exit_code in (0, 1), (result.output, result.exception)
    assert "compat: warning: preprocessing differs: new (" in result.stderr
    doc = json.loads((tmp_path / "out2" / "gate.json").read_text(encoding="utf-8"))
    assert len(doc["warnings"]) == 1 and "mean [0.5]" in doc["warnings"][0]
    assert "**Warning:** preprocessing differs" in (tmp_path / "out2" / "gate.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", ["extract", "gate"])
@pytest.mark.parametrize("kind", ["torchscript", "python"])
def test_untrusted_user_models_exit_2_and_nothing_is_loaded(user_code, tmp_path: Path, monkeypatch, command, kind):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", refuse)
    spec = f"torchscript:{user_code['script']}" if kind == "torchscript" else f"python:{user_code['module']}:module"
    out = tmp_path / "out"
    if command == "extract":
        result = run("extract", "--model", spec, *MNIST, "--data", "mnist-mini", "--out", out / "f.npz")
    else:
        result = run("gate", "--old", spec, "--new", spec, *MNIST, "--dataset", "mnist-mini", "--out", out)
    assert_one_line_exit_2(result, out, [spec, "--trust-model-code"])
    assert not user_code["marker"].exists()  # the module was never imported


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--model", "python:no-such"], ["expected python:package.module:function"]),
        (["--model", "python:compat_no_such_module_x:f", "--trust-model-code", *MNIST], ["cannot import"]),
        (["--model", "torchscript:missing.pt", "--trust-model-code", *MNIST], ["missing.pt", "no such TorchScript"]),
        (["--model", "MODULE:wrong_shape", "--trust-model-code", *MNIST], ["expected features of shape (512, D)"]),
        (["--model", "MODULE:nothing", "--trust-model-code", *MNIST], ["has no function 'nothing'"]),
        (["--model", "MODULE:module", "--trust-model-code"], ["needs its preprocessing"]),
        (["--model", "MODULE:module", "--trust-model-code", "--image-size", "28"], ["missing: mean, std"]),
        (["--model", "MODULE:module", "--trust-model-code", "--image-size", "28", "--mean", "0.5,0.5",
          "--std", "1,1"], ["1 or 3 values"]),
        (["--model", "models/model.pt", "--trust-model-code", *MNIST], ["--checkpoint"]),
        (["--checkpoint", "x.pt", "--model", "MODULE:module"], ["exactly one model"]),
        (["--checkpoint", "x.pt", *MNIST], ["these options are for --model"]),
    ],
)
def test_bad_user_model_inputs_exit_2(user_code, tmp_path: Path, args, expect):
    args = [a.replace("MODULE", f"python:{user_code['module']}") for a in args]
    out = tmp_path / "out"
    result = run("extract", *args, "--data", "mnist-mini", "--out", out / "f.npz", "--quiet")
    assert_one_line_exit_2(result, out, expect)


def test_preprocessing_presets_overrides_and_warnings():
    pre = resolve_preprocessing("imagenet", image_size=192)
    assert (pre.image_size, pre.resize, pre.channels, pre.preset) == (192, 256, 3, "imagenet")
    with pytest.raises(CompatError, match="unknown preset 'imagenett'"):
        resolve_preprocessing("imagenett")
    with pytest.raises(CompatError, match="resize: expected an integer >= image_size"):
        Preprocessing(image_size=224, mean=(0.5,), std=(0.5,), resize=100)
    image = build_dataset("mnist-mini", split="test", train_transform=False).base.data[0].numpy()
    from PIL import Image

    assert preprocessing_transform(pre)(Image.fromarray(image)).shape == (3, 192, 192)
    a = {"preprocessing": resolve_preprocessing("mnist").to_meta()}
    b = {"preprocessing": {**a["preprocessing"], "preset": None}}  # the same numbers under another name
    c = {"preprocessing": resolve_preprocessing("mnist", image_size=32).to_meta()}
    assert preprocessing_warnings([("v1", a), ("v2", b), ("v0", {})]) == []
    [warning] = preprocessing_warnings([("v1", a), ("v2", {}), ("v3", c)])
    assert warning.startswith("preprocessing differs: v3 (image_size 32") and "vs v1 (image_size 28" in warning


def test_model_specs_parse():
    assert parse_model_spec("features.npz") is None and parse_model_spec("models:/x@champion") is None
    assert parse_model_spec("python:a.b:c").target == "a.b:c"
    assert parse_model_spec("torchscript:dir/m.pt").spec == "torchscript:dir/m.pt"
    with pytest.raises(CompatError, match="expected torchscript:PATH"):
        parse_model_spec("torchscript:")


def test_timm_backbone_in_a_model_file_with_local_weights(tmp_path: Path):
    pytest.importorskip("timm")
    model = build_model("timm:resnet10t", feature_dim=9, head="simplex", num_classes=10,
                        backbone_kwargs={"in_channels": 1})
    assert model.embed(torch.randn(2, 1, 28, 28)).shape == (2, 9)
    weights = tmp_path / "w.pt"
    torch.save(model.backbone.model.state_dict(), weights)
    again = build_model("timm:resnet10t", feature_dim=9, head="simplex", num_classes=10,
                        backbone_kwargs={"in_channels": 1, "pretrained": str(weights)})
    assert all(torch.equal(a, b) for a, b in zip(again.backbone.state_dict().values(),
                                                 model.backbone.state_dict().values(), strict=True))
    spec = {"backbone": "timm:resnet10t", "feature_dim": 9, "head": "simplex", "num_classes": 10,
            "backbone_kwargs": {"in_channels": 1, "pretrained": str(weights)}}
    save_model(tmp_path / "model.pt", model, spec)
    loaded, info = read_model_file(tmp_path / "model.pt")
    assert info["backbone"] == "timm:resnet10t"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), model.eval().embed(x))
    for bad, expect in (({"pretrained": True}, "compat never downloads"), ({}, "timm has no model 'resnet10tt'")):
        name = "timm:resnet10tt" if not bad else "timm:resnet10t"
        with pytest.raises(CompatError, match=expect):
            build_model(name, feature_dim=9, head="simplex", num_classes=10, backbone_kwargs=bad)
