"""Dataset statistics and default transforms, as listed in ``datasets.yaml`` next to this module."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any

import yaml

from compat.errors import CompatError

__all__ = ["Augment", "DatasetInfo", "dataset_info"]

_FIELDS = {"num_classes", "channels", "image_size", "resize", "mean", "std", "augment", "padding"}


class Augment(Enum):
    """Training augmentation of a dataset."""

    NONE = "none"
    CROP_FLIP = "crop_flip"  # random crop with zero padding + horizontal flip (CIFAR)
    RESIZED_CROP_FLIP = "resized_crop_flip"  # random resized crop + horizontal flip (ImageNet-style trees)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and its transforms need to know about a dataset.

    Args:
        name: registry name.
        num_classes: number of classes; None when it comes from the data (an ImageFolder tree).
        channels: image channels after ``ToTensor``.
        image_size: side of the square image the model sees.
        mean: per-channel normalisation mean, length ``channels``.
        std: per-channel normalisation std, length ``channels``.
        augment: training augmentation.
        padding: zero padding of the random crop (``Augment.CROP_FLIP``).
        resize: side evaluation images are resized to before the centre crop (None: no resize).
    """

    name: str
    num_classes: int | None
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = Augment.NONE
    padding: int = 0
    resize: int | None = None


@functools.cache
def _table() -> dict[str, dict[str, Any]]:
    text = resources.files("compat.data").joinpath("datasets.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def dataset_info(name: str) -> DatasetInfo:
    """Statistics and transform defaults of a registered dataset.

    Args:
        name: registry name (``mnist``, ``mnist-mini``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder``).

    Returns:
        The dataset's :class:`DatasetInfo`.
    """
    table = _table()
    if name not in table:
        raise CompatError(f"datasets.yaml: no entry for dataset {name!r}; expected one of {', '.join(sorted(table))}")
    entry = dict(table[name])
    unknown = set(entry) - _FIELDS
    if unknown:
        raise CompatError(f"datasets.yaml: {name}: unknown keys {sorted(unknown)}; expected {sorted(_FIELDS)}")
    info = DatasetInfo(
        name=name,
        num_classes=entry.get("num_classes"),
        channels=int(entry["channels"]),
        image_size=int(entry["image_size"]),
        mean=tuple(float(v) for v in entry["mean"]),
        std=tuple(float(v) for v in entry["std"]),
        augment=Augment(entry.get("augment", "none")),
        padding=int(entry.get("padding", 0)),
        resize=entry.get("resize"),
    )
    if len(info.mean) != info.channels or len(info.std) != info.channels:
        raise CompatError(f"datasets.yaml: {name}: mean and std need {info.channels} values each")
    return info
