"""What the gate's tests share: sizes, expected keys, small helpers and the tiny pixel backbone."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result
from torch import nn

from compat.cli import cli
from compat.features import FeatureSet
from compat.gate import (
    GatePolicy,
)
from compat.retrieval.evaluator import RetrievalEvaluator

N, C, D = 300, 6, 16  # items, classes (50 each), feature size
CHECK_KEYS = {
    "name",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "passed",
    "required",
    "metric",
    "kind",
    "rule",
    "skipped",
    "n_queries",
    "cells",
}
PASS_ON_TIES = "checks:\n  - {kind: max_drop, metric: cmc@1, threshold: 0.0}\n"  # identical models pass this


def feature_set(x: np.ndarray, labels: np.ndarray, ids: np.ndarray, name: str) -> FeatureSet:
    return FeatureSet.from_arrays(x, labels, ids, meta={"version": name}, source=name)


def policy(*checks: dict, confidence: float = 0.95) -> GatePolicy:
    return GatePolicy.model_validate({"confidence": confidence, "checks": list(checks)})


def cell(query: FeatureSet, gallery: FeatureSet, metric: str = "cmc@1", protocol: str = "loo") -> float:
    return RetrievalEvaluator((metric,), protocol=protocol).evaluate(query, gallery)[metric]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["gate", *map(str, args)])


def check_files(out: Path) -> dict:
    assert sorted(p.name for p in out.iterdir()) == ["gate.json", "gate.md"]  # nothing temporary left
    doc = json.loads((out / "gate.json").read_text(encoding="utf-8"))
    assert isinstance(doc["passed"], bool) and doc["checks"]
    for c in doc["checks"]:
        assert CHECK_KEYS <= set(c), c
        if c["skipped"]:
            assert c["passed"] is None and c["value"] is None
            continue
        assert isinstance(c["passed"], bool) and all(isinstance(c[k], float) for k in ("value", "ci_low", "ci_high"))
        assert c["ci_low"] <= c["value"] <= c["ci_high"]
    assert doc["passed"] == all(c["passed"] for c in doc["checks"] if c["required"])
    assert {"old", "new"} <= set(doc["inputs"]) and doc["confidence"] == 0.95
    md = (out / "gate.md").read_text(encoding="utf-8")
    assert md.startswith("## compat gate: " + ("PASSED" if doc["passed"] else "FAILED"))
    for c in doc["checks"]:
        assert f"| {c['name']} | {c['metric']} |" in md
    return doc


def assert_one_line_exit_2(result: Result, out: Path, expect: list[str]) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compat: error: "), result.stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])
    assert result.stdout == ""


def write_text(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


BACKBONE = "gate-test-pixels"


class Pixels(nn.Module):
    """A fixed random projection of the pixels: a model that embeds the MNIST subset in milliseconds."""

    out_dim = 24

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, self.out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images)


def policy_file(tmp: Path, text: str = PASS_ON_TIES) -> Path:
    return write_text(tmp, "policy.yaml", text)


class Trap:
    """Unpickling this would create a file: a weights_only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_checkpoint(kind: str, tmp: Path, models: dict[str, Path]) -> Path:
    p = tmp / f"{kind}.pt"
    if kind == "random-bytes":
        p.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "pickle-trap":
        torch.save({"model": {}, "spec": Trap(tmp / "trap-fired")}, p)
    elif kind == "plain-pickle":
        p.write_bytes(pickle.dumps(Trap(tmp / "trap-fired")))
    elif kind == "no-spec":
        torch.save({"model": {}}, p)
    elif kind == "bad-spec":
        torch.save({"model": {}, "spec": {"backbone": BACKBONE, "wings": 2}}, p)
    elif kind == "weights-mismatch":
        state = torch.load(models["m0"], weights_only=True)
        state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
        torch.save(state, p)
    return p


def aliases(client, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
