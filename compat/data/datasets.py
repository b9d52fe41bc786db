"""The registry of image datasets, and labels and ids of any dataset without decoding images.

Every dataset is built by name with :func:`build_dataset` and comes back as an :class:`ImageDataset`:
items are ``(image tensor, int label)``, and ``labels`` / ``ids`` are known up front (int64 arrays), so
splits, rehearsal memory and feature sets never need to read an image. Statistics and transforms come
from ``datasets.yaml``. torchvision datasets are only downloaded when the caller asks for it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from compat.choices import parse_choice
from compat.data.info import DatasetInfo, dataset_info
from compat.data.mnist_mini import MnistMini
from compat.data.transforms import build_transform
from compat.errors import CompatError
from compat.registry import Registry

__all__ = [
    "DatasetRoot",
    "ImageDataset",
    "Split",
    "build_dataset",
    "dataset_ids",
    "dataset_labels",
    "list_datasets",
]

PathLike: TypeAlias = str | os.PathLike[str]
DatasetRoot: TypeAlias = PathLike | Mapping[str, PathLike]


class Split(Enum):
    TRAIN = "train"
    TEST = "test"


class ImageDataset(Dataset):
    """One split of a registered dataset.

    Args:
        base: the underlying dataset; ``base[i]`` is ``(image tensor, label)``.
        info: the dataset's statistics and defaults.
        split: which split this is.
        labels: (N,) int64 labels of the items, in order.
        ids: (N,) int64 stable item ids (the index in the split; the original MNIST index for mnist-mini).
        classes: class names, indexed by label.
    """

    def __init__(
        self,
        base: Any,
        *,
        info: DatasetInfo,
        split: Split,
        labels: np.ndarray,
        ids: np.ndarray,
        classes: list[str],
    ) -> None:
        self.base = base
        self.info = info
        self.split = split
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.classes = list(classes)
        if not (len(self.labels) == len(self.ids) == len(base)):
            raise CompatError(f"{info.name}: {len(base)} items but {len(self.labels)} labels and {len(self.ids)} ids")

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes if self.info.num_classes is not None else len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _ = self.base[index]
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, split={self.split.value!r}, items={len(self)}, classes={self.num_classes})"


@dataclass(frozen=True)
class _Request:
    info: DatasetInfo
    root: DatasetRoot | None
    split: Split
    download: bool
    transform: Callable[[Any], Any]


# A builder returns (base dataset, labels, ids, class names).
_Built: TypeAlias = tuple[Any, np.ndarray, np.ndarray, list[str]]


def _root_path(request: _Request) -> Path:
    name = request.info.name
    if request.root is None:
        raise CompatError(f"{name}: a data root is needed (root=... / --data-root)")
    if isinstance(request.root, Mapping):
        raise CompatError(f"{name}: root must be one directory; a root per split is for 'imagefolder' only")
    return Path(request.root)


def _torchvision(class_name: str, folder: str, request: _Request) -> _Built:
    """MNIST / CIFAR-10 / CIFAR-100 in torchvision's on-disk layout under ``root/folder``."""
    import torchvision.datasets

    name, root = request.info.name, _root_path(request)
    how = f"pass download=True to download it there, or point the data root at the directory that holds {folder}/"
    if not request.download and not (root / folder).is_dir():
        raise CompatError(f"{name}: dataset not found: no {folder}/ under {root}; {how}")
    cls = getattr(torchvision.datasets, class_name)
    try:
        base = cls(
            root=str(root), train=request.split is Split.TRAIN, transform=request.transform, download=request.download
        )
    except (RuntimeError, OSError) as exc:
        raise CompatError(f"{name}: cannot load {root / folder} ({exc}); {how}") from None
    labels = np.asarray(base.targets, dtype=np.int64)
    return base, labels, np.arange(len(labels), dtype=np.int64), list(base.classes)


def _mnist_mini(request: _Request) -> _Built:
    """The subset shipped in the package; ``root`` and ``download`` are not needed and ignored."""
    base = MnistMini(train=request.split is Split.TRAIN, transform=request.transform)
    return base, base.targets.numpy(), base.ids, list(base.classes)


def _split_dir(root: DatasetRoot, split: Split) -> tuple[Path, Path | None]:
    """The tree of ``split``, and the training tree whose class list it must share (if known)."""
    names = ("train",) if split is Split.TRAIN else ("val", "test")
    if isinstance(root, Mapping):
        unknown = set(root) - {"train", "val", "test"}
        if unknown:
            raise CompatError(f"imagefolder: unknown split keys {sorted(unknown)} in root; expected train, val or test")
        found = [root[key] for key in names if key in root]
        if not found:
            raise CompatError(f"imagefolder: no root given for split {split.value!r} (keys: {', '.join(names)})")
        train = root.get("train")
        return Path(found[0]), None if train is None else Path(train)
    base = Path(root)
    if not any((base / key).is_dir() for key in ("train", "val", "test")):
        return base, None  # the root given is the split's own tree
    for key in names:
        if (base / key).is_dir():
            return base / key, base / "train" if (base / "train").is_dir() else None
    raise CompatError(f"imagefolder: {base} has no {' or '.join(names)}/ folder for split {split.value!r}")


