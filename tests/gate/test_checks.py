"""The gate's checks on compatible, incompatible and noise-level candidates; pairing by query id; update gain; max drop; protocols."""

from __future__ import annotations

import numpy as np
import pytest

from compat.errors import CompatError
from compat.features import FeatureSet
from compat.gate import (
    load_policy,
    run_gate,
)
from compat.retrieval.evaluator import RetrievalEvaluator
from tests.gate.common import N, cell, policy


def test_compatible_candidate_passes(sets) -> None:
    verdict = run_gate(sets["old"], sets["good"], load_policy(), n_resamples=1000)
    assert verdict.passed and not verdict.failed
    by = {c.name: c for c in verdict.checks}
    compat = by["compatibility"]
    want = cell(sets["good"], sets["old"]) - cell(sets["old"], sets["old"])
    assert compat.value == pytest.approx(want, abs=1e-12) and compat.ci_low > 0
    assert compat.to_json()["cells"] == {
        "new/old": pytest.approx(cell(sets["good"], sets["old"])),
        "old/old": pytest.approx(cell(sets["old"], sets["old"])),
    }
    improvement = by["improvement"]
    assert improvement.value == pytest.approx(cell(sets["good"], sets["good"]) - cell(sets["old"], sets["old"]))
    drop = by["no-drop-on-older-galleries"]
    assert drop.value == pytest.approx(cell(sets["old"], sets["old"], "map") - cell(sets["good"], sets["old"], "map"))
    assert [d["gallery"] for d in drop.details] == ["old"]
    assert by["update-gain"].skipped and not by["update-gain"].required
    assert all(c.n_queries == N for c in verdict.checks if not c.skipped)


def test_incompatible_candidate_fails_although_better_on_its_own(sets) -> None:
    verdict = run_gate(sets["old"], sets["rotated"], load_policy(), n_resamples=1000)
    by = {c.name: c for c in verdict.checks}
    assert not verdict.passed
    assert by["improvement"].passed  # a better model...
    assert not by["compatibility"].passed and by["compatibility"].ci_high < 0  # ...that cannot search the old index
    assert not by["no-drop-on-older-galleries"].passed
    assert {c.name for c in verdict.failed} == {"compatibility", "no-drop-on-older-galleries"}


@pytest.mark.parametrize("k", range(6))
def test_noise_level_candidate_never_passes(sets, k) -> None:
    """The old model up to tiny noise: some point values come out above zero, no interval clears it."""
    checks = [
        {"kind": kind, "metric": m, "threshold": 0.0}
        for kind in ("compatibility", "improvement")
        for m in ("cmc@1", "cmc@5", "map")
    ]
    verdict = run_gate(sets["old"], sets[f"noisy{k}"], policy(*checks))
    assert not verdict.passed
    for c in verdict.checks:
        assert not c.passed and c.ci_low <= 0, c


def test_noise_with_a_positive_point_value_still_fails(sets) -> None:
    verdict = run_gate(sets["old"], sets["noisy5"], policy({"kind": "improvement", "threshold": 0.0}))
    (c,) = verdict.checks
    assert c.value > 0 and c.ci_low <= 0 and not c.passed


def test_identical_features_fail_strict_checks_and_pass_a_zero_drop(sets) -> None:
    p = policy({"kind": "compatibility", "threshold": 0.0}, {"kind": "max_drop", "threshold": 0.0})
    compat, drop = run_gate(sets["old"], sets["old"], p).checks
    assert (compat.value, compat.ci_low, compat.ci_high, compat.passed) == (0.0, 0.0, 0.0, False)
    assert (drop.value, drop.ci_high, drop.passed) == (0.0, 0.0, True)


def test_queries_are_paired_by_id_not_by_row(sets) -> None:
    g = sets["good"]
    perm = np.random.default_rng(0).permutation(N)
    shuffled = FeatureSet.from_arrays(g.features[perm], g.labels[perm], g.ids[perm], source="good")
    a = run_gate(sets["old"], g, load_policy(), n_resamples=500)
    b = run_gate(sets["old"], shuffled, load_policy(), n_resamples=500)
    for x, y in zip(a.checks, b.checks, strict=True):
        assert (x.value, x.ci_low, x.ci_high, x.passed) == (y.value, y.ci_low, y.ci_high, y.passed)


def test_update_gain_matches_its_formula(sets) -> None:
    p = policy({"kind": "update_gain", "threshold": 0.2, "metric": "map"})
    (c,) = run_gate(sets["old"], sets["good"], p, independent=sets["indep"], n_resamples=500).checks
    old_old = cell(sets["old"], sets["old"], "map")
    want = (cell(sets["good"], sets["old"], "map") - old_old) / (cell(sets["indep"], sets["indep"], "map") - old_old)
    assert c.value == pytest.approx(want, rel=1e-9)
    assert c.passed == (c.ci_low >= 0.2) and c.ci_low <= c.value <= c.ci_high
    assert {m.key for m in c.cells} == {"new/old", "old/old", "independent/independent"}


def test_update_gain_undefined_when_the_reference_is_no_better(sets) -> None:
    p = policy({"kind": "update_gain", "threshold": 0.0})
    (c,) = run_gate(sets["old"], sets["good"], p, independent=sets["old"], n_resamples=200).checks
    assert c.value is None and c.passed is False and "no better" in c.note


def test_required_update_gain_needs_an_independent_model(sets) -> None:
    with pytest.raises(CompatError, match="independent"):
        run_gate(sets["old"], sets["good"], policy({"kind": "update_gain", "threshold": 0.5}))


def test_max_drop_covers_every_older_gallery(sets) -> None:
    p = policy({"kind": "max_drop", "threshold": 0.2})
    (alone,) = run_gate(sets["old2"], sets["new2"], p, n_resamples=500).checks
    assert alone.passed
    (chained,) = run_gate(sets["old2"], sets["new2"], p, chain=[sets["chain0"]], n_resamples=500).checks
    assert not chained.passed
    drops = {d["gallery"]: d["drop"] for d in chained.details}
    assert set(drops) == {"chain[0]", "old"} and chained.value == pytest.approx(max(drops.values()))
    assert drops["chain[0]"] == pytest.approx(cell(sets["old2"], sets["chain0"]) - cell(sets["new2"], sets["chain0"]))
    assert drops["old"] == pytest.approx(alone.value)


def test_template_protocol(sets) -> None:
    evaluator = RetrievalEvaluator(("cmc@1", "map"), protocol="template")
    p = policy({"kind": "compatibility", "threshold": 0.0}, {"kind": "max_drop", "metric": "map", "threshold": 0.0})
    verdict = run_gate(sets["old"], sets["good"], p, evaluator=evaluator, n_resamples=500)
    assert verdict.passed and verdict.protocol == "template"
    want = cell(sets["good"], sets["old"], protocol="template") - cell(sets["old"], sets["old"], protocol="template")
    assert verdict.checks[0].value == pytest.approx(want)


def test_pairs_protocol_and_missing_metrics_are_refused(sets) -> None:
    with pytest.raises(CompatError, match="per-query"):
        run_gate(sets["old"], sets["good"], load_policy(), evaluator=RetrievalEvaluator(protocol="pairs"))
    with pytest.raises(CompatError, match="map"):
        run_gate(sets["old"], sets["good"], load_policy(), evaluator=RetrievalEvaluator(("cmc@1",)))
