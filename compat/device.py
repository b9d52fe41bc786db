"""Which device a computation runs on."""

from __future__ import annotations

from compat.errors import CompatError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu`` and ``cuda[:N]`` are checked.

    Raises:
        CompatError: an unknown device, or CUDA asked for without a visible GPU.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CompatError(f"device: {device!r} was asked for but no CUDA device is available")
        return device
    raise CompatError(f"device: unknown value {device!r}; expected auto, cpu or cuda[:N]")
