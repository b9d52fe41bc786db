"""The MLflow registry: promotion moves @champion only on a pass; models:/ URIs as inputs; bad registry input."""

from __future__ import annotations

import json
import pickle

import pytest

from compat.errors import CompatError
from compat.gate import (
    promote,
    register_model,
)
from tests.gate.common import Trap, aliases, assert_one_line_exit_2, bad_checkpoint, invoke, policy_file


def test_promotion_moves_champion_only_on_a_pass(models, tmp_path, registry) -> None:
    client = registry
    first = register_model(models["m0"], "prod")
    assert (first.name, first.version, first.uri) == ("prod", "1", "models:/prod/1")
    assert promote("prod", first.uri).to_json() == {
        "name": "prod",
        "version": "1",
        "alias": "champion",
        "previous": None,
    }
    base = ["--old", "models:/prod@champion", "--dataset", "mnist-mini", "--n-resamples", 200, "--promote", "prod"]

    # A failing candidate changes nothing.
    result = invoke(*base, "--new", models["same"], "--out", tmp_path / "fail")
    assert result.exit_code == 1, (result.output, result.exception)
    assert [str(v.version) for v in client.search_model_versions("name='prod'")] == ["1"]
    assert aliases(client, "prod") == {"champion": "1"}
    assert "promotion" not in json.loads((tmp_path / "fail" / "gate.json").read_text(encoding="utf-8"))

    # A passing model file is registered as version 2 and becomes the champion; 1 becomes previous.
    out = tmp_path / "pass"
    result = invoke(*base, "--new", models["same"], "--policy", policy_file(tmp_path), "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert aliases(client, "prod") == {"champion": "2", "previous": "1"}
    doc = json.loads((out / "gate.json").read_text(encoding="utf-8"))
    assert doc["promotion"] == {"name": "prod", "version": "2", "alias": "champion", "previous": "1"}
    assert doc["inputs"]["old"]["meta"]["model_version"] == "1"
    assert client.get_model_version("prod", "2").tags["compat.gate"] == "passed"
    assert "Promoted: `models:/prod/2`" in (out / "gate.md").read_text(encoding="utf-8")

    # A passing models:/ candidate of another registered model is copied in as version 3.
    other = register_model(models["same"], "candidates")
    result = invoke(*base, "--new", other.uri, "--policy", policy_file(tmp_path), "--out", tmp_path / "uri")
    assert result.exit_code == 0, (result.output, result.exception)
    assert aliases(client, "prod") == {"champion": "3", "previous": "2"}
    assert client.get_model_version("prod", "3").source == other.source


def test_models_uri_inputs_give_the_model_files_features(models, tmp_path, registry) -> None:
    register_model(models["m0"], "prod")
    register_model(models["m1"], "prod")
    promote("prod", "models:/prod/1")
    by_uri, by_file = tmp_path / "uri", tmp_path / "file"
    common = ["--dataset", "mnist-mini", "--n-resamples", 200]
    r1 = invoke("--old", "models:/prod@champion", "--new", "models:/prod/2", *common, "--out", by_uri)
    r2 = invoke("--old", models["m0"], "--new", models["m1"], *common, "--out", by_file)
    assert r1.exit_code == r2.exit_code == 1, (r1.output, r2.output)  # a random projection is no upgrade
    a, b = (json.loads((p / "gate.json").read_text(encoding="utf-8")) for p in (by_uri, by_file))
    for check in (*a["checks"], *b["checks"]):
        check.pop("details", None)  # names each gallery's source: the URI or the file
    assert a["checks"] == b["checks"]
    assert a["inputs"]["new"]["meta"]["model_uri"] == "models:/prod/2"
    assert a["inputs"]["new"]["meta"]["checkpoint"] == b["inputs"]["new"]["meta"]["checkpoint"]


def test_registry_bad_inputs(models, tmp_path, registry) -> None:
    client = registry
    # A version whose artifacts are an MLflow pyfunc model, not a compat model file: refused unread.
    run = client.create_run("0")
    flavour = tmp_path / "flavour"
    flavour.mkdir()
    (flavour / "MLmodel").write_text("flavors: {python_function: {}}\n", encoding="utf-8")
    (flavour / "python_model.pkl").write_bytes(pickle.dumps(Trap(tmp_path / "trap-fired")))
    client.log_artifacts(run.info.run_id, str(flavour), artifact_path="model")
    client.create_registered_model("pyfunc")
    client.create_model_version("pyfunc", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    cases = [
        ("models:/pyfunc/1", ["models:/pyfunc/1", "not a compat model", "MLmodel"]),
        ("models:/nope@champion", ["models:/nope@champion"]),
        ("models:/pyfunc/7", ["models:/pyfunc/7"]),
    ]
    for uri, expect in cases:
        out = tmp_path / "out"
        result = invoke("--old", models["m0"], "--new", uri, "--dataset", "mnist-mini", "--out", out)
        assert_one_line_exit_2(result, out, expect)
    assert not (tmp_path / "trap-fired").exists()
    with pytest.raises(CompatError, match="not a loadable checkpoint"):
        register_model(bad_checkpoint("pickle-trap", tmp_path, models), "prod")
    assert not (tmp_path / "trap-fired").exists()
