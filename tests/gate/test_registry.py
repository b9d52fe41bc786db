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


# ------------------------------------------------------------------ a failed run changes nothing


def _registered(client, name: str) -> tuple[list[str], dict[str, str]]:
    """The versions and aliases of ``name``; its tags (the gallery ledger's) must be as the fixture left them."""
    assert client.get_registered_model(name).tags == {}, client.get_registered_model(name).tags
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")), aliases(client, name)


def _passing_promotion(models, tmp_path, out) -> list:
    return ["--old", "models:/prod@champion", "--new", models["same"], "--dataset", "mnist-mini",
            "--n-resamples", 200, "--policy", policy_file(tmp_path), "--promote", "prod", "--out", out]


@pytest.fixture
def prod(models, registry):
    """``prod`` with versions 1 (@previous) and 2 (@champion), as after one promotion."""
    register_model(models["m0"], "prod")
    register_model(models["m0"], "prod")
    promote("prod", "models:/prod/1")
    promote("prod", "models:/prod/2")
    assert _registered(registry, "prod") == (["1", "2"], {"champion": "2", "previous": "1"})
    return registry


def test_out_that_cannot_be_written_is_refused_before_the_registry_changes(models, tmp_path, prod) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    out = blocker / "reports"
    result = invoke(*_passing_promotion(models, tmp_path, out))
    assert_one_line_exit_2(result, out, ["--out", str(out), "a-file"])
    assert _registered(prod, "prod") == (["1", "2"], {"champion": "2", "previous": "1"})


def test_a_bad_promote_name_is_refused_before_any_work(models, tmp_path, prod) -> None:
    args = _passing_promotion(models, tmp_path, tmp_path / "out")
    args[args.index("--promote") + 1] = "team/prod"
    assert_one_line_exit_2(invoke(*args), tmp_path / "out", ["team/prod", "registered model name"])
    assert _registered(prod, "prod") == (["1", "2"], {"champion": "2", "previous": "1"})


def test_promotion_failing_half_way_puts_the_aliases_back(models, tmp_path, prod, monkeypatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real = MlflowClient.set_registered_model_alias
    calls = []

    def fail_second(self, name, alias, version):
        calls.append(alias)
        if len(calls) == 2:  # @previous has moved to 2; moving @champion to the new version 3 fails
            raise MlflowException("the store went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail_second)
    out = tmp_path / "out"
    result = invoke(*_passing_promotion(models, tmp_path, out))
    assert_one_line_exit_2(result, out, ["prod", "the store went away"])
    assert calls[:2] == ["previous", "champion"]
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    assert _registered(prod, "prod") == (["1", "2"], {"champion": "2", "previous": "1"})


def test_reports_that_cannot_record_the_promotion_take_it_back(models, tmp_path, prod, monkeypatch) -> None:
    from compat.gate import report

    real, writes = report.write_all_or_nothing, []

    def fail_second(out_dir, writers):
        writes.append(out_dir)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        return real(out_dir, writers)

    monkeypatch.setattr(report, "write_all_or_nothing", fail_second)
    out = tmp_path / "out"
    result = invoke(*_passing_promotion(models, tmp_path, out))
    assert_one_line_exit_2(result, out, ["--out", "No space left on device"])
    assert len(writes) == 2  # the verdict was written before the registry was touched, then again with it
    assert _registered(prod, "prod") == (["1", "2"], {"champion": "2", "previous": "1"})


def test_a_failed_run_leaves_no_earlier_verdict(models, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    args = ["--old", models["m0"], "--new", models["same"], "--dataset", "mnist-mini", "--n-resamples", 200,
            "--policy", policy_file(tmp_path), "--out", out]
    assert invoke(*args).exit_code == 0
    assert json.loads((out / "gate.json").read_text(encoding="utf-8"))["passed"] is True
    missing = [a if a != models["same"] else tmp_path / "gone.pt" for a in args]
    assert_one_line_exit_2(invoke(*missing), out, ["gone.pt"])

    assert invoke(*args).exit_code == 0
    from compat import gate

    monkeypatch.setattr(gate, "run_gate", lambda *a, **k: 1 / 0)
    result = invoke(*args)
    assert result.exit_code == 3, result.output
    assert sorted(p.name for p in out.iterdir()) == ["compat-error.log"]
    assert "ZeroDivisionError" in (out / "compat-error.log").read_text(encoding="utf-8")
