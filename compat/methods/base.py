"""What every training method declares.

A method is a small object: which head the new model uses, what it needs from the frozen previous
model (its features of each batch, computed on the fly or cached once; its classifier) and from an
independently trained teacher, and a ``loss`` that takes the new model's output, the labels and
those features of the same batch. Nothing else: the trainer owns data, optimiser and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

__all__ = ["Method", "MethodLoss"]


@dataclass
class MethodLoss:
    """The total loss and its named parts (logged per epoch)."""

    total: Tensor
    parts: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base of the training methods.

    Attributes:
        head: ``"simplex"`` or ``"linear"``: the classifier the new model is built with.
        needs_old_model: whether the method needs the frozen previous model (in :meth:`prepare`,
            and for its features when ``old_features`` is not ``"none"``).
        old_features: how :meth:`loss` receives the old model's features of a batch: ``"batch"``
            (computed on the fly, on the augmented images), ``"cached"`` (computed once per version
            over the training images, without augmentation) or ``"none"``.
        needs_teacher: whether :meth:`loss` needs the features of an independently trained new
            model (cached once, like the old ones).
        init: where a new version starts when the recipe does not say: ``"scratch"`` or
            ``"previous"`` (the previous version's weights, when the architecture is the same).
    """

    head: str = "linear"
    needs_old_model: bool = False
    old_features: str = "none"
    needs_teacher: bool = False
    init: str = "scratch"

    def loss(
        self,
        features: Tensor,
        logits: Tensor,
        labels: Tensor,
        *,
        old_features: Tensor | None = None,
        from_memory: Tensor | None = None,
        teacher_features: Tensor | None = None,
        head_features: Tensor | None = None,
    ) -> MethodLoss:
        """Args:
        features: (N, D) new retrieval features (unnormalised).
        logits: (N, C) new logits.
        labels: (N,) int64.
        old_features: (N, D_old) features of the frozen previous model (None for the first version).
        from_memory: (N,) bool, True for rehearsal-memory samples.
        teacher_features: (N, D_t) features of the independently trained teacher, when ``needs_teacher``.
        head_features: what the head scored when it is not ``features`` (BT^2's f), else None.
        """
        raise NotImplementedError

    def prepare(
        self,
        *,
        n_old_classes: int,
        n_new_classes: int,
        old_model: nn.Module | None,
        old_classes: list[int] | None = None,
        old_train_features: Tensor | None = None,
        train_labels: Tensor | None = None,
    ) -> None:
        """Called once per version before training, with what the method may need to know.

        Args:
            n_old_classes: classes seen by earlier versions.
            n_new_classes: classes in this version's training data.
            old_model: the frozen previous model (None for the first version or when not needed).
            old_classes: the labels the previous version was trained on.
            old_train_features: (N, D_old) old features of this version's training images, when
                ``old_features == "cached"``.
            train_labels: (N,) labels of those images.
        """
