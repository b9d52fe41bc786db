"""Gate checks through the production index: the policy's ``index`` key, the default policy's example,
the checks' cells equal to the index cells, and ``compat gate --index``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compat.compatibility.indexed import evaluate_index_cell
from compat.distributed import DistributedContext
from compat.errors import CompatError
from compat.gate import DEFAULT_POLICY, load_policy, run_gate
from compat.retrieval.evaluator import RetrievalEvaluator
from compat.retrieval.index import IndexSpec, build_index
from tests.gate.common import feature_set, invoke, policy, write_text

pytest.importorskip("faiss")


def _pair(n=400, d=16, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centres = rng.normal(size=(classes, d))
    ids = np.arange(n)
    old = feature_set(centres[labels] + 1.0 * rng.normal(size=(n, d)), labels, ids, "old")
    new = feature_set(centres[labels] + 0.6 * rng.normal(size=(n, d)), labels, ids, "new")
    return old, new


def test_a_check_names_its_index_and_needs_a_metric_a_list_defines(tmp_path):
    p = policy({"kind": "compatibility", "metric": "map@10", "threshold": 0,
                "index": {"factory": "IVF8,PQ4", "nprobe": 4}})
    assert p.checks[0].index == IndexSpec(factory="IVF8,PQ4", nprobe=4)
    for text, message in (
        ("{kind: compatibility, metric: map, threshold: 0, index: {factory: HNSW32}}", "needs the full ranking"),
        ("{kind: compatibility, threshold: 0, index: {nprobe: 4}}", "expected a factory"),
        ("{kind: compatibility, threshold: 0, index: {factory: Flat, probes: 2}}", "probes: unknown key"),
    ):
        with pytest.raises(CompatError, match=message):
            load_policy(write_text(tmp_path, "policy.yaml", f"checks:\n  - {text}\n"))


def test_the_default_policys_commented_example_is_a_valid_check(tmp_path):
    lines = DEFAULT_POLICY.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "name: compatibility-through-the-index" in line)
    example = [line[1:] for line in lines[start : start + 5]]
    p = load_policy(write_text(tmp_path, "policy.yaml", "checks:\n" + "\n".join(example) + "\n"))
    assert p.checks[0].index == IndexSpec(factory="IVF1024,PQ16", nprobe=16)


def test_index_checks_pair_the_index_cells_and_exact_checks_stay_exact():
    old, new = _pair()
    p = policy({"kind": "compatibility", "metric": "cmc@1", "threshold": 0},
               {"kind": "max_drop", "metric": "map", "threshold": 0.5})
    ev = RetrievalEvaluator(("cmc@1", "map"), device="cpu")
    spec = IndexSpec(factory="IVF8,Flat", nprobe=1)
    verdict = run_gate(old, new, p, evaluator=ev, index=spec, n_resamples=200)
    through, exact = verdict.checks
    assert through.index == spec and exact.index is None
    index = build_index(old.features, spec)
    cells = {c.key: c.value for c in through.cells}
    assert cells["new/old"] == pytest.approx(evaluate_index_cell(ev, new, old, index)["cmc@1"])
    assert cells["old/old"] == pytest.approx(evaluate_index_cell(ev, old, old, index)["cmc@1"])
    assert cells["new/old"] != pytest.approx(ev.evaluate(new, old)["cmc@1"])  # nprobe 1 of 8 lists loses some
    doc = through.to_json()
    assert doc["index"]["factory"] == "IVF8,Flat" and set(doc["index"]["recall"]) == {"new/old", "old/old"}
    assert "index" not in exact.to_json()


def test_gate_command_takes_an_index(tmp_path):
    old, new = _pair()
    from compat.features import save_features

    save_features(old, tmp_path / "old.npz")
    save_features(new, tmp_path / "new.npz")
    result = invoke("--old", tmp_path / "old.npz", "--new", tmp_path / "new.npz", "--index", "HNSW16",
                    "--ef-search", "32", "--n-resamples", "100", "--quiet", "--device", "cpu", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "g" / "gate.json").read_text())
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["compatibility"]["index"]["params"]["ef_search"] == 32
    assert "index" not in by_name["no-drop-on-older-galleries"]  # map needs the full ranking: exact
    assert "through the index HNSW16 (efSearch 32)" in (tmp_path / "g" / "gate.md").read_text()
    bad = invoke("--old", tmp_path / "old.npz", "--new", tmp_path / "new.npz", "--index", "IVF9999,Flat",
                 "--quiet", "--device", "cpu", "--out", tmp_path / "h")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "training on 400" in bad.stderr


def test_an_index_check_refuses_a_query_sample_and_several_ranks(tmp_path):
    old, new = _pair()
    from compat.features import save_features

    save_features(old, tmp_path / "old.npz")
    save_features(new, tmp_path / "new.npz")
    result = invoke("--old", tmp_path / "old.npz", "--new", tmp_path / "new.npz", "--index", "Flat",
                    "--query-sample", "100", "--quiet", "--device", "cpu", "--out", tmp_path / "g")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "index: an index is searched with every query; leave out --query-sample" in result.stderr
    assert not (tmp_path / "g" / "gate.json").exists()
    p = policy({"kind": "compatibility", "metric": "cmc@1", "threshold": 0})
    two_ranks = RetrievalEvaluator(("cmc@1",), device="cpu", dist=DistributedContext(0, 2, 0))
    with pytest.raises(CompatError, match="not over 2 torchrun ranks"):
        run_gate(old, new, p, evaluator=two_ranks, index=IndexSpec(factory="Flat"), n_resamples=200)
