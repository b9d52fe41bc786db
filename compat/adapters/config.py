"""How adapters are trained: :class:`AdapterConfig` and the kinds of ``B`` and ``F``.

Kept free of torch so that the command line can read the defaults without loading it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum

from compat.choices import parse_choice
from compat.errors import CompatError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BACKFILL_POINTS",
    "DEFAULT_TEMPERATURE",
    "AdapterConfig",
    "BackwardKind",
    "ForwardKind",
    "Init",
    "Ordering",
]

# Steepness of the lambda switch, per unit of Frobenius distance (the paper does not state one).
# With 10 the penalty weight goes from 1% to 99% within +-0.46 of lambda: a sharp switch on the
# scale of the distances that matter (||I||_F = sqrt(d), 8 for d = 64), yet smooth enough to give a
# gradient just outside the radius.
DEFAULT_ALPHA = 10.0
# Of the supervised contrastive term.
DEFAULT_TEMPERATURE = 0.1
# Points of the backfill grid, beta from 0 to 1.
DEFAULT_BACKFILL_POINTS = 11


class BackwardKind(str, Enum):
    PERP = "perp"
    LAMBDA = "lambda"
    PROCRUSTES = "procrustes"


class ForwardKind(str, Enum):
    NONE = "none"
    AFFINE = "affine"
    MLP = "mlp"


class Ordering(str, Enum):
    """Which gallery items a partial backfill re-extracts first (:mod:`compat.adapters.backfill`)."""

    RANDOM = "random"
    FARTHEST = "farthest"
    UNCERTAINTY = "uncertainty"


class Init(str, Enum):
    PROCRUSTES = "procrustes"
    IDENTITY = "identity"


@dataclass(frozen=True)
class AdapterConfig:
    """How to train an adapter pair.

    Args:
        kind: backward kind: ``perp`` (exactly orthogonal), ``lambda`` (affine, regularised) or
            ``procrustes`` (closed form, not trained).
        lam: lambda radius for the ``lambda`` kind (0: soft orthogonality, the default; ``inf``:
            none). 0 was the best radius measured on Fashion-MNIST's validation split at d = 64
            and d = 128 (docs/methods.md, "Choosing lambda"); the paper's 12 was worse at both.
        alpha: steepness of the lambda switch.
        forward: forward adapter: ``mlp`` (default), ``affine`` or ``none``.
        hidden: hidden width of the MLP forward adapter.
        epochs, batch_size, lr: Adam over mini-batches of the cached features.
        w_forward, w_backward, w_contrastive: w1 (L_F), w2 (L_B), w3 (L_C).
        temperature: of the supervised contrastive term.
        init: starting ``B`` for ``perp`` and ``lambda``: ``procrustes`` (the closed-form
            orthogonal solution of ``L_B``; training then refines it jointly with ``F``) or
            ``identity``.
        seed: initialisation and batch order.
    """

    kind: BackwardKind = BackwardKind.PERP
    lam: float = 0.0
    alpha: float = DEFAULT_ALPHA
    forward: ForwardKind = ForwardKind.MLP
    hidden: int = 256
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    w_forward: float = 1.0
    w_backward: float = 1.0
    w_contrastive: float = 1.0
    temperature: float = DEFAULT_TEMPERATURE
    init: Init = Init.PROCRUSTES
    seed: int = 0

    def __post_init__(self) -> None:
        for name, enum_cls in (("kind", BackwardKind), ("forward", ForwardKind), ("init", Init)):
            object.__setattr__(self, name, parse_choice(enum_cls, getattr(self, name), f"adapter {name}"))
        if not self.lam >= 0:
            raise CompatError(f"adapter lambda: expected a radius >= 0 or inf, got {self.lam!r}")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0 or self.hidden < 1:
            raise CompatError("adapter training: epochs >= 1, batch_size >= 2, lr > 0 and hidden >= 1 are required")
        if not self.temperature > 0 or not self.alpha > 0:
            raise CompatError("adapter training: temperature and alpha must be > 0")
        if min(self.w_forward, self.w_backward, self.w_contrastive) < 0:
            raise CompatError("adapter training: the loss weights must be >= 0")

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(kind=self.kind.value, forward=self.forward.value, init=self.init.value,
                   lam="inf" if math.isinf(self.lam) else self.lam)
        return out


