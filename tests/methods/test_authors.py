"""The authors' variants of BT^2 and of BCT as the BT^2 authors run it, against cases computed by
hand from their formulas: BT^2's scale C, its prototypes and a classifier on the normalised
feature; BCT's class means of normalised old features, normalised influence logits and smoothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compat.errors import CompatError
from compat.methods import BCT, BT2, bt2_prototypes, build_method
from compat.models import LinearHead, build_model, load_model, save_model
from compat.models.basis import BasisTransform

OLD = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # normalised: (0.6, 0.8), (1, 0), (0, 1)
LABELS = torch.tensor([0, 0, 1])


def _smoothed_ce(logits: list[float], target: int, eps: float) -> float:
    """Cross-entropy against (1 - eps) one-hot + eps / K, by hand."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    k = len(logits)
    return -sum(((1 - eps) * (c == target) + eps / k) * (v - log_z) for c, v in enumerate(logits))


class _OldModel(torch.nn.Module):
    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.head = LinearHead(dim, classes)


# ---------------------------------------------------------------- BT^2


def test_bt2_prototypes_are_means_of_normalised_old_features_not_normalised_again():
    # class 0: mean of (0.6, 0.8) and (1, 0) = (0.8, 0.4), norm 0.894; class 1: (0, 1).
    authors = bt2_prototypes(OLD, LABELS, 2)
    torch.testing.assert_close(authors, torch.tensor([[0.8, 0.4], [0.0, 1.0]]))
    # The former rule: normalise the mean of the raw features, (2, 2) -> (0.7071, 0.7071).
    former = bt2_prototypes(OLD, LABELS, 2, "normalized_mean")
    torch.testing.assert_close(former, torch.tensor([[0.5**0.5, 0.5**0.5], [0.0, 1.0]]))
    method = BT2()
    method.prepare(n_old_classes=2, n_new_classes=2, old_model=torch.nn.Identity(), old_train_features=OLD,
                   train_labels=LABELS)
    torch.testing.assert_close(method.prototypes, authors)
    with pytest.raises(CompatError, match="bt2 prototypes: unknown value 'mean'"):
        build_method("bt2", prototypes="mean")


def test_bt2_scale_c_weighs_the_new_feature_part():
    # D = 2, A = 1, both orthonormal maps set to the identity: feature = [norm(e), C norm(f)].
    for scale, want in ((2.0, [-1.0, 1.2, 1.6]), (3.0, [-1.0, 1.8, 2.4])):
        basis = BasisTransform(2, 2, 1, scale=scale)
        with torch.no_grad():
            basis.new.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
            basis.extra.weight.copy_(torch.tensor([[-2.0, 0.0]]))
            basis.rotate_new.weight = torch.eye(2)
            basis.rotate_compatible.weight = torch.eye(2)
        feature, f = basis(torch.tensor([[1.0, 1.0]]))
        torch.testing.assert_close(feature, torch.tensor([want]))
        torch.testing.assert_close(f, torch.tensor([[3.0, 4.0]]))
    with pytest.raises(CompatError, match="basis_scale"):
        BasisTransform(2, 2, 1, scale=0.0)


def test_classifier_on_the_normalised_feature_and_its_model_file(tmp_path):
    head = LinearHead(2, 2, normalize=True)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(head(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 1.6]]))
    spec = {"backbone": "mlp", "feature_dim": 4, "head": "linear", "num_classes": 3, "to_add_dim": 2,
            "basis_scale": 3.0, "normalized_head": True, "backbone_kwargs": {"in_features": 4, "hidden": 6}}
    torch.manual_seed(0)
    model = build_model(**spec)
    images = torch.randn(5, 1, 2, 2)
    out = model(images)
    torch.testing.assert_close(out.logits, F.normalize(out.head_features, dim=1) @ model.head.weight.T)
    torch.testing.assert_close(out.features.norm(dim=1), torch.full((5,), math.sqrt(10.0)))
    save_model(tmp_path / "m.pt", model, spec)
    again = load_model(tmp_path / "m.pt")
    assert again.head.normalize and again.basis.scale == 3.0
    torch.testing.assert_close(again(images).logits, model.eval()(images).logits)
    with pytest.raises(CompatError, match="normalized_head: only the linear head"):
        build_model("mlp", feature_dim=9, head="simplex", num_classes=10, normalized_head=True)


# ---------------------------------------------------------------- BCT as the BT^2 authors run it


def test_bct_authors_baseline_by_hand():
    m = build_method("bct", alpha=10.0, synthesize="all", space="normalized", label_smoothing=0.1)
    m.prepare(n_old_classes=2, n_new_classes=2, old_model=_OldModel(2, 2), old_classes=[0, 1],
              old_train_features=OLD, train_labels=LABELS)
    # every row is the mean of the normalised old features of its class, not normalised again
    torch.testing.assert_close(m.old_weight, torch.tensor([[0.8, 0.4], [0.0, 1.0]]))
    assert m.synthesized == [0, 1]
    # new feature (5, 0) -> norm (1, 0) -> influence logits (0.8, 0); own logits as given
    features = torch.tensor([[5.0, 0.0]])
    logits = torch.tensor([[1.0, 3.0]])
    out = m.loss(features, logits, torch.tensor([0]))
    influence = _smoothed_ce([0.8, 0.0], 0, 0.1)
    own = _smoothed_ce([1.0, 3.0], 0, 0.1)
    assert out.parts["influence"] == pytest.approx(influence, rel=1e-6)
    assert float(out.total) == pytest.approx(own + 10.0 * influence, rel=1e-6)


def test_bct_default_stays_ours_and_the_first_version_is_plain_cross_entropy():
    ours = BCT()
    ours.prepare(n_old_classes=2, n_new_classes=2, old_model=_OldModel(2, 2), old_classes=[0, 1],
                 old_train_features=OLD, train_labels=LABELS)
    assert ours.synthesized == []  # every class known to the old model: its learnt rows stay
    first = BCT(label_smoothing=0.1)
    logits = torch.tensor([[1.0, 3.0]])
    assert float(first.loss(torch.ones(1, 2), logits, torch.tensor([0])).total) == pytest.approx(
        _smoothed_ce([1.0, 3.0], 0, 0.0), rel=1e-6)
    for bad, message in (({"space": "cosine"}, "bct space"), ({"label_smoothing": 1.0}, "label_smoothing")):
        with pytest.raises(CompatError, match=message):
            build_method("bct", **bad)


def test_bt2_default_is_the_authors_recipe_form():
    # The defaults the BT^2 authors publish: C = 2, prototypes from normalised features.
    assert BT2().prototype_kind.value == "mean_of_normalized"
    assert BasisTransform(4, 2, 1).scale == 2.0
