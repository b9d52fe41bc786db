"""d-Simplex-HOC ("Stationary Representations", CVPR 2024).

``L = lambda * CE + (1 - lambda) * L_HOC`` with the old model frozen and

    s_ij  = mu * <norm(h_i^old), norm(h_j^new)>
    L_HOC = mean_i [ -s_ii + log( exp(s_ii) + sum_{j: y_j != y_i} exp(s_ij) ) ]

Each sample's old feature is the positive of its new feature, samples of other classes are the
negatives, other samples of the same class are left out (the masked form). The authors' code instead
multiplies the same-class off-diagonal logits by 0, so each adds exp(0) = 1 to the denominator:
``variant="authors"`` reproduces that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compat.errors import CompatError
from compat.methods.base import Method, MethodLoss

__all__ = ["HOC", "HOCLoss"]


class HOCLoss(nn.Module):
    """Higher-order compatibility loss between old and new features of one batch.

    Args:
        mu: scale of the cosine similarities (10 in the paper).
        variant: ``"masked"`` (the paper's equation) or ``"authors"`` (same-class off-diagonal
            logits set to 0 instead of removed).
    """

    def __init__(self, *, mu: float = 10.0, variant: str = "masked"):
        super().__init__()
        if variant not in ("masked", "authors"):
            raise CompatError(f"hoc variant: unknown value {variant!r}; expected masked or authors")
        self.mu, self.variant = mu, variant

    def forward(self, old_features: Tensor, new_features: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N, D), (N,) -> scalar. Rows i are anchors (old), columns j candidates (new)."""
        s = self.mu * F.normalize(old_features, dim=1) @ F.normalize(new_features, dim=1).T
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        off_same = same & ~eye
        if self.variant == "masked":
            s = s.masked_fill(off_same, -math.inf)
        else:
            s = s.masked_fill(off_same, 0.0)
        return (torch.logsumexp(s, dim=1) - s.diagonal()).mean()


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

    def __init__(self, *, lam: float = 0.1, mu: float = 10.0, variant: str = "masked"):
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
