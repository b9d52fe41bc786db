"""Datasets, class-incremental splits, rehearsal memory and the bundled MNIST subset.

``build_dataset`` gives one split of a registered dataset (``mnist``, ``mnist-mini``, ``fashion-mnist``,
``cifar10``, ``cifar100``, ``imagefolder``) with labels and ids known up front; the split functions and the memory
work on label arrays only. Importing this package imports torch but not torchvision.
"""

from compat.data.datasets import (
    DatasetRoot,
    ImageDataset,
    Split,
    build_dataset,
    dataset_ids,
    dataset_labels,
    list_datasets,
)
from compat.data.info import Augment, DatasetInfo, dataset_info
from compat.data.memory import HalfHalfBatchSampler, RehearsalMemory
from compat.data.mnist_mini import MnistMini
from compat.data.splits import (
    class_incremental,
    class_schedule,
    classes_up_to,
    fraction_subsets,
    hold_out,
    per_class_subset,
    subset_of_classes,
)
from compat.data.transforms import build_transform

__all__ = [
    "Augment",
    "DatasetInfo",
    "DatasetRoot",
    "HalfHalfBatchSampler",
    "ImageDataset",
    "MnistMini",
    "RehearsalMemory",
    "Split",
    "build_dataset",
    "build_transform",
    "class_incremental",
    "class_schedule",
    "classes_up_to",
    "dataset_ids",
    "dataset_info",
    "dataset_labels",
    "fraction_subsets",
    "hold_out",
    "list_datasets",
    "per_class_subset",
    "subset_of_classes",
]
