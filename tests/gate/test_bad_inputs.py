"""Bad input to ``compat gate``: every evaluator bad input and the gate's own, exit 2 with one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compat.features import FeatureSet, save_features
from tests.cli import test_eval as eval_cases
from tests.gate.common import assert_one_line_exit_2, invoke, write_text

# Cases of the evaluator's list that have no meaning for the gate: version names (the gate's inputs
# are --old / --new), separate query sets (the gate has none) and the pairs protocol (no per-query values).
NOT_FOR_GATE = {"version-twice", "query-unknown-version", "nan-in-query-set", "metric-not-for-protocol"}
GATE_NAMES = {"v1": "old", "v2": "new"}  # version names in the expected messages -> the gate's labels


def to_gate(args: list[str], expect: list[str], tmp: Path) -> tuple[list[str], list[str]]:
    """An evaluator command line as a gate command line: versions become --chain ... --old --new, metrics
    a policy file, other options pass through."""
    sources, metrics, rest = [], [], []
    it = iter(args)
    for arg in it:
        value = next(it)
        if arg == "--version":
            sources.append(value.partition("=")[2])
        elif arg == "--metric":
            metrics.append(value)
        else:
            rest += [arg, value]
    *chain, old, new = sources
    out = [f"--chain={s}" for s in chain] + ["--old", old, "--new", new, *rest]
    if metrics:
        p = tmp / "metrics-policy.yaml"
        p.write_text(
            json.dumps({"checks": [{"kind": "improvement", "metric": m, "threshold": 0} for m in metrics]}),
            encoding="utf-8",
        )
        out += ["--policy", str(p)]
    return out, [GATE_NAMES.get(e, e) for e in expect]


EVAL_BAD_INPUTS = [p for p in eval_cases.BAD_INPUTS if p.id not in NOT_FOR_GATE]


def test_every_evaluator_bad_input_is_covered() -> None:
    assert len(EVAL_BAD_INPUTS) == len(eval_cases.BAD_INPUTS) - len(NOT_FOR_GATE) >= 25


@pytest.mark.parametrize("build", EVAL_BAD_INPUTS)
def test_evaluator_bad_inputs_through_the_gate(data, tmp_path, build) -> None:
    args, expect = build(tmp_path, data)
    gate_args, expect = to_gate(args, expect, tmp_path)
    out = tmp_path / "out"
    assert_one_line_exit_2(invoke(*gate_args, "--out", out), out, expect)


GATE_BAD_INPUTS = [
    pytest.param(["--policy", "{tmp}/nope.yaml"], ["nope.yaml", "policy"], id="missing-policy"),
    pytest.param(["--chain", "{tmp}/nope.npz"], ["nope.npz"], id="missing-chain-file"),
    pytest.param(["--independent", "{tmp}/nope.npz"], ["nope.npz"], id="missing-independent"),
    pytest.param(["--policy", "{required_gain}"], ["update_gain cmc@1", "--independent"], id="required-gain-alone"),
    pytest.param(["--promote", "prod"], ["--promote", "feature set"], id="promote-features"),
    pytest.param(["--new", "{tmp}/model.pt"], ["--new", "model.pt", "--dataset"], id="model-without-dataset"),
    pytest.param(["--new", "models:/prod"], ["models:/prod", "models:/NAME@ALIAS"], id="bad-model-uri"),
    pytest.param(["--new", "models:/prod/0", "--dataset", "mnist-mini"], ["models:/prod/0"], id="version-zero"),
    pytest.param(["--independent", "{str_ids}"], ["ids", "integers", "strings"], id="id-kinds-differ"),
]


@pytest.mark.parametrize(("extra", "expect"), GATE_BAD_INPUTS)
def test_gate_bad_inputs(files, sets, tmp_path, extra, expect) -> None:
    required_gain = write_text(tmp_path, "gain.yaml", "checks: [{kind: update_gain, threshold: 0.5}]\n")
    g = sets["indep"]
    str_ids = save_features(FeatureSet.from_arrays(g.features, g.labels, g.ids.astype(str)), tmp_path / "s.npz")
    fill = {"tmp": tmp_path, "required_gain": required_gain, "str_ids": str_ids}
    extra = [e.format(**fill) for e in extra]
    args = {"--old": str(files["old"]), "--new": str(files["good"])}
    rest = []
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        if key in args:
            args[key] = value
        else:
            rest += [key, value]
    out = tmp_path / "out"
    result = invoke(*[x for kv in args.items() for x in kv], *rest, "--out", out)
    assert_one_line_exit_2(result, out, expect)
