"""What a training checkpoint adds to a model file: the seeds and the RNG states that make a resume exact.

Checkpoint files are written and read by :mod:`compat.models.io` (atomic writes, ``weights_only`` loads).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values (weights_only-safe)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_plain_to_numpy_state(state["numpy"]))
    random.setstate(_plain_to_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(st: tuple) -> dict[str, Any]:
    return {"keys": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]), "has_gauss": int(st[3]),
            "cached": float(st[4])}


def _plain_to_numpy_state(d: dict[str, Any]) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _python_state_to_plain(st: tuple) -> dict[str, Any]:
    return {"version": st[0], "state": torch.tensor(st[1], dtype=torch.int64), "gauss": st[2]}


def _plain_to_python_state(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(x) for x in d["state"].tolist()), d["gauss"])
