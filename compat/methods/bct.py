"""BCT (Shen et al., CVPR 2020): the influence loss, and the L2 feature-regression baseline.

``L = CE(W_new h_new, y) + alpha * CE(W_old h_new, y)`` with ``W_old`` the old model's classifier,
frozen. Rows for classes the old model never saw are synthesised as the class means of the old
model's features over the new training data (only those rows; the old rows stay). When the new
feature is longer than the old one, its first D_old coordinates meet the old classifier; when it
is shorter, it is zero-padded (docs/methods.md, "BCT"). The version's extracted features then record
``compatible_dim`` so the evaluator compares the same coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from compat.errors import CompatError
from compat.methods.base import Method, MethodLoss

__all__ = ["BCT", "L2Regression", "class_means", "influence_loss", "match_dim", "synthesize_classifier"]


def match_dim(features: Tensor, dim: int) -> Tensor:
    """(N, D) -> (N, dim): the first ``dim`` coordinates when D > dim, zero-padded when D < dim."""
    d = features.shape[1]
    if d >= dim:
        return features[:, :dim]
    return F.pad(features, (0, dim - d))


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(N, D), (N,) -> (num_classes, D) per-class mean; a class without samples gets a zero row."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(sums)
    return (sums / counts[:, None]).to(features.dtype)


def synthesize_classifier(
    old_weight: Tensor, means: Tensor, replace: list[int], *, normalize: bool = False
) -> Tensor:
    """The old classifier with the rows of ``replace`` set to the class means.

    Args:
        old_weight: (C_old, D) rows of the old classifier (C_old may be below the number of classes:
            missing rows start at zero).
        means: (C, D) class means of old features over the new training data.
        replace: the classes whose rows are synthesised (those the old model never saw, or all).
        normalize: scale each synthesised row to the mean norm of the rows kept (unit norm when
            every row is synthesised), so synthesised and learnt logits are on one scale.

    Returns:
        (C, D) classifier rows.
    """
    num_classes, dim = means.shape
    weight = torch.zeros(num_classes, dim, dtype=means.dtype, device=means.device)
    keep = min(num_classes, old_weight.shape[0])
    weight[:keep] = old_weight[:keep].to(weight)
    rows = torch.as_tensor(sorted(replace), dtype=torch.long, device=means.device)
    if len(rows) == 0:
        return weight
    new_rows = means[rows]
    if normalize:
        kept = torch.ones(num_classes, dtype=torch.bool, device=means.device)
        kept[rows] = False
        kept[keep:] = False
        scale = weight[kept].norm(dim=1).mean() if bool(kept.any()) else torch.ones((), dtype=weight.dtype)
        new_rows = F.normalize(new_rows, dim=1) * scale
    weight[rows] = new_rows
    return weight


def influence_loss(features: Tensor, labels: Tensor, old_weight: Tensor, old_bias: Tensor | None = None) -> Tensor:
    """``CE(W_old match_dim(h_new), y)``: the new features scored by the frozen old classifier."""
    logits = F.linear(match_dim(features, old_weight.shape[1]), old_weight.to(features.dtype),
                      None if old_bias is None else old_bias.to(features.dtype))
    return F.cross_entropy(logits, labels)


class BCT(Method):
    """Cross-entropy on a new learnable head plus alpha times the influence loss.

    Args:
        alpha: weight of the influence loss (1 in the BCT paper, 10 in the BT^2 authors' baseline).
        synthesize: ``"unseen"`` (class-mean rows only for classes the old model never saw) or
            ``"all"`` (class-mean rows for every class, as the BT^2 authors' baseline does).
        normalize: rescale synthesised rows (see :func:`synthesize_classifier`).
    """

    head = "linear"
    needs_old_model = True
    old_features = "cached"  # for the class means of the synthesised rows

    def __init__(self, *, alpha: float = 1.0, synthesize: str = "unseen", normalize: bool = False):
        super().__init__()
        if synthesize not in ("unseen", "all"):
            raise CompatError(f"bct synthesize: unknown value {synthesize!r}; expected unseen or all")
        if alpha < 0:
            raise CompatError(f"bct alpha: expected a value >= 0, got {alpha}")
        self.alpha, self.synthesize, self.normalize = float(alpha), synthesize, bool(normalize)
        self.old_weight: Tensor | None = None
        self.old_bias: Tensor | None = None
        self.synthesized: list[int] = []

    def prepare(self, *, n_old_classes, n_new_classes, old_model, old_classes=None, old_train_features=None,
                train_labels=None) -> None:
        self.old_weight = self.old_bias = None
        self.synthesized = []
        if old_model is None:
            return
        old_head = old_model.head
        weight = getattr(old_head, "weight", None)
        if not isinstance(weight, Tensor):
            raise CompatError("bct: the old model's head exposes no classifier weight")
        if old_train_features is None or train_labels is None:
            raise CompatError("bct: the old model's features of the training data are needed for the class means")
        num_classes = max(int(train_labels.max()) + 1, weight.shape[0])
        means = class_means(old_train_features, train_labels.to(old_train_features.device), num_classes)
        present = set(torch.unique(train_labels).tolist())
        if self.synthesize == "all":
            replace = sorted(present)
        else:
            seen = set(range(weight.shape[0]) if old_classes is None else old_classes)
            replace = sorted(present - seen)
        self.synthesized = replace
        self.old_weight = synthesize_classifier(weight.detach().to(means), means, replace, normalize=self.normalize)
        bias = getattr(old_head, "bias", None)
        if isinstance(bias, Tensor):
            b = torch.zeros(num_classes, dtype=means.dtype, device=means.device)
            b[: bias.shape[0]] = bias.detach().to(means)
            b[torch.as_tensor(replace, dtype=torch.long, device=b.device)] = 0.0
            self.old_bias = b

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None,
             teacher_features=None, head_features=None) -> MethodLoss:
        ce = F.cross_entropy(logits, labels)
        if self.old_weight is None:  # the first version: no old classifier
            return MethodLoss(ce, {"ce": float(ce.detach())})
        weight = self.old_weight.to(features.device)
        bias = None if self.old_bias is None else self.old_bias.to(features.device)
        influence = influence_loss(features, labels, weight, bias)
        total = ce + self.alpha * influence
        return MethodLoss(total, {"ce": float(ce.detach()), "influence": float(influence.detach())})


class L2Regression(Method):
    """Cross-entropy plus ``weight * ||match_dim(h_new) - h_old||^2`` (mean over the batch).

    The naive baseline: pulling each new feature onto its old one. A negative control next to BCT.

    Args:
        weight: weight of the regression term.
    """

    head = "linear"
    needs_old_model = True
    old_features = "cached"

    def __init__(self, *, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def loss(self, features: Tensor, logits: Tensor, labels: Tensor, *, old_features=None, from_memory=None,
             teacher_features=None, head_features=None) -> MethodLoss:
        ce = F.cross_entropy(logits, labels)
        if old_features is None:
            return MethodLoss(ce, {"ce": float(ce.detach())})
        l2 = (match_dim(features, old_features.shape[1]) - old_features).pow(2).sum(dim=1).mean()
        return MethodLoss(ce + self.weight * l2, {"ce": float(ce.detach()), "l2": float(l2.detach())})
