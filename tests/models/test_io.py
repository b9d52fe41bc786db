"""Model files are checked before anything is built from them, and a refusal says why in one line."""

from __future__ import annotations

import os

import pytest
import torch

from compat.errors import CompatError
from compat.models import build_model, load_checkpoint, save_model
from compat.models import io as model_io


class _CallsSystem:
    def __reduce__(self):
        return (os.system, ("touch compat-trap-fired",))


def test_a_checkpoint_that_calls_code_is_refused_naming_the_call(tmp_path) -> None:
    torch.save({"model": {}, "spec": _CallsSystem()}, tmp_path / "calls.pt")
    with pytest.raises(CompatError) as info:
        load_checkpoint(tmp_path / "calls.pt")
    message = str(info.value)
    assert "refused: the file calls posix.system" in message and "\n" not in message
    assert "weights_only" not in message.lower() and "trust" not in message  # never torch's advice to unpickle
    assert not (tmp_path / "compat-trap-fired").exists() and not os.path.exists("compat-trap-fired")


@pytest.mark.parametrize(("change", "field"), [({"feature_dim": 10**9}, "spec.feature_dim"),
                                               ({"num_classes": 10**8}, "spec.num_classes"),
                                               ({"backbone_kwargs": {"in_channels": 10**7}},
                                                "spec.backbone_kwargs.in_channels")])
def test_a_huge_stored_architecture_is_refused_before_the_model_is_built(tmp_path, monkeypatch, change, field) -> None:
    spec = {"backbone": "smallcnn", "feature_dim": 16, "head": "linear", "num_classes": 10}
    path = save_model(tmp_path / "m.pt", build_model(**spec), spec)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "spec": {**state["spec"], **change}}, path)
    built = []
    monkeypatch.setattr(model_io, "build_model", lambda **kw: built.append(kw))
    with pytest.raises(CompatError, match=field.replace(".", r"\.")):
        model_io.read_model_file(path)
    assert built == []  # nothing was allocated for it
