"""CoReS: cross-entropy against the fixed d-Simplex classifier; no old model in the loop.

Every version is trained from scratch against the same simplex (same label -> vertex map), so the
feature space stays stationary across versions (METHODS.md section 3).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from compat.methods.base import Method, MethodLoss

__all__ = ["CoReS"]


class CoReS(Method):
    head = "simplex"
    needs_old_model = False

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None):
        ce = F.cross_entropy(logits, labels)
        return MethodLoss(ce, {"ce": float(ce.detach())})
