"""The datasets of a recipe's run, decided once: where each version trains and where the chain is evaluated.

``data.eval_split`` is read here and nowhere else:

- ``test`` (default) or ``train``: the versions train on the whole training split and the chain is
  evaluated on the named split;
- ``val``: a seeded, class-stratified ``data.val_fraction`` of the training split is held out
  (:func:`compat.data.hold_out`); the versions (and adapters) train on the rest and the chain is
  evaluated on the held-out images, so settings are chosen without looking at the test split.

``data.images_per_class`` keeps a seeded choice of training images per class before either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from compat.train.config import Recipe

__all__ = ["RecipeData", "training_pool"]


def training_pool(recipe: Recipe, labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(pool, held_out)``: the training-split indices the versions may use (None: all of them) and,
    under ``data.eval_split: val``, the held-out ones (else None). ``data.images_per_class`` first
    keeps a seeded choice of that many images per class; the validation share is held out of those."""
    from compat.data import hold_out, per_class_subset

    d = recipe.data
    kept = None if d.images_per_class is None else per_class_subset(labels, d.images_per_class, seed=recipe.seed)
    if d.eval_split != "val":
        return kept, None
    if kept is None:
        return hold_out(labels, d.val_fraction, seed=recipe.seed)
    rest, held = hold_out(labels[kept], d.val_fraction, seed=recipe.seed)
    return kept[rest], kept[held]


@dataclass
class RecipeData:
    """A run's datasets.

    Attributes:
        recipe: the recipe they were built for.
        root: where the datasets are (``--data-root`` or ``data.root``).
        train: the training split with augmentation (what the versions train on).
        labels: (N,) labels of the training split.
        pool: training indices the versions may use (None: all); ``held_out``: the evaluation images
            under ``eval_split: val`` (None otherwise).
        evaluation: the images the chain is evaluated on; ``eval_labels`` / ``eval_ids`` describe them.
    """

    recipe: Recipe
    root: str | None
    train: Any
    labels: np.ndarray
    pool: np.ndarray | None
    held_out: np.ndarray | None
    evaluation: Dataset
    eval_labels: np.ndarray
    eval_ids: np.ndarray
    _clean: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, recipe: Recipe, data_root: str | None = None) -> RecipeData:
        """Build the training split, cut the validation share when asked, and the evaluation images."""
        from compat.data import build_dataset, dataset_ids, dataset_labels

        d = recipe.data
        root = data_root or d.root
        train = build_dataset(d.dataset, root=root, split="train", download=d.download, train_transform=True)
        labels = dataset_labels(train)
        pool, held_out = training_pool(recipe, labels)
        data = cls(recipe, root, train, labels, pool, held_out, evaluation=None, eval_labels=None, eval_ids=None)
        if held_out is None:
            data.evaluation = build_dataset(d.dataset, root=root, split=d.eval_split, download=d.download,
                                            train_transform=False)
        else:
            data.evaluation = Subset(data.clean_train(), held_out.tolist())
        data.eval_labels, data.eval_ids = dataset_labels(data.evaluation), dataset_ids(data.evaluation)
        return data

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def clean_train(self):
        """The training split without augmentation, built once (held-out images, cached features)."""
        if self._clean is None:
            from compat.data import build_dataset

            d = self.recipe.data
            self._clean = build_dataset(d.dataset, root=self.root, split="train", download=d.download,
                                        train_transform=False)
        return self._clean

    @property
    def adapter_split(self) -> str:
        """The name of the images adapters train on, as recorded in their features' metadata."""
        d = self.recipe.data
        parts = ["train"]
        if d.images_per_class is not None:
            parts.append(f"{d.images_per_class}-per-class")
        if d.eval_split == "val":
            parts.append(f"without-val-{d.val_fraction:g}")
        return "-".join(parts)

    def adapter_images(self):
        """The unaugmented training images adapters train on (the pool, when there is one)."""
        clean = self.clean_train()
        return clean if self.pool is None else Subset(clean, self.pool.tolist())