def _imagefolder(request: _Request) -> _Built:
    """Any ImageFolder tree: ``root/train`` and ``root/val`` (or ``root/test``), or a root per split."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import find_classes

    if request.download:
        raise CompatError("imagefolder: cannot download an ImageFolder tree; download=True is for torchvision datasets")
    if request.root is None:
        raise CompatError("imagefolder: a data root is needed (root=... / --data-root)")
    directory, train_dir = _split_dir(request.root, request.split)
    if not directory.is_dir():
        raise CompatError(f"imagefolder: {directory} is not a directory")
    try:
        base = ImageFolder(str(directory), transform=request.transform)
        if train_dir is not None and train_dir != directory and find_classes(str(train_dir))[0] != base.classes:
            raise CompatError(f"imagefolder: the class folders of {directory} differ from those of {train_dir}")
    except (FileNotFoundError, OSError) as exc:
        raise CompatError(f"imagefolder: cannot read {directory} ({exc})") from None
    labels = np.asarray(base.targets, dtype=np.int64)
    return base, labels, np.arange(len(labels), dtype=np.int64), list(base.classes)


DATASETS: Registry[Callable[[_Request], _Built]] = Registry("dataset", {
    "mnist": functools.partial(_torchvision, "MNIST", "MNIST/raw"),
    "mnist-mini": _mnist_mini,
    "cifar10": functools.partial(_torchvision, "CIFAR10", "cifar-10-batches-py"),
    "cifar100": functools.partial(_torchvision, "CIFAR100", "cifar-100-python"),
    "imagefolder": _imagefolder,
})


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return DATASETS.names()


def build_dataset(
    name: str,
    *,
    root: DatasetRoot | None = None,
    split: str | Split,
    download: bool = False,
    train_transform: bool,
    image_size: int | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> ImageDataset:
    """Build one split of a registered dataset with its default transform.

    Args:
        name: ``mnist``, ``mnist-mini``, ``cifar10``, ``cifar100`` or ``imagefolder``.
        root: data directory. torchvision datasets live in its layout under it (``root/MNIST/raw``,
            ``root/cifar-10-batches-py``, ``root/cifar-100-python``). ``imagefolder``: a directory with
            ``train/`` and ``val/`` (or ``test/``) class trees, the split's own class tree, or a mapping
            ``{"train": dir, "test": dir}``. Not needed for ``mnist-mini`` (shipped in the package).
        split: ``"train"`` or ``"test"`` (``imagefolder``: the test split is ``val/`` or ``test/``).
        download: let torchvision download a missing dataset into ``root``; without it a missing dataset
            is a :class:`CompatError` and nothing is written.
        train_transform: training transform (with the dataset's augmentation) or evaluation transform.
        image_size: ``imagefolder`` only: side of the model's input (default from ``datasets.yaml``).
        transform: replaces the dataset's own transform (PIL image -> tensor): the explicit
            preprocessing of a model compat did not train (:mod:`compat.models.external`).

    Returns:
        An :class:`ImageDataset` with ``labels`` and ``ids`` as int64 arrays.
    """
    build = DATASETS.get(name)
    split = parse_choice(Split, split, f"dataset {name}: split")
    info = dataset_info(name)
    if image_size is not None and image_size != info.image_size and info.resize is None:
        raise CompatError(f"dataset {name}: images are {info.image_size} pixels; image_size is for imagefolder only")
    if image_size is not None and image_size < 1:
        raise CompatError(f"dataset {name}: image_size must be positive, got {image_size}")
    if transform is None:
        transform = build_transform(info, train=train_transform, image_size=image_size)
    request = _Request(info=info, root=root, split=split, download=download, transform=transform)
    base, labels, ids, classes = build(request)
    return ImageDataset(base, info=info, split=split, labels=labels, ids=ids, classes=classes)


def dataset_labels(dataset: Any) -> np.ndarray:
    """All labels of a dataset, without decoding an image.

    Args:
        dataset: an :class:`ImageDataset`, a dataset with ``targets`` (torchvision MNIST, CIFAR,
            ImageFolder), or a ``Subset`` / ``ConcatDataset`` of those.

    Returns:
        (N,) int64 labels, in item order.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(part) for part in dataset.datasets]).astype(np.int64)
    for attribute in ("labels", "targets"):
        values = getattr(dataset, attribute, None)
        if values is not None and not callable(values):
            return np.asarray(values, dtype=np.int64).reshape(-1)
    raise CompatError(f"dataset: {type(dataset).__name__} has no labels or targets to read labels from")


def dataset_ids(dataset: Any) -> np.ndarray:
    """Stable ids of the items of a dataset: what matches an item across feature sets.

    Args:
        dataset: an :class:`ImageDataset` (its ``ids``), a ``Subset`` (the parent's ids of its indices),
            or any other sized dataset (the index in the split).

    Returns:
        (N,) int64 ids, in item order. The ids of a ``ConcatDataset`` must not repeat across its parts.
    """
    if isinstance(dataset, Subset):
        return dataset_ids(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        ids = np.concatenate([dataset_ids(part) for part in dataset.datasets]).astype(np.int64)
        if len(np.unique(ids)) != len(ids):
            raise CompatError("dataset: the parts of a ConcatDataset have overlapping ids")
        return ids
    values = getattr(dataset, "ids", None)
    if values is not None and not callable(values):
        return np.asarray(values, dtype=np.int64).reshape(-1)
    return np.arange(len(dataset), dtype=np.int64)
