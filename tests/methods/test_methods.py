"""Training losses against hand-computed cases, and a contract every method must meet."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compat.errors import CompatError
from compat.methods import HOCLoss, build_method, cosine_distillation, distillation_weight, list_methods
from compat.models import LinearHead

E = math.e


def _hoc_case():
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    new = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 0.5]])  # norms differ: the loss normalises
    labels = torch.tensor([0, 0, 1])
    return old, new, labels


def test_hoc_masked_form_by_hand():
    # s = old @ norm(new).T = [[1,1,0],[0,0,1],[1,1,0]]; same-class off-diagonal pairs: (0,1), (1,0).
    want = ((math.log(E + 1) - 1) + math.log(1 + E) + math.log(2 * E + 1)) / 3
    assert float(HOCLoss(mu=1.0)(*_hoc_case())) == pytest.approx(want, rel=1e-6)


def test_hoc_authors_variant_by_hand():
    # -s_ii + log(n_same + sum over other classes of exp(s_ij)), n_same counting i itself:
    # row 0: s_00 = 1, n_same = 2, other class s_02 = 0; row 1: s_11 = 0, n_same = 2, s_12 = 1;
    # row 2: s_22 = 0, n_same = 1, s_20 = s_21 = 1.
    want = ((math.log(2 + 1) - 1) + math.log(2 + E) + math.log(1 + 2 * E)) / 3
    assert float(HOCLoss(mu=1.0, variant="authors")(*_hoc_case())) == pytest.approx(want, rel=1e-6)


def test_hoc_authors_variant_against_a_slow_loop_and_its_unsaturated_pull():
    g = torch.Generator().manual_seed(2)
    old, new = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    labels = torch.randint(0, 3, (10,), generator=g)
    mu, total = 10.0, 0.0
    for i in range(10):
        s = [mu * float(F.cosine_similarity(old[i], new[j], dim=0)) for j in range(10)]
        n_same = sum(1 for j in range(10) if labels[j] == labels[i])
        total += -s[i] + math.log(n_same + sum(math.exp(s[j]) for j in range(10) if labels[j] != labels[i]))
    assert float(HOCLoss(mu=mu, variant="authors")(old, new, labels)) == pytest.approx(total / 10, rel=1e-5)
    # Two classes, new features already on their positives (s_ii = mu, s_ij = 0): the masked loss
    # has saturated at log(1 + exp(-mu)), the authors' is -mu + log 2 and still falls with s_ii.
    aligned = torch.eye(2)
    for mu in (5.0, 10.0):
        masked = float(HOCLoss(mu=mu)(aligned, aligned, torch.tensor([0, 1])))
        authors = float(HOCLoss(mu=mu, variant="authors")(aligned, aligned, torch.tensor([0, 1])))
        assert masked == pytest.approx(math.log1p(math.exp(-mu)), abs=1e-6)  # float32 rounding
        assert authors == pytest.approx(-mu + math.log(2), rel=1e-6)


def test_hoc_against_a_slow_loop():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    labels = torch.randint(0, 4, (12,), generator=g)
    mu = 10.0
    total = 0.0
    for i in range(12):
        s = [mu * float(F.cosine_similarity(old[i], new[j], dim=0)) for j in range(12)]
        denom = sum(math.exp(s[j]) for j in range(12) if j == i or labels[j] != labels[i])
        total += -s[i] + math.log(denom)
    assert float(HOCLoss(mu=mu)(old, new, labels)) == pytest.approx(total / 12, rel=1e-5)


def test_hoc_method_mixes_ce_and_hoc_with_lambda():
    old, new, labels = _hoc_case()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    m = build_method("hoc", lam=0.25, mu=1.0)
    out = m.loss(new, logits, labels, old_features=old)
    ce = F.cross_entropy(logits, labels)
    want = 0.25 * ce + 0.75 * HOCLoss(mu=1.0)(old, new, labels)
    assert float(out.total) == pytest.approx(float(want))
    assert set(out.parts) == {"ce", "hoc"}
    # Without an old model (the first version) it is plain cross-entropy.
    assert float(m.loss(new, logits, labels).total) == pytest.approx(float(ce))


def test_cl2r_weight_and_distillation_on_memory_only():
    assert distillation_weight(3, 4) == pytest.approx(5 * math.sqrt(3 / 4))
    assert distillation_weight(10, 0) == 0.0
    new = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    old = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, -1.0]])
    assert float(cosine_distillation(new, old)) == pytest.approx((0 + 1 + 2) / 3)
    m = build_method("cl2r", w0=5.0)
    m.prepare(n_old_classes=4, n_new_classes=3, old_model=torch.nn.Identity())
    logits = torch.zeros(3, 10)
    labels = torch.tensor([0, 1, 2])
    memory = torch.tensor([False, True, True])
    out = m.loss(new, logits, labels, old_features=old, from_memory=memory)
    want = math.log(10) + 5 * math.sqrt(3 / 4) * ((1 + 2) / 2)
    assert float(out.total) == pytest.approx(want, rel=1e-6)
    # No memory sample in the batch: no distillation.
    out = m.loss(new, logits, labels, old_features=old, from_memory=torch.zeros(3, dtype=torch.bool))
    assert float(out.total) == pytest.approx(math.log(10))


def test_unknown_method_and_option_are_errors():
    with pytest.raises(CompatError, match="did you mean 'hoc'"):
        build_method("hocc")
    with pytest.raises(CompatError, match="lamda"):
        build_method("hoc", lamda=0.1)
    with pytest.raises(CompatError, match="variant"):
        build_method("hoc", variant="other")


class _OldModel(torch.nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = LinearHead(dim, num_classes)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_gives_finite_gradients(name):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(8, 6, generator=g, requires_grad=True)
    head_features = torch.randn(8, 5, generator=g, requires_grad=True)
    logits = torch.randn(8, 7, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (8,), generator=g)
    m = build_method(name)
    old_dim = 4 if m.old_features == "cached" else 6  # cached-feature methods also meet a shorter old feature
    old = torch.randn(8, old_dim, generator=g)
    m.prepare(n_old_classes=3, n_new_classes=4, old_model=_OldModel(old_dim, 7) if m.needs_old_model else None,
              old_classes=[0, 1, 2], old_train_features=old, train_labels=labels)
    out = m.loss(features, logits, labels, old_features=old if m.needs_old_model else None,
                 from_memory=torch.arange(8) % 2 == 0, teacher_features=torch.randn(8, 5, generator=g),
                 head_features=head_features)
    out.total.backward()
    assert torch.isfinite(out.total)
    assert torch.isfinite(logits.grad).all()
    if m.needs_old_model:  # methods with a feature term must send gradients into the features
        assert features.grad is not None and torch.isfinite(features.grad).all()
    if m.needs_teacher:
        assert head_features.grad is not None and torch.isfinite(head_features.grad).all()
    assert m.head in ("simplex", "linear")


def test_hoc_is_zero_gradient_free_of_old_model():
    # The old model is frozen: the loss never asks for gradients through the old features.
    old, new, labels = _hoc_case()
    old.requires_grad_(False)
    new.requires_grad_(True)
    HOCLoss()(old, new, labels).backward()
    assert old.grad is None and new.grad is not None
