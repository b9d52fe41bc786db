"""Numbers are never silently wrong: any finite feature normalises correctly; reports never hold NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compat.adapters.adapter import normalize_rows
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.jsontext import report_json
from compat.retrieval import RetrievalEvaluator
from compat.retrieval.normalize import unit_rows

N, C, D = 150, 5, 12


def _pair(scale: float) -> tuple[FeatureSet, FeatureSet]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C), N // C)
    centres = rng.normal(size=(C, D))
    old = (centres[labels] + rng.normal(size=(N, D))).astype(np.float32)
    new = (centres[labels] + 0.6 * rng.normal(size=(N, D))).astype(np.float32)
    return (FeatureSet.from_arrays(old * np.float32(scale), labels), FeatureSet.from_arrays(new * np.float32(scale), labels))


@pytest.mark.parametrize("scale", [1e30, 1e-30, 3e37])
@pytest.mark.parametrize(("protocol", "metrics"), [("loo", ("cmc@1", "cmc@5", "map")), ("template", ("cmc@1", "map")),
                                                   ("pairs", ("acc",))])
def test_cells_do_not_depend_on_the_scale_of_the_features(scale, protocol, metrics) -> None:
    """Cosine ignores the scale: features multiplied by 1e30 (finite in float32) give the same cells."""
    ev = RetrievalEvaluator(metrics, protocol=protocol)
    old, new = _pair(1.0)
    big_old, big_new = _pair(scale)
    assert ev.evaluate(big_new, big_old).values == pytest.approx(ev.evaluate(new, old).values, abs=1e-12)


def test_unit_rows_are_unit_however_large_or_small() -> None:
    x = np.array([[3e30, 4e30], [3e-30, 4e-30], [3.0, 4.0], [0.0, 0.0], [3.4e38, 3.4e38]], dtype=np.float32)
    u = unit_rows(x)
    np.testing.assert_allclose(u[:3], [[0.6, 0.8]] * 3, rtol=1e-6)
    assert (u[3] == 0).all() and np.allclose(u[4], [2**-0.5] * 2)
    np.testing.assert_array_equal(normalize_rows(x), u)  # the adapters normalise the same way


def test_l2_on_features_whose_distances_overflow_float32_is_refused() -> None:
    old, new = _pair(1e30)
    with pytest.raises(CompatError, match="l2 scores squared distances in float32"):
        RetrievalEvaluator(("cmc@1",), similarity="l2").evaluate(new, old)


def test_more_folds_than_pairs_is_refused_not_nan() -> None:
    with pytest.raises(CompatError, match="10 folds need at least 10 pairs"):
        RetrievalEvaluator(protocol="pairs", pairs=1, folds=10)


def test_reports_write_undefined_numbers_as_null() -> None:
    text = report_json({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "NaN"})
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": "NaN"}
    assert "Infinity" not in text and text.count("NaN") == 1  # only the string value
