"""Shared fixtures: MLflow isolation and the CUDA skip marker."""

from __future__ import annotations

import importlib.util

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch  # imported lazily: collecting the fast tests should not pay for torch

    return bool(torch.cuda.is_available())


def requires_cuda(func=None):
    """Skip marker for tests that need a CUDA device; use as ``@requires_cuda`` or ``requires_cuda()``."""
    mark = pytest.mark.skipif(not _cuda_available(), reason="needs CUDA")
    return mark if func is None else mark(func)


@pytest.fixture(autouse=True)
def _no_shared_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may write to a tracking server or store from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tmp_mlflow(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a fresh sqlite store under ``tmp_path``; returns the tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly on machines without CUDA."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in gpu_items:
            item.add_marker(skip)
