"""Model files: save and load compat models and checkpoints, never unpickling code.

A *model file* (``model.pt``, written by :func:`save_model`) holds a state dict and the arguments of
:func:`compat.models.build_model` that rebuild the model. A *checkpoint* is any dict of tensors and
plain values (a training run's full state is one). Both are written atomically and read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.
Inference (the gate, the registry, ``compat extract``, adapters) and training use the same files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from compat._atomic import atomic_path
from compat.errors import CompatError
from compat.models.embedding import EmbeddingModel, build_model

__all__ = ["load_checkpoint", "load_model", "read_model_file", "save_checkpoint", "save_model"]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise CompatError(f"{p}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol: refused or loaded, never worth a warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, EOFError...)
        raise CompatError(f"{p}: not a loadable checkpoint ({_load_error(exc)})") from None


def _load_error(exc: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's multi-line advice
    (which suggests loading with ``weights_only=False``: never for a file from elsewhere)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        detail = detail.split(". Please use", 1)[0].rstrip(".")
        return f"weights-only loading refused it: {detail}; only tensors and plain containers are loaded"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def save_model(path: Path, model: EmbeddingModel, spec: dict[str, Any], *,
               compatible_dim: int | None = None) -> Path:
    """Final weights and the arguments of :func:`compat.models.build_model` that rebuild the model.

    Args:
        compatible_dim: the leading feature coordinates trained to meet an older model of another
            feature size (BT^2, BCT across sizes); recorded so that the features extracted from the
            file say so too (:func:`compat.models.extract_model_file`).

    A ``pretrained`` backbone file is not recorded: its weights are in the state dict already.
    """
    payload: dict[str, Any] = {"model": model.state_dict(), "spec": _without_pretrained(spec)}
    if compatible_dim is not None:
        payload["meta"] = {"compatible_dim": int(compatible_dim)}
    return save_checkpoint(path, payload)


def _without_pretrained(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = spec.get("backbone_kwargs")
    if not isinstance(kwargs, dict) or "pretrained" not in kwargs:
        return spec
    return {**spec, "backbone_kwargs": {k: v for k, v in kwargs.items() if k != "pretrained"}}


def load_model(path: str | Path, *, device: str = "cpu") -> EmbeddingModel:
    """Rebuild a model saved by :func:`save_model` (loaded with ``weights_only=True``)."""
    return read_model_file(path, device=device)[0]


def read_model_file(path: str | Path, *, device: str = "cpu") -> tuple[EmbeddingModel, dict[str, Any]]:
    """The model of a file written by :func:`save_model`, in eval mode, and what the file records of
    it: ``backbone`` and, when set, ``compatible_dim``."""
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state, dict) or "spec" not in state or "model" not in state:
        raise CompatError(f"{path}: not a compat model file (expected keys 'model' and 'spec')")
    if not isinstance(state["spec"], dict) or not isinstance(state["model"], dict):
        raise CompatError(f"{path}: 'spec' and 'model' must be mappings (model arguments, state dict)")
    try:
        # A model file never makes us read another file: a pretrained path in it is ignored.
        model = build_model(**_without_pretrained(state["spec"]))
    except TypeError as exc:
        raise CompatError(f"{path}: field 'spec' does not describe a compat model ({exc})") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompatError(f"{path}: field 'model': the weights do not fit the model in 'spec' ({first})") from None
    info = {"backbone": state["spec"].get("backbone")}
    compatible = state.get("meta", {}).get("compatible_dim") if isinstance(state.get("meta"), dict) else None
    if compatible is not None:
        if isinstance(compatible, bool) or not isinstance(compatible, int) or compatible < 1:
            raise CompatError(f"{path}: meta field compatible_dim: expected a positive integer, got {compatible!r}")
        info["compatible_dim"] = compatible
    return model.to(device).eval(), info
