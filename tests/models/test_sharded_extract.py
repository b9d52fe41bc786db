"""Sharded extraction: the shards of one process match a whole extraction; a re-run skips the complete
shards; an extraction stopped half-way resumes without redoing them (ranks: tests/test_distributed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compat.cli import cli
from compat.data import build_dataset, dataset_ids, dataset_labels
from compat.features import load_features
from compat.manifest import read_manifest
from compat.models import build_model, extract_model_file, extract_sharded, plan_shards, save_model

SHARD_ROWS = 300  # mnist-mini's 1000 test images: shards of 300, 300, 300 and 100


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    spec = {"backbone": "mlp", "feature_dim": 16, "head": "linear", "num_classes": 10,
            "backbone_kwargs": {"hidden": 32}}
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("model") / "model.pt", build_model(**spec), spec)


def extract_mnist_mini(model_file: Path, out: Path, dist=None, dataset=None) -> Path:
    ds = build_dataset("mnist-mini", split="test", train_transform=False)
    return extract_sharded(model_file, ds if dataset is None else dataset, labels=dataset_labels(ds),
                           ids=dataset_ids(ds), out=out, shard_rows=SHARD_ROWS, dist=dist, batch_size=128,
                           meta={"version": "v1"}, progress=False)


def test_plan_cuts_consecutive_shards():
    assert [(p.start, p.stop) for p in plan_shards(1000, 300)] == [(0, 300), (300, 600), (600, 900), (900, 1000)]


def test_shards_hold_the_whole_extraction(tmp_path, model_file):
    fs = load_features(extract_mnist_mini(model_file, tmp_path / "s").parent)
    whole = extract_model_file(model_file, build_dataset("mnist-mini", split="test", train_transform=False),
                               labels=fs.labels, ids=fs.ids, batch_size=128, progress=False)
    assert fs.n == 1000 and fs.meta["checkpoint"] == whole.meta["checkpoint"] and fs.meta["version"] == "v1"
    assert [s.rows for s in read_manifest(tmp_path / "s").shards] == [300, 300, 300, 100]
    np.testing.assert_allclose(np.asarray(fs.features), whole.features, rtol=1e-5, atol=1e-6)


class _Stops:
    """mnist-mini that counts the items read and fails on one of them (an extraction killed there)."""

    def __init__(self, stop_at: int | None):
        self.inner = build_dataset("mnist-mini", split="test", train_transform=False)
        self.stop_at, self.read = stop_at, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        if i == self.stop_at:
            raise KeyboardInterrupt
        self.read += 1
        return self.inner[i]


def test_a_stopped_extraction_resumes_without_redoing_finished_shards(tmp_path, model_file):
    clean = read_manifest(extract_mnist_mini(model_file, tmp_path / "clean"))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        extract_mnist_mini(model_file, out, dataset=_Stops(stop_at=450))  # in shard 1
    assert (out / ".shard-00000.json").is_file() and not (out / ".shard-00001.json").exists()
    assert not (out / "manifest.json").exists()
    done = (out / "shard-00000" / "features.npy").stat().st_mtime_ns
    again = _Stops(stop_at=None)
    resumed = read_manifest(extract_mnist_mini(model_file, out, dataset=again))
    assert again.read == 700  # shards 1, 2 and 3 only
    assert (out / "shard-00000" / "features.npy").stat().st_mtime_ns == done
    assert resumed == clean

    # A shard changed on disk no longer matches its record: it is extracted again.
    np.save(out / "shard-00002" / "labels.npy", np.zeros(300, dtype=np.int64))
    again = _Stops(stop_at=None)
    assert read_manifest(extract_mnist_mini(model_file, out, dataset=again)) == clean and again.read == 300


def test_extract_command_writes_a_sharded_set_and_skips_complete_shards(tmp_path, model_file):
    args = ["extract", "--checkpoint", str(model_file), "--data", "mnist-mini", "--out", str(tmp_path / "s"),
            "--shard-rows", "400", "--device", "cpu", "--quiet"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    doc = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert [s["rows"] for s in doc["shards"]] == [400, 400, 200]
    stamp = (tmp_path / "s" / "shard-00001" / "features.npy").stat().st_mtime_ns
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert (tmp_path / "s" / "shard-00001" / "features.npy").stat().st_mtime_ns == stamp
    bad = CliRunner().invoke(cli, [*args[:6], str(tmp_path / "x.npz"), *args[7:]])
    assert bad.exit_code == 2 and "directory" in bad.stderr
    external = CliRunner().invoke(cli, ["extract", "--model", "torchscript:m.pt", "--trust-model-code", "--data",
                                        "mnist-mini", "--out", str(tmp_path / "t"), "--shard-rows", "400",
                                        "--image-size", "28", "--mean", "0.5", "--std", "0.5", "--quiet"])
    assert external.exit_code == 2 and len(external.stderr.strip().splitlines()) == 1
    assert "a sharded extraction (--shard-rows or torchrun) takes a compat model file" in external.stderr
