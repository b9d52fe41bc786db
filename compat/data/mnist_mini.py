"""The MNIST subset shipped inside the package (``mnist_mini.npz``), read like torchvision's MNIST.

The file holds, for ``train`` and ``test``: ``{split}_images`` (uint8, N x 28 x 28),
``{split}_labels`` (int64, N) and ``{split}_ids`` (int64, N: the image's index in the original MNIST
split). It is built by ``python -m compat.data.make_mnist_mini``; licence and provenance in
``MNIST_MINI_LICENSE.txt`` (CC BY-SA 3.0).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from compat.errors import CompatError

__all__ = ["MNIST_CLASSES", "MNIST_MINI_FILE", "MnistMini", "load_mnist_mini_arrays"]

MNIST_MINI_FILE = "mnist_mini.npz"
# torchvision.datasets.MNIST.classes
MNIST_CLASSES = [
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
]  # fmt: skip


def load_mnist_mini_arrays(split: str, *, path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one split of the shipped subset.

    Args:
        split: ``"train"`` or ``"test"``.
        path: another file in the same format; None reads the one inside the package.

    Returns:
        ``(images, labels, ids)``: (N, 28, 28) uint8, (N,) int64, (N,) int64.
    """
    if split not in ("train", "test"):
        raise CompatError(f"mnist-mini: unknown split {split!r}; expected 'train' or 'test'")
    source = resources.files("compat.data").joinpath(MNIST_MINI_FILE) if path is None else Path(path)
    try:
        with source.open("rb") as handle, np.load(handle, allow_pickle=False) as arrays:
            images, labels, ids = (arrays[f"{split}_{key}"] for key in ("images", "labels", "ids"))
    except (OSError, KeyError, ValueError) as exc:
        raise CompatError(f"{source}: not a readable mnist-mini file ({exc})") from None
    if images.dtype != np.uint8 or images.ndim != 3 or not (len(images) == len(labels) == len(ids)):
        raise CompatError(f"{source}: {split} arrays have unexpected shapes or types")
    return images, labels.astype(np.int64), ids.astype(np.int64)


class MnistMini(Dataset):
    """The shipped MNIST subset with torchvision MNIST's interface: ``data``, ``targets``, ``classes``.

    Items are ``(transform(PIL image, mode "L"), int label)``, exactly as torchvision's MNIST returns them.

    Args:
        train: the training subset (5,000 images) or the test subset (1,000 images).
        transform: applied to the PIL image.
        path: another file in the same format; None reads the one inside the package.

    Attributes:
        data: (N, 28, 28) uint8 tensor.
        targets: (N,) int64 tensor.
        ids: (N,) int64 array, the images' indices in the original MNIST split.
    """

    classes = MNIST_CLASSES

    def __init__(
        self, *, train: bool = True, transform: Callable[[Any], Any] | None = None, path: str | Path | None = None
    ) -> None:
        images, labels, ids = load_mnist_mini_arrays("train" if train else "test", path=path)
        self.train = train
        self.transform = transform
        self.data = torch.from_numpy(images)
        self.targets = torch.from_numpy(labels)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image = Image.fromarray(self.data[index].numpy())  # 2-D uint8 -> mode "L", as in torchvision
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
