"""The training engine: recipes, the optimisation step, exact resume, and train -> extract -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compat.cli import cli
from compat.errors import CompatError
from compat.features import load_features
from compat.methods import build_method
from compat.models import build_model, load_checkpoint
from compat.train import backward_step, load_recipe, plan_batches, plan_versions, train_version
from compat.train.checkpoint import rng_state, set_rng_state
from compat.train.config import TrainConfig
from compat.train.optim import build_scheduler, parameter_groups
from tests.fakes import fake_cifar
from tests.paths import RECIPES


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TINY = """
name: tiny
seed: 3
data: {dataset: mnist-mini, protocol: growth, fractions: [0.05, 0.1]}
model: {backbone: smallcnn}
method: {name: cores}
train: {epochs: 1, batch_size: 32, lr: 0.05}
eval: {metrics: [cmc@1, map]}
"""


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    build_method(recipe.method.name, **recipe.method.options)


def test_recipe_typo_names_the_key(tmp_path):
    path = _write(tmp_path / "r.yaml", TINY.replace("epochs: 1", "epocs: 1"))
    with pytest.raises(CompatError, match=r"r.yaml: train.epocs: unknown key"):
        load_recipe(path)
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "train.epocs: unknown key" in result.output
    assert not (tmp_path / "out").exists()


def test_recipe_wrong_type_and_bad_override(tmp_path):
    path = _write(tmp_path / "r.yaml", TINY)
    with pytest.raises(CompatError, match="train.lr"):
        load_recipe(path, ["train.lr=fast"])
    with pytest.raises(CompatError, match="key=value"):
        load_recipe(path, ["train.lr"])
    assert load_recipe(path, ["train.lr=0.2", "method.options={lam: 0.3}"]).train.lr == 0.2


def test_unknown_method_option_fails_before_training(tmp_path):
    path = _write(tmp_path / "r.yaml", TINY.replace("{name: cores}", "{name: hoc, options: {lamda: 0.1}}"))
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2 and "lamda" in result.output


def test_version_plans_for_both_protocols():
    labels = np.repeat(np.arange(10), 20)
    growth = plan_versions(load_recipe(RECIPES / "mnist-cl2r.yaml"), labels)
    assert [len(p.new_indices) for p in growth] == [20, 60, 120]  # rehearsal: only the new slice
    classes = plan_versions(load_recipe(RECIPES / "mnist-cores-classes.yaml"), labels)
    assert [p.seen_classes for p in classes] == [[0, 1, 2, 3, 4], list(range(10))]
    assert sorted(set(labels[classes[1].new_indices])) == list(range(10))  # cumulative without rehearsal
    cl2r = plan_versions(load_recipe(RECIPES / "mnist-cl2r-classes.yaml"), labels)
    assert [sorted(set(labels[p.new_indices])) for p in cl2r] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize("recipe_name", ["mnist-cl2r", "mnist-cores-classes"])
def test_version_plans_leave_the_validation_images_out(recipe_name):
    from compat.train.data import training_pool

    labels = np.repeat(np.arange(10), 20)
    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", ["data.eval_split=val", "data.val_fraction=0.25"])
    pool, held = training_pool(recipe, labels)
    assert len(held) == 50 and np.bincount(labels[held]).tolist() == [5] * 10
    plans = plan_versions(recipe, labels, pool)
    used = np.concatenate([p.new_indices for p in plans])
    assert set(used) <= set(pool) and not set(used) & set(held)
    if recipe_name == "mnist-cl2r":  # 15 per class: nested cuts of 2, 6, 15 -> new slices of 2, 4, 9
        assert [len(p.new_indices) for p in plans] == [20, 40, 90]
    else:
        assert set(plans[-1].new_indices) == set(pool)  # cumulative without rehearsal: the whole pool
    assert training_pool(load_recipe(RECIPES / f"{recipe_name}.yaml"), labels) == (None, None)
    with pytest.raises(CompatError, match="val_fraction"):
        load_recipe(RECIPES / f"{recipe_name}.yaml", ["data.val_fraction=1.0"])


@pytest.mark.parametrize("name, versions", [("cifar100-cores", 6), ("cifar100-cl2r", 6), ("cifar100-hoc-7tasks", 7)])
def test_paper_scale_recipes_build_on_a_fake_cifar100(tmp_path, monkeypatch, name, versions):
    from compat.data import build_dataset, dataset_labels
    from compat.train.plan import model_spec as _model_spec

    fake_cifar(tmp_path, monkeypatch, hundred=True, per_file=200, every_class=True)
    recipe = load_recipe(RECIPES / f"{name}.yaml", [f"data.root={tmp_path}"])
    train = build_dataset(recipe.data.dataset, root=recipe.data.root, split="train", train_transform=True)
    plans = plan_versions(recipe, dataset_labels(train))
    assert len(plans) == versions
    method = build_method(recipe.method.name, **recipe.method.options)
    model = build_model(**_model_spec(recipe, 0, 100, method.head))
    images = torch.stack([train[i][0] for i in range(2)])
    out = model(images)
    assert out.features.shape == (2, 99) and out.logits.shape == (2, 100)


# ---------------------------------------------------------------- the optimisation step


class _RecordingScaler:
    """Stands in for GradScaler and records the order of calls."""

    def __init__(self):
        self.calls = []

    def scale(self, loss):
        self.calls.append("scale")
        return loss * 4.0

    def unscale_(self, optimizer):
        self.calls.append("unscale")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad /= 4.0

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")


def test_backward_step_unscales_before_clipping_and_steps_once():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = _RecordingScaler()
    backward_step((w * w).sum() / 2, opt, scaler, clip=1.0)  # grad = w = (3, 4), norm 5 -> clipped to 1
    assert scaler.calls == ["scale", "unscale", "step", "update"]
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))
    assert w.grad is None  # zeroed for the next step


def test_backward_step_without_amp():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    backward_step((w * 2).sum(), opt)
    torch.testing.assert_close(w.detach(), torch.tensor([0.0]))


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    decay, no_decay = parameter_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def test_warmup_then_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, TrainConfig(epochs=2, warmup_epochs=0.5, schedule="cosine"), steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == [0.5, 1.0]  # warm-up over 2 steps
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.1


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    from compat.models import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    want = (torch.rand(3), np.random.rand(2), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(2), random.random())
    torch.testing.assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


class Evil:
    """Any class: weights_only loading must refuse to rebuild it."""


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CompatError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


# ---------------------------------------------------------------- exact resume


class _Crash(Exception):
    pass


def _tiny_run(tmp_path: Path, *, crash_after: int | None, resume: bool, method: str = "cl2r"):
    from compat.data import build_dataset

    torch.manual_seed(0)
    ds = build_dataset("mnist-mini", split="train", train_transform=True)
    m = build_method(method)
    model = build_model("smallcnn", feature_dim=9, head=m.head, num_classes=10)
    old = build_model("smallcnn", feature_dim=9, head=m.head, num_classes=10)
    m.prepare(n_old_classes=5, n_new_classes=5, old_model=old)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5)

    def on_epoch(stats):
        if crash_after is not None and stats.epoch == crash_after:
            raise _Crash

    return train_version(model, m, dataset=ds, new_indices=np.arange(48), memory_indices=np.arange(100, 110),
                         old_model=old, cfg=cfg, seed=7, device="cpu", checkpoint_path=tmp_path / "ckpt.pt",
                         resume=resume, on_epoch=on_epoch, progress=False)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = _tiny_run(tmp_path / "a", crash_after=None, resume=False)
    with pytest.raises(_Crash):
        _tiny_run(tmp_path / "b", crash_after=0, resume=False)
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["epoch"] == 0
    torch.manual_seed(123)  # a resumed process starts with other RNG states: the checkpoint restores them
    resumed = _tiny_run(tmp_path / "b", crash_after=None, resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_batches_are_planned_from_seed_and_epoch():
    a = plan_batches(np.arange(40), np.arange(100, 104), 8, seed=1, epoch=2)
    b = plan_batches(np.arange(40), np.arange(100, 104), 8, seed=1, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all((x[:4] >= 100).all() and (x[4:] < 100).all() for x in a)  # half memory, half new
    c = plan_batches(np.arange(40), np.arange(100, 104), 8, seed=1, epoch=3)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


# ---------------------------------------------------------------- train -> extract -> eval


def test_train_extract_eval_on_the_shipped_subset(tmp_path):
    recipe = _write(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(recipe), "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compat.json").read_text())
    assert report["versions"] == ["v0", "v1"]
    assert all(0.0 <= v <= 1.0 for row in report["metrics"]["cmc@1"] for v in row if v is not None)
    v1 = load_features(out / "features" / "v1.npz")
    assert v1.dim == 9 and v1.n == 1000 and v1.meta["checkpoint"].startswith("sha256:")

    # Extract again from the saved weights: the same features as the training run wrote.
    again = tmp_path / "v1.npz"
    result = runner.invoke(cli, ["extract", "--checkpoint", str(out / "v1" / "model.pt"), "--data", "mnist-mini",
                                 "--out", str(again), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(load_features(again).features, v1.features, rtol=1e-5, atol=1e-5)

    result = runner.invoke(cli, ["eval", "--version", f"v0={out / 'features' / 'v0.npz'}", "--version",
                                 f"v1={again}", "--metric", "cmc@1", "--metric", "map", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "ev" / "compat.json").read_text())
    np.testing.assert_allclose(np.array(ev["metrics"]["cmc@1"], dtype=float),
                               np.array(report["metrics"]["cmc@1"], dtype=float), atol=2e-3, equal_nan=True)

    # Resuming a finished run retrains nothing and reports the same numbers.
    result = runner.invoke(cli, ["train", str(recipe), "--out", str(out), "--device", "cpu", "--quiet", "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "compat.json").read_text())["metrics"] == report["metrics"]


def test_validation_run_trains_and_evaluates_on_disjoint_training_images(tmp_path):
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.train.data import training_pool

    text = TINY.replace("fractions: [0.05, 0.1]}", "fractions: [0.05, 0.1], eval_split: val, val_fraction: 0.05}")
    recipe = _write(tmp_path / "tiny.yaml", text)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    train = build_dataset("mnist-mini", split="train", train_transform=False)
    labels, ids = dataset_labels(train), dataset_ids(train)
    loaded = load_recipe(recipe)
    pool, held = training_pool(loaded, labels)
    v1 = load_features(out / "features" / "v1.npz")
    assert v1.meta["split"] == "val" and v1.n == len(held) == 250
    np.testing.assert_array_equal(v1.ids, ids[held])
    np.testing.assert_array_equal(v1.labels, labels[held])
    trained_on = np.concatenate([p.new_indices for p in plan_versions(loaded, labels, pool)])
    assert not set(ids[trained_on]) & set(v1.ids)


def test_training_logs_nested_mlflow_runs(tmp_path, tmp_mlflow, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    recipe = _write(tmp_path / "tiny.yaml", TINY.replace("fractions: [0.05, 0.1]", "fractions: [0.02, 0.04]"))
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
                                      "--quiet", "--track", "--experiment", "t"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["evaluation", "tiny", "v0", "v1"]
    parent = next(r for r in runs if r.info.run_name == "tiny")
    assert parent.data.params["recipe.train.epochs"] == "1"
    v1 = next(r for r in runs if r.info.run_name == "v1")
    assert v1.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "loss" in v1.data.metrics
    assert any(a.path == "weights" for a in client.list_artifacts(v1.info.run_id))


def test_torchrun_two_processes_train_with_ddp(tmp_path):
    """Two CPU processes (gloo) under torchrun train one chain; rank 0 writes the results."""
    import os
    import subprocess
    import sys

    recipe = _write(tmp_path / "tiny.yaml", TINY.replace("fractions: [0.05, 0.1]", "fractions: [0.02, 0.04]"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(RECIPES.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "compat.cli", "train", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "compat.json").read_text())
    assert report["versions"] == ["v0", "v1"]
    assert load_checkpoint(tmp_path / "run" / "v1" / "checkpoint.pt")["epoch"] == 0
