"""Default image transforms of a dataset, built from its :class:`DatasetInfo`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compat.data.info import Augment, DatasetInfo

__all__ = ["build_transform"]


def build_transform(info: DatasetInfo, *, train: bool, image_size: int | None = None) -> Callable[[Any], Any]:
    """The transform that turns a PIL image of the dataset into a normalised tensor.

    Training adds the dataset's augmentation (random crop with padding + horizontal flip for CIFAR,
    random resized crop + flip for ImageFolder trees, nothing for MNIST). Evaluation resizes and
    centre-crops only where the dataset has no fixed image size (ImageFolder trees).

    Args:
        info: the dataset's statistics and defaults.
        train: training transform (with augmentation) or evaluation transform.
        image_size: side of the output image; None keeps ``info.image_size``.

    Returns:
        A callable ``PIL.Image -> (C, H, W) float32 tensor``.
    """
    from torchvision import transforms as T

    size = info.image_size if image_size is None else image_size
    steps: list[Callable[[Any], Any]] = []
    if train and info.augment is Augment.CROP_FLIP:
        steps += [T.RandomCrop(size, padding=info.padding), T.RandomHorizontalFlip()]
    elif train and info.augment is Augment.RESIZED_CROP_FLIP:
        steps += [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    elif info.resize is not None:
        resize = round(size * info.resize / info.image_size)
        steps += [T.Resize(resize), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    return T.Compose(steps)
