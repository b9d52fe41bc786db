"""d-Simplex-HOC ("Stationary Representations", CVPR 2024).

``L = lambda * CE + (1 - lambda) * L_HOC`` with the old model frozen and

    s_ij  = mu * <norm(h_i^old), norm(h_j^new)>
    L_HOC = mean_i [ -s_ii + log( exp(s_ii) + sum_{j: y_j != y_i} exp(s_ij) ) ]

Each sample's old feature is the positive of its new feature, samples of other classes are the
negatives, other samples of the same class are left out: the masked form, the paper's equation
(Eq. 4). The authors' published code multiplies every same-class similarity by 0, the positive's
own included, so each same-class sample adds exp(0) = 1 to the denominator and the positive leaves it:

    L_HOC = mean_i [ -s_ii + log( n_same(i) + sum_{j: y_j != y_i} exp(s_ij) ) ]

with n_same(i) the samples of the batch in i's class, i itself counted. Its pull on the positive
never saturates (the gradient with respect to s_ii is -1 whatever s_ii is). ``variant="authors"``
reproduces that.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.methods.base import Method, MethodLoss

__all__ = ["HOC", "HOCLoss", "HOCVariant"]


class HOCVariant(str, Enum):
    """Which form of the HOC loss: the paper's equation or the authors' published code."""

    MASKED = "masked"
    AUTHORS = "authors"


class HOCLoss(nn.Module):
    """Higher-order compatibility loss between old and new features of one batch.

    Args:
        mu: scale of the cosine similarities (10 in the paper).
        variant: ``"masked"`` (the paper's equation) or ``"authors"`` (the authors' code: every
            same-class logit, the positive's included, set to 0 inside the log-sum-exp).
    """

    def __init__(self, *, mu: float = 10.0, variant: str = HOCVariant.MASKED.value):
        super().__init__()
        self.mu, self.variant = mu, parse_choice(HOCVariant, variant, "hoc variant")

    def forward(self, old_features: Tensor, new_features: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N, D), (N,) -> scalar. Rows i are anchors (old), columns j candidates (new)."""
        s = self.mu * F.normalize(old_features, dim=1) @ F.normalize(new_features, dim=1).T
        same = labels[:, None] == labels[None, :]
        if self.variant is HOCVariant.MASKED:
            eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            denominator = s.masked_fill(same & ~eye, -math.inf)
        else:  # every same-class term, the positive's included, becomes exp(0) = 1
            denominator = s.masked_fill(same, 0.0)
        return (torch.logsumexp(denominator, dim=1) - s.diagonal()).mean()


class HOC(Method):
    """lambda * CE (d-Simplex) + (1 - lambda) * HOC against the frozen previous model.

    Args:
        lam: weight of the cross-entropy (0.1 in the paper).
        mu: similarity scale (10).
        variant: ``masked`` or ``authors``.
    """

    head = "simplex"
    needs_old_model = True
    old_features = "batch"
    init = "previous"

    def __init__(self, *, lam: float = 0.1, mu: float = 10.0, variant: str = HOCVariant.MASKED.value):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise CompatError(f"hoc lam: {lam} is not in [0, 1]")
        self.lam = lam
        self.hoc = HOCLoss(mu=mu, variant=variant)

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None,
             teacher_features=None, head_features=None):
        ce = F.cross_entropy(logits, labels)
        if old_features is None:  # the first version has no old model: cross-entropy alone
            return MethodLoss(ce, {"ce": float(ce.detach())})
        hoc = self.hoc(old_features, features, labels)
        total = self.lam * ce + (1.0 - self.lam) * hoc
        return MethodLoss(total, {"ce": float(ce.detach()), "hoc": float(hoc.detach())})
