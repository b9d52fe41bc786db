"""BCT (influence loss, synthesised rows), the L2 baseline, BT^2 (basis transformation) and how a
longer or shorter new feature meets the old one, in training and in the evaluator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from compat.cli import cli
from compat.compatibility import DimPolicy, Version, apply_dim_policy, evaluate_chain
from compat.errors import CompatError
from compat.features import FeatureSet, load_features
from compat.methods import (
    BCT,
    BT2,
    L2Regression,
    bt2_loss,
    build_method,
    class_means,
    influence_loss,
    match_dim,
    synthesize_classifier,
)
from compat.models import BasisTransformModel, LinearHead, build_model
from compat.retrieval import RetrievalEvaluator
from compat.train import load_recipe
from compat.train.plan import model_spec as _model_spec
from tests.cli_runs import train_recipe_text
from tests.paths import RECIPES


class _OldModel(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.head = LinearHead(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            if bias is not None:
                self.head.bias.copy_(bias)


# ---------------------------------------------------------------- BCT


def test_class_means_and_synthesised_rows_by_hand():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 2, 2, 3])
    means = class_means(feats, labels, 4)
    expected = torch.tensor([[2.0, 1.0], [0.0, 0.0], [1.0, 3.0], [5.0, 5.0]])  # class 1 has no sample
    torch.testing.assert_close(means, expected)

    old = torch.tensor([[1.0, 1.0], [0.0, -2.0], [7.0, 7.0]])  # the old model knew classes 0, 1, 2
    weight = synthesize_classifier(old, means, [3])
    torch.testing.assert_close(weight, torch.tensor([[1.0, 1.0], [0.0, -2.0], [7.0, 7.0], [5.0, 5.0]]))

    # normalise: unit mean row times the mean norm of the kept rows (sqrt2, 2, 7*sqrt2)
    scale = (math.sqrt(2) + 2 + 7 * math.sqrt(2)) / 3
    weight = synthesize_classifier(old, means, [3], normalize=True)
    torch.testing.assert_close(weight[3], torch.tensor([scale, scale]) / math.sqrt(2))
    torch.testing.assert_close(weight[:3], old)

    # every row from the class means (the BT^2 authors' baseline)
    torch.testing.assert_close(synthesize_classifier(old, means, [0, 1, 2, 3]), means)


def test_bct_prepare_synthesises_only_the_classes_the_old_model_never_saw():
    g = torch.Generator().manual_seed(0)
    old_w = torch.randn(10, 4, generator=g)
    feats = torch.randn(40, 4, generator=g)
    labels = torch.arange(40) % 7
    m = BCT()
    m.prepare(n_old_classes=3, n_new_classes=7, old_model=_OldModel(old_w), old_classes=[0, 1, 2],
              old_train_features=feats, train_labels=labels)
    assert m.synthesized == [3, 4, 5, 6]
    torch.testing.assert_close(m.old_weight[:3], old_w[:3])
    for c in range(3, 7):
        torch.testing.assert_close(m.old_weight[c], feats[labels == c].mean(0))
    torch.testing.assert_close(m.old_weight[7:], old_w[7:])  # classes absent from the data keep their rows

    everything = BCT(synthesize="all")
    everything.prepare(n_old_classes=3, n_new_classes=7, old_model=_OldModel(old_w), old_classes=[0, 1, 2],
                       old_train_features=feats, train_labels=labels)
    assert everything.synthesized == list(range(7))
    torch.testing.assert_close(everything.old_weight[0], feats[labels == 0].mean(0))


def test_influence_loss_against_a_hand_computed_case():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([0.5, -0.5])
    h = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    y = torch.tensor([1, 0])
    # logits: [1.5, 1.5] and [2.5, -2.5]
    expected = (-math.log(0.5) + -math.log(math.exp(2.5) / (math.exp(2.5) + math.exp(-2.5)))) / 2
    assert float(influence_loss(h, y, w, b)) == pytest.approx(expected, rel=1e-6)

    m = BCT(alpha=3.0)
    m.prepare(n_old_classes=2, n_new_classes=2, old_model=_OldModel(w, b), old_classes=[0, 1],
              old_train_features=torch.zeros(2, 2), train_labels=y)
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = m.loss(h, logits, y)
    ce = -math.log(math.exp(1) / (1 + math.exp(1)))
    assert float(out.total) == pytest.approx(ce + 3.0 * expected, rel=1e-6)
    assert out.parts["influence"] == pytest.approx(expected, rel=1e-6)


def test_longer_and_shorter_new_features_meet_the_old_classifier():
    w = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    y = torch.tensor([0, 1])
    longer = torch.tensor([[1.0, 0.0, 2.0, 9.0, 9.0], [0.0, 1.0, 1.0, -9.0, 9.0]])
    shorter = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    assert match_dim(longer, 3).tolist() == longer[:, :3].tolist()
    assert match_dim(shorter, 3).tolist() == [[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]]
    torch.testing.assert_close(influence_loss(longer, y, w), F.cross_entropy(longer[:, :3] @ w.T, y))
    torch.testing.assert_close(influence_loss(shorter, y, w), F.cross_entropy(shorter @ w[:, :2].T, y))


def test_l2_regression_by_hand():
    m = L2Regression(weight=0.5)
    feats = torch.tensor([[1.0, 2.0, 7.0], [0.0, 0.0, 7.0]])
    old = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    logits = torch.zeros(2, 2)
    out = m.loss(feats, logits, torch.tensor([0, 1]), old_features=old)
    assert out.parts["l2"] == pytest.approx((4.0 + 25.0) / 2)
    assert float(out.total) == pytest.approx(math.log(2) + 0.5 * 14.5)


def test_bct_options_are_checked():
    with pytest.raises(CompatError, match="synthesize"):
        build_method("bct", synthesize="some")
    with pytest.raises(CompatError, match="alpha"):
        build_method("bct", alpha=-1)


# ---------------------------------------------------------------- BT^2


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley", "householder"])
def test_bt2_maps_stay_orthonormal_while_training(orthogonal_map):
    torch.manual_seed(0)
    model = build_model("mlp", feature_dim=8, head="linear", num_classes=5, to_add_dim=3,
                        orthogonal_map=orthogonal_map, backbone_kwargs={"in_features": 16, "hidden": 12})
    assert isinstance(model, BasisTransformModel) and model.feature_dim == 11 and model.compatible_dim == 8
    method = BT2()
    old_feats = torch.randn(64, 8)
    labels = torch.arange(64) % 5
    method.prepare(n_old_classes=5, n_new_classes=5, old_model=torch.nn.Identity(), old_train_features=old_feats,
                   train_labels=labels)
    teacher = torch.randn(64, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    images = torch.randn(64, 1, 4, 4)
    before = [w.detach().clone() for w in model.basis.orthogonal_maps()]
    for _ in range(20):
        out = model(images)
        loss = method.loss(out.features, out.logits, labels, old_features=old_feats, teacher_features=teacher,
                           head_features=out.head_features)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    for w, w0 in zip(model.basis.orthogonal_maps(), before, strict=True):
        assert not torch.allclose(w, w0)  # the maps did train
        torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)
    # The whole feature is an orthonormal transformation of [norm(e), scale * norm(f)].
    with torch.no_grad():
        norms = model.embed(images).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((64,), math.sqrt(1 + 3.0**2)), atol=1e-5, rtol=0)


def test_bt2_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0]])
    labels = torch.tensor([0])
    features = torch.tensor([[3.0, 4.0, 1.0]])  # h_bct = (3, 4)
    f = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[4.0, 3.0]])
    teacher = torch.tensor([[0.0, 2.0]])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    total, parts = bt2_loss(logits, labels, features, f, old, teacher, prototypes, l1=1.0, l2=10.0, l3=5.0)
    ce = math.log(1 + math.exp(-2.0))
    pseudo = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)))
    to_old = 1 - 24 / 25
    to_teacher = 1.0
    assert parts["prototype_ce"] == pytest.approx(pseudo, rel=1e-6)
    assert float(total) == pytest.approx(ce + 10 * pseudo + 5 * to_old + to_teacher, rel=1e-6)


def test_bt2_refuses_a_model_without_extra_coordinates():
    m = BT2()
    m.prepare(n_old_classes=2, n_new_classes=2, old_model=torch.nn.Identity(), old_train_features=torch.randn(4, 3),
              train_labels=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(CompatError, match="to_add_dim"):
        m.loss(torch.randn(4, 3), torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), old_features=torch.randn(4, 3),
               teacher_features=torch.randn(4, 3), head_features=torch.randn(4, 3))


# ---------------------------------------------------------------- the evaluator's side


def test_declared_compatible_dim_decides_the_cell_dimensions():
    q = np.arange(10, dtype=np.float32).reshape(2, 5)
    g = np.ones((3, 3), dtype=np.float32)
    with pytest.raises(CompatError, match="feature sizes differ"):
        apply_dim_policy(q, g, DimPolicy.ERROR)
    q2, g2 = apply_dim_policy(q, g, DimPolicy.ERROR, compatible_dim=3)  # longer: its first 3 coordinates
    assert q2.tolist() == q[:, :3].tolist() and g2 is g
    q3, _ = apply_dim_policy(q[:, :2], g, DimPolicy.ERROR, compatible_dim=2)  # shorter: zero-padded
    assert q3.tolist() == [[0.0, 1.0, 0.0], [5.0, 6.0, 0.0]]
    q4, _ = apply_dim_policy(q, q, DimPolicy.ERROR, compatible_dim=3)  # against itself: the whole feature
    assert q4 is q


def test_chain_uses_the_prefix_against_the_old_gallery_and_everything_against_its_own():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)
    ids = np.arange(30)
    old = rng.normal(size=(30, 4)).astype(np.float32) + 3 * np.eye(6, 4, dtype=np.float32)[labels]
    extra = rng.normal(size=(30, 2)).astype(np.float32) * 5
    new = np.concatenate([old + 0.01, extra], axis=1)
    v0 = Version("v0", FeatureSet.from_arrays(old, labels, ids))
    v1 = Version("v1", FeatureSet.from_arrays(new, labels, ids, meta={"compatible_dim": 4}))
    ev = RetrievalEvaluator(("cmc@1", "map"))
    report = evaluate_chain([v0, v1], ev)
    prefix = ev.evaluate(FeatureSet.from_arrays(new[:, :4], labels, ids), v0.gallery).values
    whole = ev.evaluate(v1.gallery, v1.gallery).values
    assert report.cell("map", "v1", "v0") == prefix["map"]
    assert report.cell("map", "v1", "v1") == whole["map"]
    bad = Version("v1", FeatureSet.from_arrays(new, labels, ids, meta={"compatible_dim": "four"}, source="v1.npz"))
    with pytest.raises(CompatError, match="v1.npz: meta field compatible_dim"):
        evaluate_chain([v0, bad], ev)


# ---------------------------------------------------------------- recipes and the staged pipeline


@pytest.mark.parametrize("name", ["mnist-bct", "mnist-l2", "mnist-bt2", "mnist-bct-arch", "mnist-bct-classes",
                                  "mnist-bt2-classes", "cifar100-bct", "cifar100-bt2", "imagenet-bct"])
def test_recipes_validate_and_build_their_models(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    method = build_method(recipe.method.name, **recipe.method.options)
    specs = [_model_spec(recipe, t, 10, method.head) for t in range(2)]
    if name.startswith("mnist"):
        assert recipe.data.dataset == "mnist"
        if recipe.data.protocol == "growth":
            assert recipe.data.fractions == [0.1, 1.0]
    if "bt2" in name:
        assert specs[0].get("to_add_dim") is None and specs[1]["to_add_dim"] == 32
        assert "to_add_dim" not in _model_spec(recipe, 1, 10, method.head, basis=False)
    if name == "mnist-bct-arch":
        assert (specs[0]["backbone"], specs[0]["feature_dim"]) == ("mlp", 64)
        assert (specs[1]["backbone"], specs[1]["feature_dim"]) == ("smallcnn", 128)
        model = build_model(**specs[0])
        assert model(torch.zeros(2, 1, 28, 28)).features.shape == (2, 64)


TINY_BT2 = """
name: tiny-bt2
seed: 1
data: {dataset: mnist-mini, protocol: growth, fractions: [0.05, 0.1]}
model: {backbone: smallcnn, feature_dim: 16}
method: {name: bt2}
versions: [{}, {to_add_dim: 4}]
train: {epochs: 1, batch_size: 32, lr: 0.05}
eval: {metrics: [cmc@1]}
"""

TINY_ARCH = """
name: tiny-arch
seed: 1
data: {dataset: mnist-mini, protocol: growth, fractions: [0.05, 0.1]}
model: {backbone: smallcnn, feature_dim: 16}
method: {name: bct}
versions: [{backbone: mlp, feature_dim: 8}, {}]
train: {epochs: 1, batch_size: 32, lr: 0.05}
eval: {metrics: [cmc@1], independent_reference: true}
"""


def test_bt2_pipeline_trains_a_teacher_and_records_the_compatible_prefix(tmp_path):
    result, out = train_recipe_text(tmp_path, TINY_BT2)
    assert result.exit_code == 0, result.output
    assert (out / "v1-independent" / "model.pt").is_file()
    v0, v1 = load_features(out / "features" / "v0.npz"), load_features(out / "features" / "v1.npz")
    teacher = load_features(out / "features" / "v1-independent.npz")
    assert (v0.dim, v1.dim, teacher.dim) == (16, 20, 16)
    assert v1.meta["compatible_dim"] == 16 and "compatible_dim" not in v0.meta
    report = json.loads((out / "compat.json").read_text())
    # the update gain's reference is the teacher's own cell
    ev = RetrievalEvaluator(("cmc@1",))
    ref = ev.evaluate(teacher, teacher).values["cmc@1"]
    m = report["metrics"]["cmc@1"]
    expected = None if ref == m[0][0] else (m[1][0] - m[0][0]) / (ref - m[0][0])
    assert report["summary"]["cmc@1"]["update_gain"] == pytest.approx(expected)


def test_bct_across_an_architecture_change(tmp_path):
    result, out = train_recipe_text(tmp_path, TINY_ARCH)
    assert result.exit_code == 0, result.output
    v0, v1 = load_features(out / "features" / "v0.npz"), load_features(out / "features" / "v1.npz")
    assert (v0.meta["model"], v0.dim, v1.meta["model"], v1.dim) == ("mlp", 8, "smallcnn", 16)
    assert v1.meta["compatible_dim"] == 8
    assert (out / "v1-independent" / "model.pt").is_file()
    # `compat eval` on the written features needs no dimension policy: the metadata says it all.
    result = CliRunner().invoke(cli, ["eval", "--version", f"v0={out / 'features' / 'v0.npz'}", "--version",
                                      f"v1={out / 'features' / 'v1.npz'}", "--metric", "cmc@1",
                                      "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "ev" / "compat.json").read_text())
    assert again["metrics"] == json.loads((out / "compat.json").read_text())["metrics"]
    # The model files record it too: the gate and `compat extract` on them need no dimension policy,
    # and give the cells and the features that the recipe wrote.
    policy = tmp_path / "policy.yaml"
    policy.write_text("checks: [{kind: compatibility, metric: cmc@1, threshold: -1.0}]\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["gate", "--old", str(out / "v0" / "model.pt"), "--new", str(out / "v1" / "model.pt"),
                                      "--dataset", "mnist-mini", "--policy", str(policy), "--n-resamples", "100",
                                      "--out", str(tmp_path / "gate"), "--quiet"])
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "gate" / "gate.json").read_text())["checks"][0]["cells"]
    assert cells == {"new/old": again["metrics"]["cmc@1"][1][0], "old/old": again["metrics"]["cmc@1"][0][0]}
    result = CliRunner().invoke(cli, ["extract", "--checkpoint", str(out / "v1" / "model.pt"), "--data", "mnist-mini",
                                      "--out", str(tmp_path / "v1.npz"), "--quiet"])
    assert result.exit_code == 0, result.output
    extracted = load_features(tmp_path / "v1.npz")
    assert extracted.meta["compatible_dim"] == 8 and extracted.meta["model"] == "smallcnn"
    np.testing.assert_array_equal(extracted.features, v1.features)


def test_model_files_never_name_a_file_to_read(tmp_path):
    from compat.models import load_model, save_checkpoint, save_model

    spec = {"backbone": "mlp", "feature_dim": 4, "head": "linear", "num_classes": 3,
            "backbone_kwargs": {"hidden": 8}}
    model = build_model(**spec)
    path = save_model(tmp_path / "m.pt", model, {**spec, "backbone_kwargs": {"hidden": 8, "pretrained": "/x.pt"}})
    assert "pretrained" not in torch.load(path, weights_only=True)["spec"]["backbone_kwargs"]
    # A hostile file that names one anyway: the path is ignored, nothing is read from it.
    save_checkpoint(tmp_path / "h.pt", {"model": model.state_dict(), "spec": {
        **spec, "backbone": "resnet18", "backbone_kwargs": {"pretrained": str(tmp_path / "missing.pt")}}})
    with pytest.raises(CompatError, match="weights do not fit"):
        load_model(tmp_path / "h.pt")
