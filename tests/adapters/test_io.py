"""Adapter files: the metadata is checked, and the forward map's size is known, before anything is allocated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compat.adapters import AdapterConfig, fit_adapter, load_adapter, save_adapter
from compat.adapters import io as adapter_io
from compat.errors import CompatError
from compat.features import FeatureSet


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    old = FeatureSet.from_arrays(rng.normal(size=(120, 6)) + labels[:, None], labels)
    new = FeatureSet.from_arrays(rng.normal(size=(120, 6)) + labels[:, None], labels)
    adapter = fit_adapter(new, old, AdapterConfig(kind="lambda", forward="mlp", hidden=8, epochs=1), progress=False)
    path = save_adapter(adapter, tmp_path_factory.mktemp("adapter") / "a.npz")
    with np.load(path, allow_pickle=False) as z:
        return dict(z)


def _with_meta(tmp_path, arrays, **change) -> str:
    meta = json.loads(str(arrays["meta"])) | change
    path = tmp_path / "bad.npz"
    np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
    return path


@pytest.mark.parametrize("change", [{"alpha": "x"}, {"alpha": True}, {"hidden": "x"}, {"hidden": 1.5}, {"hidden": -2},
                                    {"new_dim": True}, {"old_dim": "6"}, {"lam": "big"}, {"training": [1]},
                                    {"new_version": 3}, {"kind": 7}])
def test_wrongly_typed_metadata_is_a_compat_error(tmp_path, arrays, change) -> None:
    with pytest.raises(CompatError):
        load_adapter(_with_meta(tmp_path, arrays, **change))


@pytest.mark.parametrize("change", [{"hidden": 10**9}, {"old_dim": 10**9, "new_dim": 6}])
def test_huge_sizes_are_refused_without_allocating_them(tmp_path, arrays, monkeypatch, change) -> None:
    """A 24 KB file that claims a 10^9-wide forward map: its shapes are taken on the meta device only."""
    devices = []
    real = adapter_io.build_forward

    def recording(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real(*args, **kwargs)

    monkeypatch.setattr(adapter_io, "build_forward", recording)
    with pytest.raises(CompatError, match="forward"):
        load_adapter(_with_meta(tmp_path, arrays, **change))
    assert devices == ["meta"]
