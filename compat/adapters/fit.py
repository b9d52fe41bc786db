"""Train the adapters of one upgrade on cached features of the two frozen models.

Objective (docs/methods.md, "lambda-orthogonality adapters"), on L2-normalised features ``h^t`` (new, first ``d``
coordinates) and ``h^k`` (old; ``F`` sees all of it, the targets its first ``d`` coordinates)::

    w1 * ||F(h^k) - B(h^t)||^2 + w2 * ||B(h^t) - h^k||^2
      + w3 * [contr(F(h^k), B(h^t)) + contr(F(h^k), h^k)] + L_lambda(W)

Adam, mini-batches, everything seeded. The ``procrustes`` kind fixes ``B`` at the closed-form
orthogonal solution and trains only ``F``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from compat.adapters.adapter import Adapter, AdapterInfo, normalize_rows
from compat.adapters.config import AdapterConfig, BackwardKind, ForwardKind
from compat.adapters.losses import (
    orthogonality_gap,
    squared_distance,
    supervised_contrastive,
)
from compat.adapters.modules import (
    LambdaAdapter,
    LinearMap,
    PerpAdapter,
    build_forward,
    procrustes,
)
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.progress import progress as progress_bar

__all__ = ["AdapterConfig", "align_by_id", "fit_adapter"]

logger = logging.getLogger(__name__)


def align_by_id(new: FeatureSet, old: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the items both sets hold, matched by id (in the new set's order).

    Raises:
        CompatError: no shared id, or a shared item with two different labels.
    """
    common, i_new, i_old = np.intersect1d(new.ids, old.ids, assume_unique=True, return_indices=True)
    if len(common) == 0:
        raise CompatError(f"{new.source} and {old.source}: no item id in common; adapters are trained on "
                          "the same items embedded by both models")
    order = np.argsort(i_new, kind="stable")
    i_new, i_old = i_new[order], i_old[order]
    differ = np.flatnonzero(new.labels[i_new] != old.labels[i_old])
    if len(differ):
        k = differ[0]
        raise CompatError(f"{new.source} and {old.source}: item {new.ids[i_new[k]].item()!r} has label "
                          f"{new.labels[i_new[k]]} in one and {old.labels[i_old[k]]} in the other")
    dropped = new.n + old.n - 2 * len(common)
    if dropped:
        logger.warning("adapters: %d items are in only one of the two feature sets and are left out", dropped)
    return i_new, i_old


def _backward(cfg: AdapterConfig, x_new: np.ndarray, x_old: np.ndarray) -> nn.Module:
    d = x_new.shape[1]
    start = procrustes(x_new, x_old) if cfg.kind is BackwardKind.PROCRUSTES or cfg.init == "procrustes" else None
    if cfg.kind is BackwardKind.PROCRUSTES:
        return LinearMap(start)
    if cfg.kind is BackwardKind.PERP:
        return PerpAdapter(d, init=start)
    return LambdaAdapter(d, lam=cfg.lam, alpha=cfg.alpha, init=start)


