"""An .npz header is not trusted: the size it claims is checked against the file and the machine first."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from compat import _npz
from compat.errors import CompatError
from compat.features import FeatureSet, load_features, save_features


def test_an_array_larger_than_the_machine_is_refused_before_it_is_read(tmp_path, monkeypatch) -> None:
    path = save_features(FeatureSet.from_arrays(np.ones((100, 4)), np.arange(100)), tmp_path / "f.npz")
    monkeypatch.setattr(_npz, "physical_memory", lambda: 1000)  # a machine of 1,000 bytes: 1,600 do not fit
    read = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key))
    with pytest.raises(CompatError, match=r"array 'features' needs .* more than this machine's"):
        load_features(path)
    assert read == []


def test_a_header_that_claims_more_than_the_archive_holds_is_refused(tmp_path) -> None:
    """The claim is checked against the bytes the archive holds, not against what numpy would allocate."""
    path = tmp_path / "f.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key, array in (("features", np.ones((100, 4), np.float32)), ("labels", np.arange(100)),
                           ("ids", np.arange(100))):
            member = io.BytesIO()
            np.save(member, array)
            z.writestr(f"{key}.npy", member.getvalue().replace(b"(100, 4)", b"(900, 4)"))
    with pytest.raises(CompatError, match=r"claims shape \(900, 4\) of float32 \(14400 bytes\), but the archive holds 1600"):
        load_features(path)
