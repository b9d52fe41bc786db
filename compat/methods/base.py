"""What every training method declares.

A method is a small object: which head the new model uses, whether it needs the frozen previous
model, and a ``loss`` that takes the new model's output, the labels and (when needed) the old
model's features of the same batch. Nothing else: the trainer owns data, optimiser and schedule.
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
        needs_old_model: whether :meth:`loss` needs the frozen previous model's features.
    """

    head: str = "linear"
    needs_old_model: bool = False

    def loss(
        self,
        features: Tensor,
        logits: Tensor,
        labels: Tensor,
        *,
        old_features: Tensor | None = None,
        from_memory: Tensor | None = None,
    ) -> MethodLoss:
        """Args:
        features: (N, D) new features (unnormalised).
        logits: (N, C) new logits.
        labels: (N,) int64.
        old_features: (N, D_old) features of the frozen previous model, when ``needs_old_model``.
        from_memory: (N,) bool, True for rehearsal-memory samples.
        """
        raise NotImplementedError

    def prepare(self, *, n_old_classes: int, n_new_classes: int, old_model: nn.Module | None) -> None:
        """Called once per version before training, with what the method may need to know."""
