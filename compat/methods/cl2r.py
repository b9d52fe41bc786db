"""CL2R: compatible lifelong learning with rehearsal and cosine feature distillation.

Cross-entropy against the d-Simplex on batches that are half rehearsal memory, half new data, plus
``w * (1 - cos(h_new, h_old))`` on the memory samples, ``w = w0 * sqrt(n_new / n_old)`` where n_new
and n_old are the numbers of new and old classes of the current task (docs/methods.md, "CL2R").
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from compat.methods.base import Method, MethodLoss

__all__ = ["CL2R", "cosine_distillation", "distillation_weight"]


def distillation_weight(n_new_classes: int, n_old_classes: int, *, w0: float = 5.0) -> float:
    """``w0 * sqrt(n_new / n_old)``; 0 when there are no old classes (the first task)."""
    if n_old_classes <= 0:
        return 0.0
    return w0 * math.sqrt(n_new_classes / n_old_classes)


def cosine_distillation(new_features: Tensor, old_features: Tensor) -> Tensor:
    """mean of ``1 - cos(h_new, h_old)`` over rows; (N, D), (N, D) -> scalar."""
    return (1.0 - F.cosine_similarity(new_features, old_features, dim=1)).mean()


class CL2R(Method):
    """Args:
    w0: base weight of the distillation term (5 in the paper).
    """

    head = "simplex"
    needs_old_model = True
    old_features = "batch"
    init = "previous"

    def __init__(self, *, w0: float = 5.0):
        super().__init__()
        self.w0 = w0
        self.weight = 0.0

    def prepare(self, *, n_old_classes: int, n_new_classes: int, old_model=None, **_) -> None:
        self.weight = distillation_weight(n_new_classes, n_old_classes, w0=self.w0) if old_model is not None else 0.0

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None,
             teacher_features=None, head_features=None):
        ce = F.cross_entropy(logits, labels)
        parts = {"ce": float(ce.detach())}
        if old_features is None or self.weight == 0.0:
            return MethodLoss(ce, parts)
        mask = from_memory if from_memory is not None else None
        if mask is not None and not bool(mask.any()):
            return MethodLoss(ce, parts)
        new = features if mask is None else features[mask]
        old = old_features if mask is None else old_features[mask]
        kd = cosine_distillation(new, old)
        parts["kd"] = float(kd.detach())
        return MethodLoss(ce + self.weight * kd, parts)
