"""``compat eval`` and ``compat gate`` under torchrun (gloo, CPU): the same reports as one process,
with ``ranks`` recorded; a sharded gallery with uneven shards and duplicates across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from compat.cli import cli
from compat.features import FeatureSet
from compat.manifest import save_sharded

pytestmark = pytest.mark.slow


def _versions(root):
    rng = np.random.default_rng(7)
    n = 230
    labels = rng.integers(0, 6, n)
    centres = rng.standard_normal((6, 12))
    paths = []
    for v, noise in (("v1", 1.2), ("v2", 0.9)):
        x = (centres[labels] + noise * rng.standard_normal((n, 12))).astype(np.float32)
        x[100], x[161] = x[99], x[3]  # duplicates across shard boundaries
        fs = FeatureSet.from_arrays(x, labels, np.arange(n) * 5, meta={"version": v})
        save_sharded(fs, root / v, shard_rows=61)  # shards of 61, 61, 61, 47 rows
        paths.append(root / v)
    return paths


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "compat.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)


def test_eval_and_gate_under_torchrun_equal_one_process(tmp_path):
    v1, v2 = _versions(tmp_path)
    common = ["--version", f"v1={v1}", "--version", f"v2={v2}", "--metric", "cmc@1", "--metric", "map",
              "--memory-budget", "1MiB", "--quiet", "--device", "cpu"]
    single = CliRunner().invoke(cli, ["eval", *common, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    run = _torchrun(3, "eval", *common, "--out", str(tmp_path / "three"))
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "compat.json").read_text())
    three = json.loads((tmp_path / "three" / "compat.json").read_text())
    assert (one.pop("ranks"), three.pop("ranks")) == (1, 3)
    assert three == one
    assert "computed by 3 ranks" in run.stdout.lower() and run.stdout.count("reports written") == 1

    gate = ["--old", str(v1), "--new", str(v2), "--n-resamples", "200", "--quiet", "--device", "cpu"]
    single = CliRunner().invoke(cli, ["gate", *gate, "--out", str(tmp_path / "g1")])
    run = _torchrun(2, "gate", *gate, "--out", str(tmp_path / "g2"))
    assert run.returncode == single.exit_code, run.stderr[-3000:]
    one = json.loads((tmp_path / "g1" / "gate.json").read_text())
    two = json.loads((tmp_path / "g2" / "gate.json").read_text())
    assert (one.pop("ranks"), two.pop("ranks")) == (1, 2)
    assert two == one


def test_a_bad_shard_under_torchrun_is_one_line_and_exit_2(tmp_path):
    v1, _ = _versions(tmp_path)
    (v1 / "shard-00002" / "labels.npy").write_bytes(b"not an array")
    run = _torchrun(2, "eval", "--version", f"v1={v1}", "--out", str(tmp_path / "r"), "--quiet", "--device", "cpu")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("compat: error:")]
    assert len(errors) == 1 and "shard-00002" in errors[0], run.stderr[-2000:]
    assert not (tmp_path / "r").exists()
