"""Models compat did not train: a TorchScript file, or a Python factory for anything else.

- ``torchscript:PATH``: a file written by ``torch.jit.save``; its output on a batch of images is the
  feature;
- ``python:package.module:function``: ``function()`` returns a ``torch.nn.Module`` or any callable from
  an image batch (N, C, H, W) to features (N, D): timm, open_clip, a company's own code. The module
  is imported from the Python path (``PYTHONPATH``).

Both run code the user supplies, so they are refused unless the caller says it trusts them
(``trust_model_code=True``, ``--trust-model-code``): without it nothing is loaded and nothing is
imported. compat model files and feature files never need it. Their images are prepared by an
explicit :class:`~compat.preprocessing.Preprocessing`, which is written into the features' metadata.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compat.errors import CompatError
from compat.features import FeatureSet
from compat.models.extract import extract_features, file_digest
from compat.preprocessing import Preprocessing

__all__ = [
    "ExternalModel",
    "ModelKind",
    "dataset_preprocessing",
    "extract_external",
    "load_external_model",
    "parse_model_spec",
    "preprocessing_transform",
]

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TRUST_HINT = "it runs code you supply; pass --trust-model-code (trust_model_code=True) to allow it"


class ModelKind(str, Enum):
    TORCHSCRIPT = "torchscript"
    PYTHON = "python"


@dataclass(frozen=True)
class ExternalModel:
    """A reference to a user's model: ``kind`` and ``target`` (a path, or ``package.module:function``)."""

    kind: ModelKind
    target: str

    @property
    def spec(self) -> str:
        return f"{self.kind.value}:{self.target}"


def parse_model_spec(text: str) -> ExternalModel | None:
    """``torchscript:PATH`` or ``python:package.module:function``; ``None`` for anything else.

    Raises:
        CompatError: the prefix is one of the two but the rest is malformed.
    """
    prefix, sep, rest = str(text).partition(":")
    if not sep or prefix not in {k.value for k in ModelKind}:
        return None
    kind = ModelKind(prefix)
    if kind is ModelKind.TORCHSCRIPT and not rest:
        raise CompatError(f"{text}: expected torchscript:PATH (a file written by torch.jit.save)")
    if kind is ModelKind.PYTHON:
        module, colon, function = rest.partition(":")
        if not colon or not _DOTTED.match(module) or not _NAME.match(function):
            raise CompatError(f"{text}: expected python:package.module:function (an importable module and the name "
                              "of a function in it)")
    return ExternalModel(kind, rest)


class _Embedder(nn.Module):
    """A user's module or callable as a compat embedding model: ``embed(images) -> (N, D)``, checked."""

    def __init__(self, fn: Callable[[Tensor], Any], spec: str) -> None:
        super().__init__()
        self.fn = fn  # registered as a submodule when it is one, so .to() and .eval() reach it
        self.spec = spec

    def embed(self, images: Tensor) -> Tensor:
        out = self.fn(images)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise CompatError(f"{self.spec}: expected features of shape ({images.shape[0]}, D) for a batch of "
                              f"{images.shape[0]} images, got {shape}")
        return out.float()

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images)


def load_external_model(model: ExternalModel, *, trust_model_code: bool, device: str = "cpu") -> nn.Module:
    """The user's model, ready for :func:`compat.models.extract_features` (``embed``), in eval mode.

    Raises:
        CompatError: not trusted (checked before anything is read or imported), a missing file, a
            module or function that cannot be imported, a factory that returns no callable.
    """
    if not trust_model_code:
        raise CompatError(f"{model.spec}: {TRUST_HINT}")
    if model.kind is ModelKind.TORCHSCRIPT:
        path = Path(model.target)
        if not path.is_file():
            raise CompatError(f"{path}: no such TorchScript file")
        try:
            with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated; the user's file is one
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
                fn = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise CompatError(f"{path}: not a loadable TorchScript file ({_first_line(exc)})") from None
    else:
        fn = _call_factory(model)
    return _Embedder(fn, model.spec).to(device).eval()


def _call_factory(model: ExternalModel) -> Callable[[Tensor], Any]:
    module_name, _, function = model.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CompatError(f"{model.spec}: cannot import {module_name!r} ({_first_line(exc)}); is it on PYTHONPATH?") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise CompatError(f"{model.spec}: module {module_name!r} has no function {function!r}")
    built = factory()
    if not callable(built):
        raise CompatError(f"{model.spec}: the factory returned {type(built).__name__}; expected a torch.nn.Module "
                          "or a callable from images (N, C, H, W) to features (N, D)")
    return built


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _Channels:
    """PIL image -> ``L`` (1 channel) or ``RGB`` (3), the channels the model is given."""

    def __init__(self, channels: int) -> None:
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, image):
        return image.convert(self.mode)


def preprocessing_transform(pre: Preprocessing) -> Callable[[Any], Tensor]:
    """PIL image -> (C, H, W) tensor: channels, resize (shorter edge), centre crop, [0, 1], normalise."""
    from torchvision import transforms as T

    return T.Compose([_Channels(pre.channels), T.Resize(pre.resize or pre.image_size), T.CenterCrop(pre.image_size),
                      T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def dataset_preprocessing(info) -> Preprocessing:
    """The evaluation preprocessing of a registered dataset (its ``datasets.yaml`` entry), as a record."""
    return Preprocessing(image_size=info.image_size, mean=tuple(info.mean), std=tuple(info.std), resize=info.resize,
                         preset=None)


def extract_external(
    model: ExternalModel,
    dataset,
    *,
    labels: np.ndarray,
    ids: np.ndarray,
    preprocessing: Preprocessing,
    trust_model_code: bool,
    device: str = "cpu",
    batch_size: int = 512,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of ``dataset`` (built with :func:`preprocessing_transform` of ``preprocessing``) by a
    user's model; the metadata records the model, the TorchScript file's digest and the preprocessing.

    Raises:
        CompatError: see :func:`load_external_model`; a forward pass that fails or returns no (N, D) tensor.
    """
    embedder = load_external_model(model, trust_model_code=trust_model_code, device=device)
    recorded: dict[str, Any] = {"model": model.spec, "preprocessing": preprocessing.to_meta()}
    if model.kind is ModelKind.TORCHSCRIPT:
        recorded["checkpoint"] = file_digest(model.target)
    try:
        return extract_features(embedder, dataset, labels=labels, ids=ids, device=device, batch_size=batch_size,
                                meta={**recorded, **(meta or {})}, progress=progress)
    except (RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, CompatError):
            raise
        raise CompatError(f"{model.spec}: the forward pass failed on a batch of images ({_first_line(exc)})") from None
