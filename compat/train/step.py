"""One optimisation step, with AMP scaling and gradient clipping done in the right order."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["backward_step"]


def backward_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    clip: float | None = None,
    parameters=None,
) -> None:
    """Backward, (unscale), clip, step and zero the gradients, exactly once per call.

    Args:
        loss: the scalar to minimise.
        optimizer: the optimiser to step.
        scaler: a GradScaler under AMP (CUDA), else None.
        clip: max global gradient norm, or None.
        parameters: the parameters to clip (default: every parameter of the optimiser).
    """
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parameters or _params(optimizer), clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters or _params(optimizer), clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]
