"""Model files: save and load compat models and checkpoints, never unpickling code.

A *model file* (``model.pt``, written by :func:`save_model`) holds a state dict and the arguments of
:func:`compat.models.build_model` that rebuild the model. A *checkpoint* is any dict of tensors and
plain values (a training run's full state is one). Both are written atomically and read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.
Inference (the gate, the registry, ``compat extract``, adapters) and training use the same files.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from compat._atomic import atomic_path
from compat._files import input_file
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
    p = input_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol: refused or loaded, never worth a warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(p, map_location=map_location, weights_only=True)
    except MemoryError:
        raise CompatError(f"{p}: not a loadable checkpoint (it does not fit in memory)") from None
    except Exception as exc:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, EOFError...)
        raise CompatError(f"{p}: not a loadable checkpoint ({_load_error(exc)})") from None


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def _load_error(exc: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's multi-line advice
    (which suggests loading with ``weights_only=False``: never for a file from elsewhere)."""
    text = str(exc)
    named = _GLOBAL.search(text)
    if named is not None:  # the pickle names a Python callable (a function, a class) to run on load
        return f"refused: the file calls {named.group(1)}; only tensors and plain containers are loaded, never code"
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        detail = detail.split(". Please use", 1)[0].rstrip(".")
        return f"refused: {detail}; only tensors and plain containers are loaded"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line.lower()
             and "weights only" not in line.lower()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def save_model(path: Path, model: EmbeddingModel, spec: dict[str, Any], *,
               compatible_dim: int | None = None, training: dict[str, Any] | None = None) -> Path:
    """Final weights and the arguments of :func:`compat.models.build_model` that rebuild the model.

    Args:
        compatible_dim: the leading feature coordinates trained to meet an older model of another
            feature size (BT^2, BCT across sizes); recorded so that the features extracted from the
            file say so too (:func:`compat.models.extract_model_file`).
        training: how the model was trained (``compat train`` records the resolved recipe, the
            version and the RNG states at the end of training, so that ``--resume`` can check and
            continue exactly); tensors and plain values only.

    A ``pretrained`` backbone file is not recorded: its weights are in the state dict already.
    """
    payload: dict[str, Any] = {"model": model.state_dict(), "spec": _without_pretrained(spec)}
    meta: dict[str, Any] = {}
    if compatible_dim is not None:
        meta["compatible_dim"] = int(compatible_dim)
    if training is not None:
        meta["training"] = training
    if meta:
        payload["meta"] = meta
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
    it: ``backbone``, ``meta`` (the file's metadata) and, when set, ``compatible_dim``.

    The file is checked before the model is built: ``spec``'s sizes must be ones the stored weights
    can have (no integer larger than the largest stored dimension), so a small file cannot make the
    reader allocate a huge model; a spec that cannot be built, or weights that do not fit it, are a
    :class:`CompatError` naming the field.
    """
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state, dict) or "spec" not in state or "model" not in state:
        raise CompatError(f"{path}: not a compat model file (expected keys 'model' and 'spec')")
    spec, weights, meta = state["spec"], state["model"], state.get("meta", {})
    if not isinstance(spec, dict) or not isinstance(weights, dict):
        raise CompatError(f"{path}: 'spec' and 'model' must be mappings (model arguments, state dict)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CompatError(f"{path}: field 'model' must map parameter names to tensors")
    if not isinstance(meta, dict):
        raise CompatError(f"{path}: field 'meta' must be a mapping, got {type(meta).__name__}")
    _check_sizes(spec, weights, path)
    try:
        # A model file never makes us read another file: a pretrained path in it is ignored.
        model = build_model(**_without_pretrained(spec))
    except CompatError as exc:
        raise CompatError(f"{path}: field 'spec': {exc}") from None
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompatError(f"{path}: field 'spec' does not describe a compat model ({first})") from None
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompatError(f"{path}: field 'model': the weights do not fit the model in 'spec' ({first})") from None
    info = {"backbone": spec.get("backbone"), "meta": meta}
    compatible = meta.get("compatible_dim")
    if compatible is not None:
        if isinstance(compatible, bool) or not isinstance(compatible, int) or compatible < 1:
            raise CompatError(f"{path}: meta field compatible_dim: expected a positive integer, got {compatible!r}")
        info["compatible_dim"] = compatible
    return model.to(device).eval(), info


def _check_sizes(spec: dict[str, Any], weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every size in ``spec`` (its integers and those of ``backbone_kwargs``) is one the stored
    weights can have: a model's sizes all appear among its tensors' dimensions."""
    largest = max((max(t.shape, default=1) for t in weights.values()), default=1)
    kwargs = spec.get("backbone_kwargs")
    values = [("spec." + k, v) for k, v in spec.items()]
    if isinstance(kwargs, dict):
        values += [(f"spec.backbone_kwargs.{k}", v) for k, v in kwargs.items()]
    for key, value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > largest:
            raise CompatError(f"{path}: field {key} is {value}, larger than any dimension of the stored weights "
                              f"({largest}); the file does not describe its own model")
