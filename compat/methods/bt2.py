"""BT^2: backward-compatible training with a basis transformation (ICCV 2023).

The new model is a :class:`~compat.models.BasisTransformModel`: its feature has the old model's D
coordinates plus A extra ones, through exactly orthonormal maps. With ``h_bct`` the first D
coordinates, ``f`` the classified feature, ``P`` the per-class prototypes of the old features and
``h_teacher`` the feature of an independently trained new model:

    L = CE(logits, y) + l2 * CE(norm(h_bct) P^T, y) + l3 * (1 - cos(h_bct, h_old)) + l1 * (1 - cos(f, h_teacher))

with l1 = 1, l2 = 10, l3 = 5 (docs/methods.md, "BT^2"). The authors' prototypes are the class means
of the L2-normalised old features, not normalised again (rows shorter than 1 where a class spreads);
``prototypes="normalized_mean"`` normalises the mean of the raw features instead. Old and teacher
features are cached once per version by the trainer.
"""

from __future__ import annotations

from enum import Enum

import torch.nn.functional as F
from torch import Tensor

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.methods.base import Method, MethodLoss
from compat.methods.bct import class_means

__all__ = ["BT2", "Prototypes", "bt2_loss", "bt2_prototypes"]


class Prototypes(str, Enum):
    """How BT^2 builds the rows of its class-mean classifier from the old model's features."""

    MEAN_OF_NORMALIZED = "mean_of_normalized"  # the authors': mean of L2-normalised features, as is
    NORMALIZED_MEAN = "normalized_mean"  # the L2-normalised mean of the raw features


def bt2_prototypes(old_features: Tensor, labels: Tensor, num_classes: int,
                   kind: Prototypes | str = Prototypes.MEAN_OF_NORMALIZED) -> Tensor:
    """(N, D) old features, (N,) labels -> (num_classes, D) prototype rows (zero for an absent class)."""
    kind = parse_choice(Prototypes, kind, "bt2 prototypes")
    if kind is Prototypes.MEAN_OF_NORMALIZED:
        return class_means(F.normalize(old_features, dim=1), labels, num_classes)
    return F.normalize(class_means(old_features, labels, num_classes), dim=1)


def bt2_loss(
    logits: Tensor,
    labels: Tensor,
    features: Tensor,
    head_features: Tensor,
    old_features: Tensor,
    teacher_features: Tensor,
    prototypes: Tensor,
    *,
    l1: float = 1.0,
    l2: float = 10.0,
    l3: float = 5.0,
) -> tuple[Tensor, dict[str, float]]:
    """The composite loss; returns the total and its parts.

    Args:
        logits: (N, C) head logits on ``head_features``.
        labels: (N,).
        features: (N, D + A) BT^2 features; the first D = ``old_features.shape[1]`` are ``h_bct``.
        head_features: (N, D') the classified feature ``f``.
        old_features: (N, D) the old model's features.
        teacher_features: (N, D') the teacher's features.
        prototypes: (C, D) class-mean rows of old features (:func:`bt2_prototypes`).
    """
    h_bct = features[:, : old_features.shape[1]]
    ce = F.cross_entropy(logits, labels)
    pseudo = F.cross_entropy(F.normalize(h_bct, dim=1) @ prototypes.to(h_bct).T, labels)
    to_old = (1.0 - F.cosine_similarity(h_bct, old_features, dim=1)).mean()
    to_teacher = (1.0 - F.cosine_similarity(head_features, teacher_features, dim=1)).mean()
    total = ce + l2 * pseudo + l3 * to_old + l1 * to_teacher
    return total, {"ce": float(ce.detach()), "prototype_ce": float(pseudo.detach()),
                   "old_cos": float(to_old.detach()), "teacher_cos": float(to_teacher.detach())}


class BT2(Method):
    """Args:
    l1: weight of the teacher term (1).
    l2: weight of the class-mean classifier term (10).
    l3: weight of the old-feature term (5).
    prototypes: ``mean_of_normalized`` (the authors') or ``normalized_mean``.
    """

    head = "linear"
    needs_old_model = True
    old_features = "cached"
    needs_teacher = True

    def __init__(self, *, l1: float = 1.0, l2: float = 10.0, l3: float = 5.0,
                 prototypes: str = Prototypes.MEAN_OF_NORMALIZED.value):
        super().__init__()
        self.l1, self.l2, self.l3 = float(l1), float(l2), float(l3)
        self.prototype_kind = parse_choice(Prototypes, prototypes, "bt2 prototypes")
        self.prototypes: Tensor | None = None

    def prepare(self, *, n_old_classes, n_new_classes, old_model, old_classes=None, old_train_features=None,
                train_labels=None) -> None:
        self.prototypes = None
        if old_model is None:
            return
        if old_train_features is None or train_labels is None:
            raise CompatError("bt2: the old model's features of the training data are needed for the class means")
        num_classes = int(train_labels.max()) + 1
        self.prototypes = bt2_prototypes(old_train_features, train_labels.to(old_train_features.device), num_classes,
                                         self.prototype_kind)

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None,
             teacher_features=None, head_features=None) -> MethodLoss:
        if old_features is None or self.prototypes is None:  # the first version: plain cross-entropy
            ce = F.cross_entropy(logits, labels)
            return MethodLoss(ce, {"ce": float(ce.detach())})
        if head_features is None or teacher_features is None:
            raise CompatError("bt2: the new model must be built with to_add_dim, and a teacher is needed")
        if features.shape[1] <= old_features.shape[1]:
            raise CompatError(f"bt2: the new feature ({features.shape[1]}-d) must be longer than the old one "
                              f"({old_features.shape[1]}-d): set the version's to_add_dim")
        total, parts = bt2_loss(logits, labels, features, head_features, old_features, teacher_features,
                                self.prototypes, l1=self.l1, l2=self.l2, l3=self.l3)
        return MethodLoss(total, parts)
