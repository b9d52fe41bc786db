"""compat.data: the dataset registry, the shipped MNIST subset, splits, rehearsal memory and the sampler.

Nothing here downloads: torchvision datasets are read from the shared MNIST copy (skipped when absent)
or from tiny fakes in torchvision's own on-disk layout written by the tests.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Subset

from compat.data import (
    HalfHalfBatchSampler,
    RehearsalMemory,
    build_dataset,
    class_incremental,
    class_schedule,
    classes_up_to,
    dataset_ids,
    dataset_info,
    dataset_labels,
    fraction_subsets,
    hold_out,
    list_datasets,
    subset_of_classes,
)
from compat.data.make_mnist_mini import balanced_selection, make_mnist_mini
from compat.errors import CompatError
from tests.fakes import fake_cifar, fake_fashion_mnist
from tests.paths import SHARED_DATA

DATA_ROOT = SHARED_DATA
needs_mnist = pytest.mark.skipif(not (DATA_ROOT / "MNIST" / "raw").is_dir(), reason="full MNIST not present")
needs_fashion = pytest.mark.skipif(not (DATA_ROOT / "FashionMNIST" / "raw").is_dir(),
                                   reason="full Fashion-MNIST not present")

# Label counts from shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mini_train():
    return build_dataset("mnist-mini", split="train", train_transform=False)


@pytest.fixture(scope="module")
def mini_test():
    return build_dataset("mnist-mini", split="test", train_transform=False)


# --- registry ------------------------------------------------------------------------------------


def test_registry_lists_the_six_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "imagefolder", "mnist", "mnist-mini"]


def test_unknown_dataset_names_choices_and_closest_match():
    with pytest.raises(CompatError, match=r"did you mean 'mnist'.*cifar10, cifar100, fashion-mnist, imagefolder, mnist"):
        build_dataset("mnsit", root="x", split="train", train_transform=False)


def test_unknown_split_is_an_error():
    with pytest.raises(CompatError, match="split: unknown value 'val'; expected one of train, test"):
        build_dataset("mnist-mini", split="val", train_transform=False)


def test_torchvision_dataset_needs_a_root():
    with pytest.raises(CompatError, match="data root is needed"):
        build_dataset("mnist", split="train", train_transform=False)


def test_image_size_is_for_imagefolder_only():
    with pytest.raises(CompatError, match="imagefolder only"):
        build_dataset("mnist-mini", split="train", train_transform=False, image_size=32)


def test_statistics_come_from_yaml():
    mnist, mini, cifar = dataset_info("mnist"), dataset_info("mnist-mini"), dataset_info("cifar100")
    assert (mnist.mean, mnist.std, mnist.channels, mnist.image_size) == ((0.1307,), (0.3081,), 1, 28)
    assert (mini.mean, mini.std, mini.augment) == (mnist.mean, mnist.std, mnist.augment)
    assert (cifar.num_classes, cifar.padding, cifar.augment.value) == (100, 4, "crop_flip")
    fashion = dataset_info("fashion-mnist")
    assert (fashion.mean, fashion.std, fashion.channels, fashion.augment.value) == ((0.2860,), (0.3530,), 1, "none")


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("cifar10", "cifar-10-batches-py"),
     ("cifar100", "cifar-100-python")],
)
def test_missing_dataset_without_download_raises_and_writes_nothing(tmp_path, name, folder):
    root = tmp_path / "nowhere"
    with pytest.raises(CompatError, match=rf"{folder}.*{root}.*download=True"):
        build_dataset(name, root=root, split="train", train_transform=False)
    assert not root.exists()
    (root).mkdir()
    with pytest.raises(CompatError, match="download=True"):
        build_dataset(name, root=root, split="test", train_transform=False)
    assert list(root.iterdir()) == []


# --- the shipped subset --------------------------------------------------------------------------


def test_mnist_mini_file_is_under_5_mb():
    size = resources.files("compat.data").joinpath("mnist_mini.npz").stat().st_size
    assert 0 < size < 5 * 1024 * 1024
    assert resources.files("compat.data").joinpath("MNIST_MINI_LICENSE.txt").is_file()


def test_mnist_mini_loads_offline_with_shapes_labels_and_ids(mini_train, mini_test):
    assert (len(mini_train), len(mini_test)) == (5000, 1000)
    image, label = mini_train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and isinstance(label, int)
    assert label == int(dataset_labels(mini_train)[0])
    for ds, per_class, size in ((mini_train, 500, 60000), (mini_test, 100, 10000)):
        labels, ids = dataset_labels(ds), dataset_ids(ds)
        assert labels.dtype == np.int64 and ids.dtype == np.int64
        assert np.bincount(labels).tolist() == [per_class] * 10
        assert len(np.unique(ids)) == len(ids) and np.all(np.diff(ids) > 0)
        assert 0 <= ids.min() and ids.max() < size
    assert mini_train.num_classes == 10 and mini_train.classes[3] == "3 - three"


@needs_mnist
def test_mnist_mini_items_are_the_original_mnist_items(mini_test):
    full = build_dataset("mnist", root=DATA_ROOT, split="test", train_transform=False)
    ids = dataset_ids(mini_test)
    assert np.array_equal(dataset_labels(full)[ids], dataset_labels(mini_test))
    assert torch.equal(full.base.data[ids], mini_test.base.data)
    for i in (0, 517):  # same pixels through the same transform
        assert torch.equal(mini_test[i][0], full[int(ids[i])][0])


@needs_mnist
def test_make_mnist_mini_rebuilds_the_shipped_file(tmp_path):
    out = make_mnist_mini(DATA_ROOT, tmp_path / "mini.npz")
    shipped = resources.files("compat.data").joinpath("mnist_mini.npz")
    with np.load(out, allow_pickle=False) as rebuilt, shipped.open("rb") as f, np.load(f, allow_pickle=False) as ship:
        assert sorted(rebuilt.files) == sorted(ship.files)
        for key in ship.files:
            assert np.array_equal(rebuilt[key], ship[key]), key


def test_balanced_selection_is_seeded_and_balanced():
    labels = np.repeat(np.arange(4), 30)
    a = balanced_selection(labels, per_class=5, seed=3)
    assert np.array_equal(a, balanced_selection(labels, per_class=5, seed=3))
    assert not np.array_equal(a, balanced_selection(labels, per_class=5, seed=4))
    assert np.bincount(labels[a]).tolist() == [5] * 4
    with pytest.raises(CompatError, match="fewer than per_class"):
        balanced_selection(labels, per_class=31, seed=0)


# --- full MNIST and fakes in torchvision's layout ------------------------------------------------


@needs_mnist
@pytest.mark.parametrize(("split", "counts"), [("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)])
def test_full_mnist_loads_with_the_documented_label_counts(split, counts):
    ds = build_dataset("mnist", root=DATA_ROOT, split=split, train_transform=False)
    assert len(ds) == sum(counts)
    assert np.bincount(dataset_labels(ds)).tolist() == counts
    assert np.array_equal(dataset_ids(ds), np.arange(len(ds)))


@needs_fashion
@pytest.mark.parametrize(("split", "per_class"), [("train", 6000), ("test", 1000)])
def test_full_fashion_mnist_loads_with_its_own_statistics(split, per_class):
    ds = build_dataset("fashion-mnist", root=DATA_ROOT, split=split, train_transform=False)
    assert np.bincount(dataset_labels(ds)).tolist() == [per_class] * 10
    if split == "train":  # the yaml's mean and std are those of the training pixels, to 4 decimals
        pixels = ds.base.data.double() / 255.0
        info = dataset_info("fashion-mnist")
        assert abs(float(pixels.mean()) - info.mean[0]) < 5e-5 and abs(float(pixels.std()) - info.std[0]) < 5e-5
    image, _ = ds[0]
    expected = (ds.base.data[0].double() / 255.0 - 0.2860) / 0.3530
    assert torch.allclose(image[0].double(), expected, atol=1e-6)


def test_fake_fashion_mnist_in_torchvision_layout_loads(tmp_path):
    expected = fake_fashion_mnist(tmp_path)
    for split in ("train", "test"):
        ds = build_dataset("fashion-mnist", root=tmp_path, split=split, train_transform=split == "train")
        assert dataset_labels(ds).tolist() == expected[split]
        assert ds[0][0].shape == (1, 28, 28) and ds.classes[0] == "T-shirt/top"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_cifar_in_torchvision_layout_loads(tmp_path, monkeypatch, name):
    expected = fake_cifar(tmp_path, monkeypatch, hundred=name == "cifar100")
    train = build_dataset(name, root=tmp_path, split="train", train_transform=True)
    test = build_dataset(name, root=tmp_path, split="test", train_transform=False)
    assert (len(train), len(test)) == (len(expected["train"]), len(expected["test"]))
    assert dataset_labels(train).tolist() == expected["train"] and dataset_labels(test).tolist() == expected["test"]
    assert np.array_equal(dataset_ids(test), np.arange(len(test)))
    image, label = train[1]
    assert image.shape == (3, 32, 32) and label == expected["train"][1]
    assert train.num_classes == (100 if name == "cifar100" else 10)


def _image_tree(root: Path, classes: list[str], per_class: int = 2) -> None:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 24), color=(40 * c, 10 * i, 90)).save(root / name / f"{i}.png")


def test_imagefolder_train_and_val_trees(tmp_path):
    _image_tree(tmp_path / "train", ["cat", "dog"], per_class=3)
    _image_tree(tmp_path / "val", ["cat", "dog"], per_class=1)
    train = build_dataset("imagefolder", root=tmp_path, split="train", train_transform=True, image_size=16)
    test = build_dataset("imagefolder", root=tmp_path, split="test", train_transform=False, image_size=16)
    assert (len(train), len(test)) == (6, 2) and train.classes == ["cat", "dog"] and train.num_classes == 2
    assert dataset_labels(train).tolist() == [0, 0, 0, 1, 1, 1] and dataset_labels(test).tolist() == [0, 1]
    assert test[1][0].shape == (3, 16, 16) and test[1][1] == 1
    per_split = build_dataset(
        "imagefolder",
        root={"train": tmp_path / "train", "test": tmp_path / "val"},
        split="test",
        train_transform=False,
        image_size=16,
    )
    assert dataset_labels(per_split).tolist() == [0, 1]
    own_tree = build_dataset("imagefolder", root=tmp_path / "val", split="test", train_transform=False)
    assert len(own_tree) == 2


def test_imagefolder_errors(tmp_path):
    _image_tree(tmp_path / "train", ["cat", "dog"])
    _image_tree(tmp_path / "val", ["cat", "emu"])
    with pytest.raises(CompatError, match="class folders"):
        build_dataset("imagefolder", root=tmp_path, split="test", train_transform=False)
    with pytest.raises(CompatError, match="cannot download"):
        build_dataset("imagefolder", root=tmp_path, split="train", download=True, train_transform=False)
    with pytest.raises(CompatError, match="no root given"):
        build_dataset("imagefolder", root={"train": tmp_path / "train"}, split="test", train_transform=False)
    with pytest.raises(CompatError, match="not a directory"):
        build_dataset("imagefolder", root=tmp_path / "absent", split="test", train_transform=False)


def test_labels_and_ids_follow_subsets_and_concatenations(mini_test):
    sub = Subset(mini_test, [5, 2, 9])
    assert np.array_equal(dataset_ids(sub), dataset_ids(mini_test)[[5, 2, 9]])
    assert np.array_equal(dataset_labels(sub), dataset_labels(mini_test)[[5, 2, 9]])
    both = ConcatDataset([Subset(mini_test, [0, 1]), Subset(mini_test, [2])])
    assert np.array_equal(dataset_ids(both), dataset_ids(mini_test)[:3])
    with pytest.raises(CompatError, match="overlapping ids"):
        dataset_ids(ConcatDataset([mini_test, mini_test]))
    with pytest.raises(CompatError, match="no labels"):
        dataset_labels([1, 2, 3])


# --- splits --------------------------------------------------------------------------------------

LABELS = np.array([3, 0, 7, 1, 9, 4, 2, 8, 6, 5] * 3)


def test_class_incremental_two_tasks_of_five():
    tasks = class_incremental(LABELS, initial=5, increment=5)
    assert [sorted(set(LABELS[t].tolist())) for t in tasks] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert np.array_equal(np.sort(np.concatenate(tasks)), np.arange(len(LABELS)))
    assert all(np.all(np.diff(t) > 0) and t.dtype == np.int64 for t in tasks)


def test_class_incremental_initial_four_then_threes():
    tasks = class_incremental(LABELS, initial=4, increment=3)
    assert [sorted(set(LABELS[t].tolist())) for t in tasks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(t) for t in tasks] == [12, 9, 9]
    schedule = class_schedule(range(10), initial=4, increment=3)
    assert schedule == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert classes_up_to(schedule, 1) == [0, 1, 2, 3, 4, 5, 6] and classes_up_to(schedule, 2) == list(range(10))


def test_class_incremental_follows_class_order():
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    tasks = class_incremental(LABELS, initial=2, increment=4, class_order=order)
    assert [sorted(set(LABELS[t].tolist())) for t in tasks] == [[8, 9], [4, 5, 6, 7], [0, 1, 2, 3]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0, "increment": 5}, ">= 1"),
        ({"initial": 5, "increment": 0}, ">= 1"),
        ({"initial": 11, "increment": 1}, "only 10 classes"),
        ({"initial": 4, "increment": 4}, "do not split"),
        ({"initial": 5, "increment": 5, "class_order": [0, 1, 2]}, "missing"),
        ({"initial": 5, "increment": 5, "class_order": [*range(10), 11]}, "not in the labels"),
        ({"initial": 5, "increment": 5, "class_order": [0, *range(10)]}, "repeats"),
    ],
)
def test_class_incremental_validates(kwargs, message):
    with pytest.raises(CompatError, match=message):
        class_incremental(LABELS, **kwargs)
    with pytest.raises(CompatError, match="out of range"):
        classes_up_to([[0], [1]], 2)


def test_fraction_subsets_nested_stratified_and_seeded():
    labels = np.repeat(np.arange(5), [20, 40, 60, 80, 100])
    small, mid, full = fraction_subsets(labels, [0.1, 0.4, 1.0], seed=7)
    assert set(small) <= set(mid) <= set(full) and np.array_equal(full, np.arange(len(labels)))
    assert np.bincount(labels[small]).tolist() == [2, 4, 6, 8, 10]
    assert np.bincount(labels[mid]).tolist() == [8, 16, 24, 32, 40]
    again = fraction_subsets(labels, [0.1, 0.4, 1.0], seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((small, mid, full), again))
    other = fraction_subsets(labels, [0.1, 0.4, 1.0], seed=8)
    assert not np.array_equal(small, other[0]) and not np.array_equal(mid, other[1])
    plain = fraction_subsets(labels, [0.25, 0.5], seed=7, stratified=False)
    assert [len(p) for p in plain] == [75, 150] and set(plain[0]) <= set(plain[1])


@pytest.mark.parametrize("fractions", [[], [0.0, 0.5], [0.5, 0.4], [0.5, 0.5], [0.5, 1.5]])
def test_fraction_subsets_validates(fractions):
    with pytest.raises(CompatError, match="strictly increasing"):
        fraction_subsets(LABELS, fractions, seed=0)


def test_hold_out_is_a_stratified_seeded_partition():
    labels = np.repeat(np.arange(4), [10, 20, 30, 3])
    rest, held = hold_out(labels, 0.1, seed=5)
    assert np.array_equal(np.sort(np.concatenate([rest, held])), np.arange(len(labels)))
    assert not set(rest) & set(held)
    assert np.bincount(labels[held]).tolist() == [1, 2, 3, 1]  # round(0.1 * n), at least one per class
    assert all(np.array_equal(a, b) for a, b in zip((rest, held), hold_out(labels, 0.1, seed=5)))
    assert not np.array_equal(held, hold_out(labels, 0.1, seed=6)[1])
    # its own stream: not the first items of the same seed's fraction cut
    assert not np.array_equal(held, fraction_subsets(labels, [0.1], seed=5)[0])
    assert np.bincount(labels[hold_out(labels, 0.9, seed=0)[0]]).tolist() == [1, 2, 3, 1]  # every class keeps one


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_hold_out_validates(fraction):
    with pytest.raises(CompatError, match=r"\(0, 1\)"):
        hold_out(LABELS, fraction, seed=0)
    with pytest.raises(CompatError, match="two are needed"):
        hold_out(np.array([0, 0, 1]), 0.5, seed=0)


def test_subset_of_classes():
    assert np.array_equal(subset_of_classes(LABELS, [0, 9]), np.flatnonzero((LABELS == 0) | (LABELS == 9)))
    with pytest.raises(CompatError, match=r"\[12\]"):
        subset_of_classes(LABELS, [0, 12])


# --- rehearsal memory and the half/half sampler --------------------------------------------------

TRAIN_LABELS = np.repeat(np.arange(6), 50)


def _memory_after_two_tasks(seed: int) -> RehearsalMemory:
    memory = RehearsalMemory(per_class=7, seed=seed)
    for task in class_incremental(TRAIN_LABELS, initial=4, increment=2):
        memory.update(task, TRAIN_LABELS[task])
    return memory


def test_memory_keeps_k_per_class_seeded_and_stable():
    memory = RehearsalMemory(per_class=7, seed=1)
    first = class_incremental(TRAIN_LABELS, initial=4, increment=2)
    assert memory.update(first[0], TRAIN_LABELS[first[0]]) == [0, 1, 2, 3]
    before = memory.indices.copy()
    assert len(memory) == 28 and np.bincount(TRAIN_LABELS[before]).tolist() == [7] * 4
    # Classes already in memory keep their samples, even when seen again.
    assert memory.update(np.arange(300), TRAIN_LABELS) == [4, 5]
    assert len(memory) == 42 and set(before) <= set(memory.indices)
    assert np.array_equal(TRAIN_LABELS[memory.indices], memory.labels)
    assert np.array_equal(memory.indices, _memory_after_two_tasks(1).indices)
    assert not np.array_equal(memory.indices, _memory_after_two_tasks(2).indices)
    small = RehearsalMemory(per_class=20, seed=0)
    small.update([4, 8, 9], [3, 3, 5])
    assert small.indices.tolist() == [4, 8, 9]


def test_memory_state_round_trip_and_mismatch():
    memory = _memory_after_two_tasks(3)
    state = memory.state_dict()
    assert all(isinstance(v, list) for v in state["memory"].values())  # loads with weights_only=True
    restored = RehearsalMemory(per_class=7, seed=3)
    restored.load_state_dict(state)
    assert np.array_equal(restored.indices, memory.indices) and restored.classes == memory.classes
    with pytest.raises(CompatError, match="per_class=7"):
        RehearsalMemory(per_class=20, seed=3).load_state_dict(state)


def test_sampler_batches_are_half_memory_half_new():
    new, mem = np.arange(100, 140), np.arange(10)
    sampler = HalfHalfBatchSampler(new, mem, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 and sampler.memory_per_batch == 4
    for batch in batches:
        assert len(batch) == 8 and set(batch[:4]) <= set(mem) and set(batch[4:]) <= set(new)
    assert sorted(i for b in batches for i in b[4:]) == new.tolist()


def test_sampler_is_deterministic_per_seed_and_epoch():
    new, mem = np.arange(100, 137), np.arange(3)  # memory smaller than half a batch: reused
    sampler = HalfHalfBatchSampler(new, mem, batch_size=9, seed=5)
    epoch0 = list(sampler)
    assert len(epoch0) == 8 and sum(len(b) - 4 for b in epoch0) == 37  # ceil(37 / 5); last batch has 2 new
    assert all(len(b[:4]) == 4 and set(b[:4]) <= set(mem) for b in epoch0)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(i for b in epoch1 for i in b[4:]) == new.tolist()
    twin = HalfHalfBatchSampler(new, mem, batch_size=9, seed=5)
    twin.set_epoch(1)
    assert list(twin) == epoch1
    assert list(HalfHalfBatchSampler(new, mem, batch_size=9, seed=6)) != epoch0


def test_sampler_without_memory_is_a_shuffled_batch_sampler():
    sampler = HalfHalfBatchSampler(np.arange(10), [], batch_size=4, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and sampler.memory_per_batch == 0
    assert sorted(i for b in batches for i in b) == list(range(10)) and batches[0] != [0, 1, 2, 3]
    with pytest.raises(CompatError, match="batch_size must be >= 2"):
        HalfHalfBatchSampler(np.arange(10), [1], batch_size=1, seed=0)
    with pytest.raises(CompatError, match="empty"):
        HalfHalfBatchSampler([], [1], batch_size=4, seed=0)


def test_sampler_drives_a_dataloader(mini_test):
    from torch.utils.data import DataLoader

    sampler = HalfHalfBatchSampler(np.arange(10, 20), np.arange(4), batch_size=4, seed=0)
    images, labels = next(iter(DataLoader(mini_test, batch_sampler=sampler)))
    assert images.shape == (4, 1, 28, 28) and labels.dtype == torch.int64
