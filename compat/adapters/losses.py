"""Losses of the adapter training (docs/methods.md, "lambda-orthogonality adapters").

``L_B = ||B(h^t) - h^k||^2``, ``L_F = ||F(h^k) - B(h^t)||^2``, the supervised contrastive term
``L_C = contr(F(h^k), B(h^t)) + contr(F(h^k), h^k)`` and the lambda-orthogonality regulariser
``L_lambda = sigmoid(alpha * (||W W^T - I||_F - lambda)) * ||W W^T - I||_F``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from compat.adapters.config import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

__all__ = [
    "lambda_orthogonality",
    "orthogonality_gap",
    "squared_distance",
    "supervised_contrastive",
]

def orthogonality_gap(weight: Tensor) -> Tensor:
    """``||W W^T - I||_F`` of a (d_out, d_in) matrix; () tensor."""
    gram = weight @ weight.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - eye)


def lambda_orthogonality(weight: Tensor, lam: float, *, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """The lambda-orthogonality regulariser of a (d, d) weight.

    ``sigmoid(alpha * (g - lam)) * g`` with ``g = ||W W^T - I||_F``: about ``g`` outside the radius
    ``lam`` around the orthogonal matrices, about 0 inside. ``lam = 0`` is soft orthogonality
    (``g * sigmoid(alpha * g)``, 0 at an orthogonal W); ``lam = inf`` switches it off.

    Args:
        weight: (d, d) matrix.
        lam: radius lambda >= 0 (a distance, not a weight); ``math.inf`` for none.
        alpha: steepness of the switch (:data:`DEFAULT_ALPHA`).

    Returns:
        () tensor.
    """
    gap = orthogonality_gap(weight)
    if math.isinf(lam):
        return gap * 0.0
    return torch.sigmoid(alpha * (gap - lam)) * gap


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean over rows of ``||a_i - b_i||^2``; (N, D), (N, D) -> ()."""
    return (a - b).pow(2).sum(dim=1).mean()


def supervised_contrastive(
    anchors: Tensor, keys: Tensor, labels: Tensor, *, temperature: float = DEFAULT_TEMPERATURE
) -> Tensor:
    """Supervised contrastive loss between two views of a batch.

    Anchor i is scored against every key j by cosine similarity over ``temperature``; the keys
    with the anchor's label (its own key included) are its positives:
    ``mean_i [ -mean_{p : y_p = y_i} log softmax_j(s_ij)[p] ]``.

    Args:
        anchors: (N, D). keys: (N, D). labels: (N,).
        temperature: tau.

    Returns:
        () tensor.
    """
    logits = F.normalize(anchors, dim=1) @ F.normalize(keys, dim=1).T / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]).to(log_prob.dtype)
    return -((log_prob * positive).sum(dim=1) / positive.sum(dim=1)).mean()
