"""How images are turned into a model's input: size, crop and normalisation, recorded with the features.

A model compat did not train (a TorchScript file, a Python factory) is given its preprocessing
explicitly: ``--image-size``, ``--mean`` and ``--std`` (and optionally ``--resize``), or a named preset
from ``preprocessing.yaml`` next to this module, whose fields the explicit options override. The
resolved :class:`Preprocessing` is written into the features' metadata (``meta["preprocessing"]``), and
:func:`preprocessing_warnings` reports versions of a chain whose features were made with different
preprocessing: such features can disagree for reasons that have nothing to do with the models.

This module imports no torch; the transform itself is built in :mod:`compat.models.external`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from compat.errors import CompatError

__all__ = ["Preprocessing", "list_presets", "preprocessing_warnings", "resolve_preprocessing"]

_FIELDS = ("image_size", "resize", "mean", "std")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter edge to ``resize`` (default ``image_size``), centre-crop ``image_size``, scale
    pixels to [0, 1], normalise per channel; ``len(mean)`` channels (1: grey, 3: RGB).

    Attributes:
        preset: the preset it started from, if any (recorded, never compared).
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        where = f"preprocessing{f' {self.preset!r}' if self.preset else ''}"
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise CompatError(f"{where}: image_size: expected a positive integer, got {self.image_size!r}")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < self.image_size):
            raise CompatError(f"{where}: resize: expected an integer >= image_size ({self.image_size}), "
                              f"got {self.resize!r}")
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise CompatError(f"{where}: mean and std: expected 1 or 3 values each, the same number, got "
                              f"{len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise CompatError(f"{where}: mean and std: expected finite values and std > 0")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_meta(self) -> dict[str, Any]:
        """The ``meta["preprocessing"]`` record."""
        return {"image_size": self.image_size, "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "preset": self.preset}

    def describe(self) -> str:
        crop = f"{self.resize} -> {self.image_size}" if self.resize else str(self.image_size)
        return f"size {crop}, mean {list(self.mean)}, std {list(self.std)}"


@functools.cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("compat").joinpath("preprocessing.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def list_presets() -> list[str]:
    """Names of the preprocessing presets."""
    return sorted(_presets())


def resolve_preprocessing(
    preset: str | None = None,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: int | None = None,
) -> Preprocessing:
    """A preset with the explicit fields overriding it, or the explicit fields alone.

    Raises:
        CompatError: an unknown preset, or no preset and not all of image size, mean and std.
    """
    fields: dict[str, Any] = {}
    if preset is not None:
        if preset not in _presets():
            raise CompatError(f"--preprocessing: unknown preset {preset!r}; expected one of {', '.join(list_presets())}")
        fields = {k: _presets()[preset].get(k) for k in _FIELDS}
    given = {"image_size": image_size, "resize": resize, "mean": mean, "std": std}
    fields.update({k: v for k, v in given.items() if v is not None})
    missing = [k for k in ("image_size", "mean", "std") if fields.get(k) is None]
    if missing:
        raise CompatError(
            "preprocessing: a model compat did not train needs its preprocessing: --preprocessing PRESET "
            f"({', '.join(list_presets())}) or --image-size, --mean and --std (missing: {', '.join(missing)})"
        )
    return Preprocessing(image_size=fields["image_size"], mean=tuple(float(v) for v in fields["mean"]),
                         std=tuple(float(v) for v in fields["std"]), resize=fields.get("resize"), preset=preset)


def _comparable(meta: Mapping[str, Any]) -> tuple | None:
    record = meta.get("preprocessing")
    if not isinstance(record, Mapping):
        return None
    return tuple(repr(record.get(k)) for k in _FIELDS)


def preprocessing_warnings(items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One line per feature set whose recorded preprocessing differs from the first one that records any.

    Args:
        items: ``(name, meta)`` of each feature set, oldest first.
    """
    reference: tuple[str, Mapping[str, Any]] | None = None
    out = []
    for name, meta in items:
        key = _comparable(meta)
        if key is None:
            continue
        if reference is None:
            reference = (name, meta)
            continue
        if key != _comparable(reference[1]):
            ref_name, ref_meta = reference
            out.append(
                f"preprocessing differs: {name} ({_summary(meta)}) vs {ref_name} ({_summary(ref_meta)}); "
                "features made from differently prepared images are not comparable item by item"
            )
    return out


def _summary(meta: Mapping[str, Any]) -> str:
    record = meta["preprocessing"]
    return ", ".join(f"{k} {record.get(k)}" for k in _FIELDS if record.get(k) is not None)
