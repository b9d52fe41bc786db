"""BCT (Shen et al., CVPR 2020): the influence loss, and the L2 feature-regression baseline.

``L = CE(W_new h_new, y) + alpha * CE(W_old h_new, y)`` with ``W_old`` the old model's classifier,
frozen. Rows for classes the old model never saw are synthesised as the class means of the old
model's features over the new training data (only those rows; the old rows stay). When the new
feature is longer than the old one, its first D_old coordinates meet the old classifier; when it
is shorter, it is zero-padded (docs/methods.md, "BCT"). The version's extracted features then record
``compatible_dim`` so the evaluator compares the same coordinates.

The BT^2 authors run BCT differently (``synthesize="all", space="normalized", label_smoothing=0.1``):
every row is the class mean of the old model's L2-normalised features (not normalised again), the
influence logits come from the L2-normalised new feature, and both cross-entropies are smoothed.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.methods.base import Method, MethodLoss

__all__ = [
    "BCT",
    "FeatureSpace",
    "L2Regression",
    "Synthesize",
    "class_means",
    "influence_loss",
    "match_dim",
    "synthesize_classifier",
]


class Synthesize(str, Enum):
    """Which rows of the old classifier BCT replaces by class means of old features."""

    UNSEEN = "unseen"  # only classes the old model never saw (the BCT paper)
    ALL = "all"  # every class in the new data (the BT^2 authors' baseline)


class FeatureSpace(str, Enum):
    """Where BCT's class means and influence logits live."""

    RAW = "raw"  # means of the raw old features; logits from the raw new feature
    NORMALIZED = "normalized"  # means of L2-normalised old features (as is); logits from norm(h_new)


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


def influence_loss(features: Tensor, labels: Tensor, old_weight: Tensor, old_bias: Tensor | None = None, *,
                   normalize: bool = False, label_smoothing: float = 0.0) -> Tensor:
    """``CE(W_old match_dim(h_new), y)``: the new features scored by the frozen old classifier.

    Args:
        normalize: score ``norm(match_dim(h_new))`` (the BT^2 authors' baseline).
        label_smoothing: of the cross-entropy, in [0, 1).
    """
    matched = match_dim(features, old_weight.shape[1])
    if normalize:
        matched = F.normalize(matched, dim=1)
    logits = F.linear(matched, old_weight.to(features.dtype), None if old_bias is None else old_bias.to(features.dtype))
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


class BCT(Method):
    """Cross-entropy on a new learnable head plus alpha times the influence loss.

    Args:
        alpha: weight of the influence loss (1 in the BCT paper, 10 in the BT^2 authors' baseline).
        synthesize: ``"unseen"`` (class-mean rows only for classes the old model never saw) or
            ``"all"`` (class-mean rows for every class, as the BT^2 authors' baseline does).
        normalize: rescale synthesised rows (see :func:`synthesize_classifier`).
        space: ``"raw"`` or ``"normalized"`` (class means of L2-normalised old features, influence
            logits from the L2-normalised new feature: the BT^2 authors' baseline).
        label_smoothing: of both cross-entropies once there is an old model (0.1 in the BT^2
            authors' baseline); the first version trains with plain cross-entropy, as every method.
    """

    head = "linear"
    needs_old_model = True
    old_features = "cached"  # for the class means of the synthesised rows

    def __init__(self, *, alpha: float = 1.0, synthesize: str = Synthesize.UNSEEN.value, normalize: bool = False,
                 space: str = FeatureSpace.RAW.value, label_smoothing: float = 0.0):
        super().__init__()
        if alpha < 0:
            raise CompatError(f"bct alpha: expected a value >= 0, got {alpha}")
        if not 0.0 <= label_smoothing < 1.0:
            raise CompatError(f"bct label_smoothing: expected a value in [0, 1), got {label_smoothing}")
        self.alpha, self.normalize = float(alpha), bool(normalize)
        self.synthesize = parse_choice(Synthesize, synthesize, "bct synthesize")
        self.space = parse_choice(FeatureSpace, space, "bct space")
        self.label_smoothing = float(label_smoothing)
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
        old_train = F.normalize(old_train_features, dim=1) if self.space is FeatureSpace.NORMALIZED else old_train_features
        means = class_means(old_train, train_labels.to(old_train_features.device), num_classes)
        present = set(torch.unique(train_labels).tolist())
        if self.synthesize is Synthesize.ALL:
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
        if self.old_weight is None:  # the first version: no old classifier, plain cross-entropy
            ce = F.cross_entropy(logits, labels)
            return MethodLoss(ce, {"ce": float(ce.detach())})
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        weight = self.old_weight.to(features.device)
        bias = None if self.old_bias is None else self.old_bias.to(features.device)
        influence = influence_loss(features, labels, weight, bias, normalize=self.space is FeatureSpace.NORMALIZED,
                                   label_smoothing=self.label_smoothing)
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
