"""The baseline: a fresh model with a learnable classifier and no compatibility constraint."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from compat.methods.base import Method, MethodLoss

__all__ = ["Independent"]


class Independent(Method):
    """Cross-entropy on a learnable linear head. The negative control of every recipe."""

    head = "linear"
    needs_old_model = False

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None,
             teacher_features=None, head_features=None):
        ce = F.cross_entropy(logits, labels)
        return MethodLoss(ce, {"ce": float(ce.detach())})
