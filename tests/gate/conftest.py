"""Fixtures of the gate's tests: synthetic feature sets and their files, tiny model files, a temporary registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compat.features import FeatureSet, save_features
from tests.cli import test_eval as eval_cases
from tests.gate.common import BACKBONE, C, D, N, Pixels, feature_set

data = eval_cases.data  # the evaluator tests' feature files, for their bad inputs


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests running inside GitHub Actions must not append to the real step summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="module")
def sets() -> dict[str, FeatureSet]:
    """One 'dataset' seen by several models.

    old: centres + noise 1.5; good: same centres, noise 0.9 (compatible and better); rotated: good
    times a random orthogonal matrix (as good, incompatible); noisy[k]: old + noise 0.05 (seeds
    100 + k: the same model up to noise); indep: other centres, noise 0.6.
    chain0 / old2 / new2 (8 + 8 coordinates): old2 shares its first half with chain0 and its second
    half with new2, so new2 is close to old2 but useless on chain0's gallery.
    """
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(C), N // C)
    ids = rng.permutation(np.arange(5000, 5000 + N))
    centres = rng.normal(size=(C, D))
    old = centres[labels] + 1.5 * rng.normal(size=(N, D))
    good = centres[labels] + 0.9 * rng.normal(size=(N, D))
    rotation, _ = np.linalg.qr(rng.normal(size=(D, D)))
    out = {
        "old": feature_set(old, labels, ids, "old"),
        "good": feature_set(good, labels, ids, "good"),
        "rotated": feature_set(good @ rotation, labels, ids, "rotated"),
        "indep": feature_set(rng.normal(size=(C, D))[labels] + 0.6 * rng.normal(size=(N, D)), labels, ids, "indep"),
    }
    for k in range(6):
        noise = np.random.default_rng(100 + k).normal(size=(N, D))
        out[f"noisy{k}"] = feature_set(old + 0.05 * noise, labels, ids, f"noisy{k}")
    h = D // 2
    ca, cb = rng.normal(size=(C, h)), rng.normal(size=(C, h))
    out["chain0"] = feature_set(
        np.hstack([ca[labels] + rng.normal(size=(N, h)), 0.3 * rng.normal(size=(N, h))]), labels, ids, "chain0"
    )
    out["old2"] = feature_set(
        np.hstack([ca[labels] + rng.normal(size=(N, h)), cb[labels] + rng.normal(size=(N, h))]), labels, ids, "old2"
    )
    out["new2"] = feature_set(
        np.hstack([0.3 * rng.normal(size=(N, h)), cb[labels] + 0.5 * rng.normal(size=(N, h))]), labels, ids, "new2"
    )
    return out


@pytest.fixture(scope="module")
def files(sets, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-features")
    return {name: save_features(fs, root / f"{name}.npz") for name, fs in sets.items()}


@pytest.fixture(scope="module")
def pixels_backbone():
    """The tiny backbone, registered for this module only (the registry is left as it was)."""
    from compat.models import backbones

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.BACKBONES._entries, BACKBONE, Pixels)
        yield BACKBONE


@pytest.fixture(scope="module")
def models(tmp_path_factory, pixels_backbone) -> dict[str, Path]:
    """Model files over the tiny backbone: ``m0`` and its exact copy ``same``, and ``m1`` (other weights)."""
    from compat.models import build_model, save_model

    root = tmp_path_factory.mktemp("gate-models")
    spec = {"backbone": BACKBONE, "feature_dim": None, "head": "linear", "num_classes": 10}
    out = {}
    for name, seed in (("m0", 0), ("m1", 1)):
        torch.manual_seed(seed)
        out[name] = save_model(root / f"{name}.pt", build_model(**spec), spec)
    out["same"] = root / "same.pt"
    shutil.copyfile(out["m0"], out["same"])
    return out


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty sqlite store, made once for the session: creating its tables takes seconds,
    copying the file does not. Its default experiment keeps artifacts under this fixture's directory."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def registry(tmp_mlflow: str, empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An MLflow client on the temporary sqlite store of ``tmp_mlflow`` (a copy of ``empty_store``)."""
    from mlflow import MlflowClient

    shutil.copyfile(empty_store, tmp_mlflow.removeprefix("sqlite:///"))
    monkeypatch.chdir(tmp_path)
    return MlflowClient(tracking_uri=tmp_mlflow)
