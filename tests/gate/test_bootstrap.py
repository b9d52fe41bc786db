"""The paired bootstrap: against a slow loop, hand-computed cases and scipy; seeded; undefined resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compat.gate import (
    bootstrap_ci,
    resample_indices,
)
from compat.retrieval.evaluator import RetrievalEvaluator
from tests.gate.common import N


def _slow_percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    h = q * (len(s) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def test_bootstrap_matches_a_slow_loop() -> None:
    rng = np.random.default_rng(3)
    cols = np.stack([rng.integers(0, 2, 9), rng.random(9)], axis=1).astype(float)
    ci = bootstrap_ci(cols, lambda m: m[:, 0] - m[:, 1], n_resamples=301, seed=11)
    stats = []
    for batch in resample_indices(9, 301, seed=11):
        for row in batch:
            a = sum(cols[i, 0] for i in row) / len(row)
            b = sum(cols[i, 1] for i in row) / len(row)
            stats.append(a - b)
    assert len(stats) == 301
    assert ci.value == pytest.approx(cols[:, 0].mean() - cols[:, 1].mean(), abs=1e-12)
    assert ci.low == pytest.approx(_slow_percentile(stats, 0.025), abs=1e-12)
    assert ci.high == pytest.approx(_slow_percentile(stats, 0.975), abs=1e-12)
    assert (ci.n, ci.n_resamples, ci.confidence) == (9, 301, 0.95)


def test_bootstrap_hand_computed_cases() -> None:
    # Two queries, one hit: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so with
    # 400 resamples about 100 are 0 and 100 are 1: the 2.5th and 97.5th percentiles are exactly 0 and 1.
    ci = bootstrap_ci(np.array([[0.0], [1.0]]), lambda m: m[:, 0], n_resamples=400, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.5, 0.0, 1.0)
    # Every query gains the same: no uncertainty.
    ci = bootstrap_ci(np.array([[1.0, 0.75]] * 5), lambda m: m[:, 0] - m[:, 1], n_resamples=50, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.25, 0.25, 0.25)
    # One query: every resample is that query.
    ci = bootstrap_ci(np.array([[0.3]]), lambda m: m[:, 0], n_resamples=7, seed=0)
    assert ci.value == ci.low == ci.high == pytest.approx(0.3)


def test_bootstrap_agrees_with_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(5)
    a = (rng.random(80) < 0.7).astype(float)
    b = (rng.random(80) < 0.55).astype(float)
    ours = bootstrap_ci(np.stack([a, b], 1), lambda m: m[:, 0] - m[:, 1], n_resamples=20000, seed=1)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: x.mean(axis) - y.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="percentile",
        rng=np.random.default_rng(2),
    )
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.012)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.012)


def test_bootstrap_is_seeded() -> None:
    x = np.random.default_rng(0).random((50, 1))

    def mean(m: np.ndarray) -> np.ndarray:
        return m[:, 0]

    assert bootstrap_ci(x, mean, seed=4) == bootstrap_ci(x, mean, seed=4)
    assert bootstrap_ci(x, mean, seed=4).low != bootstrap_ci(x, mean, seed=5).low


def test_undefined_resamples_only_widen_the_interval() -> None:
    def defined_above_zero(m: np.ndarray) -> np.ndarray:
        return np.where(m[:, 0] > 0, m[:, 0], np.nan)

    # Four queries, two hits: 1/16 of the resamples have no hit, more than the 2.5% in each tail.
    ci = bootstrap_ci(np.array([[0.0], [1.0]] * 2), defined_above_zero, n_resamples=400, seed=0)
    assert (ci.value, ci.low, ci.high) == (0.5, -np.inf, np.inf)
    # Sixteen queries: 1 in 65536 resamples has no hit; the interval is the plain one.
    x = np.array([[0.0], [1.0]] * 8)
    ci = bootstrap_ci(x, defined_above_zero, n_resamples=400, seed=0)
    plain = bootstrap_ci(x, lambda m: m[:, 0], n_resamples=400, seed=0)
    assert (ci.low, ci.high) == (plain.low, plain.high)


@pytest.mark.parametrize("protocol", ["loo", "template"])
def test_retrieval_results_carry_per_query_values(sets, protocol) -> None:
    result = RetrievalEvaluator(("cmc@1", "cmc@5", "map"), protocol=protocol).evaluate(sets["good"], sets["old"])
    assert result.counted.shape == (N,) and result.counted.sum() == result.n_queries - result.n_without_positive
    for metric, value in result.values.items():
        per_query = result.per_query[metric]
        assert per_query.shape == (N,) and per_query[result.counted].mean() == pytest.approx(value, abs=1e-12)
    assert set(np.unique(result.per_query["cmc@1"])) <= {0.0, 1.0}
    pairs = RetrievalEvaluator(protocol="pairs", pairs=50).evaluate(sets["good"], sets["old"])
    assert pairs.per_query is None and pairs.counted is None