def fit_adapter(
    new: FeatureSet,
    old: FeatureSet,
    cfg: AdapterConfig | None = None,
    *,
    new_version: str | None = None,
    old_version: str | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
) -> Adapter:
    """Train ``B`` (new -> old) and ``F`` (old -> the space of B(new)) on features of the same items.

    Args:
        new: features of the new model (N_new, d_new), e.g. of the training split.
        old: features of the old model (N_old, d_old); items are matched to ``new`` by id.
        cfg: training settings (defaults: :class:`AdapterConfig`).
        new_version, old_version: names stored with the adapter (default: each set's
            ``meta["version"]``).
        device: where to train.
        threads: CPU threads while training (restored afterwards); the default 1 because the
            matrices of one step are small (d x d, batch x batch) and several threads only
            contend. None keeps torch's setting.
        on_epoch: called with (epoch, mean losses) after each epoch.
        progress: a bar over the epochs on a terminal.

    Returns:
        The frozen adapter.
    """
    cfg = cfg or AdapterConfig()
    i_new, i_old = align_by_id(new, old)
    d = min(new.dim, old.dim)
    labels_np = new.labels[i_new]
    x_new_np = normalize_rows(new.features[i_new], d)
    x_old_full_np = normalize_rows(old.features[i_old])
    x_old_np = normalize_rows(old.features[i_old], d)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backward = _backward(cfg, x_new_np, x_old_np).to(device)
        forward = build_forward(cfg.forward, old.dim, d, hidden=cfg.hidden)
        forward = forward.to(device) if forward is not None else None
    x_new, x_old_full, x_old = (torch.from_numpy(a).to(device) for a in (x_new_np, x_old_full_np, x_old_np))
    labels = torch.from_numpy(labels_np).to(device)
    previous_threads = torch.get_num_threads()
    if threads is not None and not str(device).startswith("cuda"):
        torch.set_num_threads(threads)
    try:
        history = _train(cfg, backward, forward, (x_new, x_old_full, x_old, labels), device, on_epoch, progress)
    finally:
        torch.set_num_threads(previous_threads)
    with torch.no_grad():
        weight = backward.weight.detach().float().cpu()
        bias = getattr(backward, "bias", None)
        frozen_b = LinearMap(weight, None if bias is None else bias.detach().float().cpu())
        if forward is not None:
            forward = forward.cpu().requires_grad_(False)
        gap = float(orthogonality_gap(weight.double()))
    training = {**cfg.to_json(), "items": len(x_new), "final_losses": history[-1] if history else {},
                "orthogonality_gap": gap}
    info = AdapterInfo(
        kind=cfg.kind,
        forward=cfg.forward,
        new_dim=new.dim,
        old_dim=old.dim,
        new_version=new_version if new_version is not None else _version(new),
        old_version=old_version if old_version is not None else _version(old),
        lam=cfg.lam if cfg.kind is BackwardKind.LAMBDA else None,
        alpha=cfg.alpha if cfg.kind is BackwardKind.LAMBDA else None,
        hidden=cfg.hidden if cfg.forward is ForwardKind.MLP else None,
        training=training,
    )
    return Adapter(info, frozen_b, forward)


def _train(
    cfg: AdapterConfig,
    backward: nn.Module,
    forward: nn.Module | None,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    device: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Adam over seeded mini-batches; returns the mean loss terms of every epoch."""
    params = [p for m in (backward, forward) if m is not None for p in m.parameters()]
    if not params:  # procrustes without a forward adapter: nothing to train
        return []
    x_new, x_old_full, x_old, labels = data
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in progress_bar(range(cfg.epochs), desc=f"adapter {cfg.kind.value}", enabled=progress):
        sums: dict[str, float] = {}
        order = torch.randperm(len(x_new), generator=generator).to(device)
        batches = 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            parts = _losses(cfg, backward, forward, x_new[idx], x_old_full[idx], x_old[idx], labels[idx])
            loss = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            batches += 1
        means = {k: v / batches for k, v in sums.items()}
        history.append(means)
        logger.info("adapter epoch %d: %s", epoch, means)
        if on_epoch is not None:
            on_epoch(epoch, means)
    return history


def _version(fs: FeatureSet) -> str | None:
    v = fs.meta.get("version")
    return str(v) if v is not None else None


def _losses(
    cfg: AdapterConfig,
    backward: nn.Module,
    forward: nn.Module | None,
    h_new: Tensor,
    h_old_full: Tensor,
    h_old: Tensor,
    labels: Tensor,
) -> dict[str, Tensor]:
    """The weighted loss terms of one batch (their sum is the objective)."""
    b = backward(h_new)
    parts = {"backward": cfg.w_backward * squared_distance(b, h_old)}
    if cfg.kind is BackwardKind.LAMBDA:
        parts["lambda"] = backward.regularizer()
    if forward is not None:
        f = forward(h_old_full)
        parts["forward"] = cfg.w_forward * squared_distance(f, b)
        parts["contrastive"] = cfg.w_contrastive * (
            supervised_contrastive(f, b, labels, temperature=cfg.temperature)
            + supervised_contrastive(f, h_old, labels, temperature=cfg.temperature)
        )
    return parts
