"""The gallery ledger: spaces recorded at promotion, backfill progress, ``compat status``, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compat.adapters.adapter import Adapter, AdapterInfo
from compat.adapters.io import save_adapter
from compat.adapters.modules import BackwardKind, ForwardKind, LinearMap
from compat.cli import cli
from compat.errors import CompatError
from compat.gate.ledger import GalleryState, download_adapter, gallery_status, parse_done, read_gallery
from compat.models.extract import file_digest
from tests.gate.common import aliases, invoke, policy_file

ALWAYS = "checks:\n  - {kind: max_drop, metric: cmc@1, threshold: 1.0}\n"  # every candidate passes
A, B, C = "sha256:aa", "sha256:bb", "sha256:cc"


def _identity_adapter(path: Path, dim: int = 24) -> Path:
    info = AdapterInfo(BackwardKind.PROCRUSTES, ForwardKind.NONE, dim, dim)
    return save_adapter(Adapter(info, LinearMap(np.eye(dim, dtype=np.float32))), path)


def _cli(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_gallery_state_follows_backfills():
    state = GalleryState(None, (A,))
    assert state.present == [((A,), None)] and state.fraction is None
    with pytest.raises(CompatError, match="--gallery-size"):
        state.after_backfill(B, "2", 10)
    state = state.after_backfill(B, "2", 30, gallery_size=100)
    assert state.present == [((A,), 70), ((B,), 30)] and state.fraction == 0.3
    state = state.after_backfill(B, "2", 60)
    assert state.present == [((A,), 40), ((B,), 60)]
    # another space before B's backfill finished: B's items join the rest, whose split is unknown
    mixed = state.after_backfill(C, "3", 10)
    assert mixed.present == [((A, B), 90), ((C,), 10)]
    # a finished backfill leaves the gallery in its space only
    done = state.after_backfill(B, "2", 100)
    assert done.present == [((B,), 100)]
    assert done.after_backfill(C, "3", 5).present == [((B,), 95), ((C,), 5)]
    with pytest.raises(CompatError, match="between 0 and"):
        state.after_backfill(B, "2", 101)
    assert GalleryState.from_json(json.dumps(mixed.to_json()), "x") == mixed


def test_done_counts_and_id_files(tmp_path):
    ids = tmp_path / "done.csv"
    ids.write_text("id\n17\n11\n\n15\n", encoding="utf-8")
    assert parse_done("250") == 250 and parse_done(str(ids)) == 3
    with pytest.raises(CompatError, match="--done"):
        parse_done(str(tmp_path / "missing.csv"))


def test_ledger_round_trip_status_and_refusal(models, tmp_path, registry) -> None:
    client = registry
    adapter = _identity_adapter(tmp_path / "b.npz")
    always = policy_file(tmp_path, ALWAYS)
    common = ["--dataset", "mnist-mini", "--n-resamples", 100, "--policy", always]
    old_space, new_space = file_digest(models["m0"]), file_digest(models["m1"])

    # m1 with an adapter, gated against m0's gallery: the first promotion starts the ledger in m0's space.
    result = invoke("--old", models["m0"], "--new", models["m1"], "--adapter", adapter, "--promote", "prod", *common,
                    "--out", tmp_path / "g1")
    assert result.exit_code == 0, result.output
    tags = client.get_model_version("prod", "1").tags
    own = f"{new_space}+B:{file_digest(adapter)}"
    assert (tags["compat.space"], tags["compat.gallery_space"], tags["compat.compatible_with"]) == \
        (own, old_space, old_space)
    assert read_gallery("prod") == GalleryState(None, (old_space,))
    fetched = download_adapter("models:/prod@champion", tmp_path / "fetched")
    assert fetched.read_bytes() == adapter.read_bytes()
    status = _cli("status", "models:/prod")
    assert status.exit_code == 0 and "the live combination was gated: yes" in status.output

    # Progress: a count needs the gallery's size once; an ids file (a plan.csv head) counts its lines.
    result = _cli("backfill", "record", "models:/prod@champion", "--done", "3")
    assert result.exit_code == 2 and "--gallery-size" in result.stderr
    assert _cli("backfill", "record", "models:/prod@champion", "--done", "3", "--gallery-size", 10).exit_code == 0
    head = tmp_path / "head.csv"
    head.write_text("id\n4\n8\n15\n16\n23\n", encoding="utf-8")
    assert _cli("backfill", "record", "models:/prod@champion", "--done", head).exit_code == 0
    assert read_gallery("prod") == GalleryState(10, (old_space,), own, "1", 5)
    status = _cli("status", "models:/prod")
    assert status.exit_code == 0, status.output
    assert f"5 items (50.0%) in {own}: gated" in status.output and f"5 items (50.0%) in {old_space}: gated" in status.output

    # m0 gated against m1's raw features: the backfilled half (m1 through B) was never gated -> refused.
    refused = invoke("--old", models["m1"], "--new", models["m0"], "--promote", "prod", *common, "--out", tmp_path / "g2")
    assert refused.exit_code == 2 and "--allow-space-change" in refused.stderr and own in refused.stderr
    assert aliases(client, "prod") == {"champion": "1"} and not (tmp_path / "g2").exists()
    allowed = invoke("--old", models["m1"], "--new", models["m0"], "--promote", "prod", "--allow-space-change", *common,
                     "--out", tmp_path / "g2")
    assert allowed.exit_code == 0, allowed.output
    assert aliases(client, "prod") == {"champion": "2", "previous": "1"}
    assert client.get_model_version("prod", "2").tags["compat.space_change"] == "true"
    status = _cli("status", "models:/prod")
    assert status.exit_code == 1 and f"in {own}: NOT gated" in status.output
    assert gallery_status("prod").gated is False


def test_status_and_record_bad_inputs(models, tmp_path, registry) -> None:
    from compat.gate import promote, register_model

    for args, message in ((["status", "models:/nope"], "nope"), (["backfill", "record", "models:/nope@champion",
                                                                 "--done", "1"], "nope")):
        result = _cli(*args)
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # promoted without the ledger: status cannot vouch for it (exit 1), progress cannot be recorded (exit 2)
    promote("plain", register_model(models["m0"], "plain").uri)
    status = _cli("status", "models:/plain")
    assert status.exit_code == 1 and "no ledger" in status.output
    record = _cli("backfill", "record", "models:/plain@champion", "--done", "1", "--gallery-size", 5)
    assert record.exit_code == 2 and "compat.space" in record.stderr
    # --old features without a model digest cannot name the gallery's space
    from compat.features import FeatureSet, save_features

    bare = save_features(FeatureSet.from_arrays(np.ones((4, 2)), [0, 0, 1, 1]), tmp_path / "bare.npz")
    result = invoke("--old", bare, "--new", models["m0"], "--dataset", "mnist-mini", "--promote", "plain",
                    "--out", tmp_path / "g")
    assert result.exit_code == 2 and "--gallery-space" in result.stderr


def test_gate_with_an_adapter_gates_the_candidate_through_b(sets, files, tmp_path) -> None:
    """``rotated`` is ``good`` in a rotated space: raw it fails, through B = the inverse rotation it passes as ``good``."""
    rotation = np.linalg.lstsq(sets["good"].features, sets["rotated"].features, rcond=None)[0]
    info = AdapterInfo(BackwardKind.PROCRUSTES, ForwardKind.NONE, 16, 16)
    adapter = save_adapter(Adapter(info, LinearMap(rotation.astype(np.float32))), tmp_path / "unrotate.npz")
    common = ["--old", files["old"], "--n-resamples", 200]
    raw = invoke(*common, "--new", files["rotated"], "--out", tmp_path / "raw")
    adapted = invoke(*common, "--new", files["rotated"], "--adapter", adapter, "--out", tmp_path / "adapted")
    good = invoke(*common, "--new", files["good"], "--out", tmp_path / "good")
    assert (raw.exit_code, adapted.exit_code, good.exit_code) == (1, 0, 0), adapted.output
    a, g = (json.loads((tmp_path / d / "gate.json").read_text(encoding="utf-8")) for d in ("adapted", "good"))
    assert [c["value"] for c in a["checks"]] == pytest.approx([c["value"] for c in g["checks"]], abs=0.01)
    assert a["inputs"]["new"]["meta"]["adapter_digest"] == file_digest(adapter)
    wrong = _identity_adapter(tmp_path / "wrong.npz", dim=24)
    result = invoke(*common, "--new", files["rotated"], "--adapter", wrong, "--out", tmp_path / "wrong")
    assert result.exit_code == 2 and "--adapter" in result.stderr
