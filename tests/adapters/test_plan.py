"""Backfill plans: the streamed order, the predicted curve, budgets, targets, flattening, ``compat plan-backfill``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compat.adapters import AdapterConfig, backfill_order, evaluate_with_adapters, fit_adapter
from compat.adapters.orderings import random_keys
from compat.adapters.plan import PlanSettings, plan_backfill
from compat.adapters.plan_goals import flattening_index, parse_budget, parse_target, target_index
from compat.adapters.plan_order import StreamSizes, write_plan_order
from compat.adapters.plan_report import write_plan
from compat.cli import cli
from compat.compatibility import Version
from compat.errors import CompatError
from compat.external_sort import ExternalSort
from compat.features import FeatureSet, save_features
from compat.gate import bootstrap_ci
from compat.retrieval import RetrievalEvaluator
from compat.stored import open_stored

TINY = StreamSizes(budget=1 << 20, dim=2, block_rows=3, run_rows=4, merge_rows=3)  # many blocks, runs, merge steps


def _ids(path: Path) -> list[str]:
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert rows[0] == ["id"]
    return [r[0] for r in rows[1:]]


def _order(gallery: FeatureSet, ordering: str, tmp_path: Path, *, sizes=TINY, seed: int = 0, sample=None):
    """The streamed plan of ``gallery`` (stored as a .npy directory): (ids in plan order, PlanOrder)."""
    stored = open_stored(save_features(gallery, tmp_path / f"gallery-{ordering}"))
    out = tmp_path / f"{ordering}.csv"
    order = write_plan_order(stored, ordering, out, sample=sample or gallery, gallery_map=lambda x: x, seed=seed,
                             tmp_dir=tmp_path, memory_budget=1 << 20, sizes=sizes)
    return _ids(out), order


# ---------------------------------------------------------------- the order


HAND = FeatureSet.from_arrays(
    # class 0 around (1, 0): two mirrored pairs; class 1 around (0, 1): a mirrored pair and the axis itself
    [[0.8, 0.6], [0.8, -0.6], [0.98, 0.2], [0.98, -0.2], [0.28, 0.96], [-0.28, 0.96], [0.0, 1.0]],
    [0, 0, 0, 0, 1, 1, 1], [17, 11, 15, 12, 19, 13, 10],
)


def _splitmix(z: int) -> int:
    """The reference: splitmix64's finaliser on Python integers."""
    mask = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize(("ordering", "rows"), [
    # cosine distance to the class mean: rows 0, 1 at 0.2 (tie: lower row first), 4, 5 at 0.04, 2, 3 at 0.0202, 6 at 0
    ("farthest", [0, 1, 4, 5, 2, 3, 6]),
    # two classes with means (1, 0) and (0, 1): the smaller |cos0 - cos1|, the higher the entropy:
    # row 0 0.2, row 4 0.68, row 2 0.78, row 6 1.0, row 3 1.18, row 5 1.24, row 1 1.4
    ("uncertainty", [0, 4, 2, 6, 3, 5, 1]),
])
def test_plan_order_is_the_orderings_order_on_a_hand_made_gallery(tmp_path, ordering, rows):
    ids, order = _order(HAND, ordering, tmp_path)
    expected = [str(HAND.ids[r]) for r in rows]
    assert ids == expected
    assert [str(i) for i in HAND.ids[backfill_order(ordering, HAND.features, HAND.labels)]] == expected
    assert order.runs > 1 and order.positions.tolist() == [expected.index(str(i)) for i in HAND.ids]


def test_random_plan_sorts_by_a_seeded_hash_of_the_ids(tmp_path):
    seed = 3
    salt = _splitmix((seed + 0x9E3779B97F4A7C15) & ((1 << 64) - 1))
    keys = {int(i): _splitmix(int(i) ^ salt) for i in HAND.ids}
    expected = [str(i) for i in sorted(keys, key=keys.get)]
    ids, _ = _order(HAND, "random", tmp_path, seed=seed)
    assert ids == expected
    assert [str(i) for i in HAND.ids[backfill_order("random", HAND.features, HAND.labels, ids=HAND.ids, seed=seed)]] \
        == expected
    # the key is the item's: another row order or another gallery gives the same relative order
    assert random_keys(HAND.ids[::-1], seed).tolist() == [keys[int(i)] for i in HAND.ids[::-1]]


@pytest.mark.parametrize("ordering", ["random", "farthest", "uncertainty"])
@pytest.mark.parametrize("string_ids", [False, True])
def test_streamed_order_equals_backfill_order_across_blocks_and_runs(tmp_path, ordering, string_ids):
    rng = np.random.default_rng(5)
    n = 1500
    labels = rng.integers(0, 7, n)
    ids = rng.permutation(np.arange(100_000, 100_000 + n))
    ids = np.char.add("item-", ids.astype(str)) if string_ids else ids
    gallery = FeatureSet.from_arrays(rng.normal(size=(7, 6))[labels] + rng.normal(size=(n, 6)), labels, ids)
    sample = FeatureSet.from_arrays(gallery.features[::7], labels[::7], ids[::7])
    sizes = StreamSizes(budget=1 << 20, dim=6, block_rows=97, run_rows=200, merge_rows=150)
    got, order = _order(gallery, ordering, tmp_path, sizes=sizes, sample=sample)
    expected = ids[backfill_order(ordering, gallery.features, labels, ids=ids)]
    assert got == [str(i) for i in expected]
    assert order.runs == 8 and order.max_difference == (None if ordering == "random" else 0.0)
    position = {i: k for k, i in enumerate(got)}
    assert order.positions.tolist() == [position[str(i)] for i in sample.ids]


def test_external_sort_against_a_sort_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    records = np.zeros(5003, dtype=[("key", np.float64), ("row", np.int64), ("id", np.int64)])
    records["key"] = rng.integers(0, 50, len(records))  # many ties: broken by row
    records["row"] = np.arange(len(records))
    records["id"] = rng.permutation(len(records))
    with ExternalSort(records.dtype, tmp_path, run_rows=611, merge_rows=64) as sorter:
        for start in range(0, len(records), 1000):
            sorter.add(records[start : start + 1000])
        merged = np.concatenate(list(sorter.merged()))
        assert sorter.runs == 9
    np.testing.assert_array_equal(merged, records[np.lexsort((records["row"], records["key"]))])
    assert list(tmp_path.iterdir()) == []  # the runs are removed


# ---------------------------------------------------------------- the prediction


def _pair(n: int = 240, *, d_old: int = 8, d_new: int = 12, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 6
    old = np.random.default_rng(1).normal(size=(6, d_old))[labels] + 1.3 * rng.normal(size=(n, d_old))
    new = np.random.default_rng(2).normal(size=(6, d_new))[labels] + 0.6 * rng.normal(size=(n, d_new))
    ids = np.arange(n) + 500
    return FeatureSet.from_arrays(old, labels, ids), FeatureSet.from_arrays(new, labels, ids)


EVALUATOR = RetrievalEvaluator(("cmc@1", "map"))


def _plan(tmp_path, old, new, settings, adapter=None, gallery=None):
    return plan_backfill(gallery or old, old, new, settings, evaluator=EVALUATOR, csv_path=tmp_path / "plan.csv",
                         adapter=adapter)


@pytest.mark.parametrize("ordering", ["random", "farthest", "uncertainty"])
def test_predicted_curve_equals_the_evaluators_backfill_curve_on_the_same_data(tmp_path, ordering):
    old, new = _pair()
    plan = _plan(tmp_path, old, new, PlanSettings(ordering, points=6, dim_policy="truncate", n_resamples=50))
    (result,) = evaluate_with_adapters([Version("v0", old), Version("v1", new)], EVALUATOR, dim_policy="truncate",
                                       backfill=[ordering], backfill_points=6).backfill
    curve = result.curves[0]
    assert [p.fraction for p in plan.curve] == list(curve.betas)
    for m in ("cmc@1", "map"):
        assert [p.values[m].value for p in plan.curve] == curve.values[m]
    assert [p.items for p in plan.curve] == [0, 48, 96, 144, 192, 240]


@pytest.mark.parametrize("forward", [True, False])
def test_predicted_curve_with_an_adapter_equals_the_adapted_backfill_curve(tmp_path, forward):
    old, new = _pair()
    adapter = fit_adapter(new, old, AdapterConfig(kind="procrustes", forward="affine", epochs=1, batch_size=64))
    plan = _plan(tmp_path, old, new, PlanSettings("farthest", points=5, forward=forward, n_resamples=50), adapter)
    results = evaluate_with_adapters([Version("v0", old), Version("v1", new)], EVALUATOR, {("v1", "v0"): adapter},
                                     backfill=["farthest"], backfill_points=5).backfill
    (result,) = [r for r in results if r.start is plan.start]
    assert plan.start.value == ("B(new)/F(old)" if forward else "B(new)/old")
    for m in ("cmc@1", "map"):
        assert [p.values[m].value for p in plan.curve] == result.curves[0].values[m]


def test_a_sample_predicts_with_the_plans_positions_and_a_bootstrap_band(tmp_path):
    gallery, _ = _pair(600, seed=3)
    old, new = _pair(600, seed=3)
    keep = np.arange(0, 600, 4)  # the sample: every fourth gallery item
    old = FeatureSet.from_arrays(old.features[keep], old.labels[keep], old.ids[keep])
    new = FeatureSet.from_arrays(new.features[keep], new.labels[keep], new.ids[keep])
    settings = PlanSettings("farthest", points=5, dim_policy="truncate", n_resamples=300, budget=parse_budget("30%"))
    plan = _plan(tmp_path, old, new, settings, gallery=gallery)
    plan_ids = np.array(_ids(tmp_path / "plan.csv"), dtype=np.int64)
    assert len(plan_ids) == 600 and plan.budget.items == 180
    position = {int(i): k for k, i in enumerate(plan_ids)}
    reached = np.array([position[int(i)] < 180 for i in old.ids])  # sample items within the first 30% of the plan
    mixed = old.features[:, :8].copy()
    mixed[reached] = new.features[reached, :8]
    by_hand = EVALUATOR.evaluate_arrays(new.features[:, :8], old.labels, old.ids, mixed, old.labels, old.ids)
    band = bootstrap_ci(by_hand.per_query["map"][by_hand.counted][:, None], lambda means: means[:, 0],
                        n_resamples=300, seed=0)
    got = plan.budget.values["map"]
    assert (got.value, got.low, got.high) == (by_hand["map"], band.low, band.high)
    assert plan.budget.sample_items == int(reached.sum()) and got.low < got.value < got.high


# ---------------------------------------------------------------- budgets, targets, flattening


def test_budget_target_and_flattening_rules():
    assert parse_budget("20%").items(1000) == 200 and parse_budget("37").items(1000) == 37
    assert parse_target("cmc@1>=0.95").text == "cmc@1>=0.95" and parse_target("top1 > 95%").threshold == 0.95
    for bad in ("cmc@1=0.9", "cmc@1>=1.5", "recall>=0.5", ">=0.5", "cmc@1>=x"):
        with pytest.raises(CompatError, match="--target|metric"):
            parse_target(bad)
    for bad in ("120%", "-3", "a lot"):
        with pytest.raises(CompatError, match="--budget"):
            parse_budget(bad)
    with pytest.raises(CompatError, match="more items than"):
        parse_budget("1001").items(1000)
    values = [0.5, 0.8, 0.9, 0.903, 0.902, 0.904]
    assert target_index(values, parse_target("map>=0.9")) == 2 and target_index(values, parse_target("map>0.9")) == 3
    assert target_index(values, parse_target("map>=0.95")) is None
    # remaining gains: 0.404, 0.104, 0.004, 0.001, 0.002, 0: flat from the third point on
    assert flattening_index(values, 0.005) == 2 and flattening_index(values, 0.0) == 5
    assert flattening_index([0.5, 0.9, 0.7, 0.95], 0.1) == 1  # later dips do not count as gains


def test_target_fraction_is_the_smallest_grid_point_that_reaches_it(tmp_path):
    old, new = _pair()
    base = PlanSettings("farthest", points=6, dim_policy="truncate", n_resamples=50)
    values = [p.values["cmc@1"].value for p in _plan(tmp_path, old, new, base).curve]
    threshold = sorted(set(values))[-2]  # reached by some points, not all
    first = next(k for k, v in enumerate(values) if v >= threshold)
    plan = _plan(tmp_path, old, new, PlanSettings("farthest", points=6, dim_policy="truncate", n_resamples=50,
                                                  target=parse_target(f"cmc@1>={threshold!r}")))
    assert plan.reachable and plan.target.fraction == plan.curve[first].fraction and 0 < first
    assert plan.re_extract == plan.curve[first].items and plan.flat_metric == "cmc@1"


# ---------------------------------------------------------------- compat plan-backfill


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    old, new = _pair()
    return {"gallery": save_features(old, tmp_path / "gallery"), "old": save_features(old, tmp_path / "old.npz"),
            "new": save_features(new, tmp_path / "new.npz")}


def _run(files, out, *extra):
    args = ["plan-backfill", "--gallery", files["gallery"], "--old", files["old"], "--new", files["new"],
            "--ordering", "farthest", "--dim-policy", "truncate", "--points", "5", "--n-resamples", "50",
            "--out", out, *extra]
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_writes_the_plan_and_exits_1_on_an_unreachable_target(files, tmp_path):
    out = tmp_path / "plan"
    result = _run(files, out, "--budget", "25%")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["plan.csv", "plan.json", "plan.md", "plan.png"]
    doc = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    assert doc["plan"] == {"file": "plan.csv", "rows": 240, "re_extract": 60, "runs": 1}
    assert doc["budget"]["items"] == 60 and doc["target"] is None and len(doc["curve"]) == 5
    assert "prediction made on the evaluation sample" in doc["prediction"]
    assert "re-extract the first 60 ids" in result.output and len(_ids(out / "plan.csv")) == 240
    unreachable = tmp_path / "unreachable"
    result = _run(files, unreachable, "--target", "cmc@1>1")
    assert result.exit_code == 1, result.output
    doc = json.loads((unreachable / "plan.json").read_text(encoding="utf-8"))
    assert doc["target"]["reachable"] is False and doc["plan"]["re_extract"] is None
    assert "not reachable" in (unreachable / "plan.md").read_text(encoding="utf-8")


def test_cli_bad_inputs_exit_2_with_one_line(files, tmp_path):
    old, _ = _pair()
    stranger = FeatureSet.from_arrays(old.features, old.labels, old.ids + 10_000)
    files_bad = dict(files, old=save_features(stranger, tmp_path / "stranger.npz"))
    dup = tmp_path / "dup"
    save_features(old, dup)
    ids = np.load(dup / "ids.npy")
    ids[-1] = ids[0]
    np.save(dup / "ids.npy", ids)
    cases = [
        (files_bad, ["--budget", "20%"], "not in the gallery"),
        (files, ["--target", "cmc@1=>0.9"], "--target"),
        (files, ["--budget", "120%"], "between 0% and 100%"),
        (files, ["--budget", "241"], "more items than"),
        (files, [], "give exactly one"),
        (files, ["--budget", "5", "--target", "map>=0.5"], "give exactly one"),
        (dict(files, gallery=dup), ["--budget", "5"], "must be unique"),
        (files, ["--budget", "5", "--dim-policy", "error"], "feature sizes differ"),  # the last value wins
    ]
    for inputs, extra, message in cases:
        out = tmp_path / "out"
        result = _run(inputs, out, *extra)
        assert result.exit_code == 2, (extra, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("compat: error: ") and message in lines[0], (extra, lines)
        assert not out.exists() or not any(out.iterdir())


def test_write_plan_is_all_or_nothing_and_reads_a_npz_gallery(tmp_path):
    old, new = _pair(120)
    gallery = save_features(old, tmp_path / "gallery.npz")
    plan, written = write_plan(gallery, old, new, PlanSettings("uncertainty", budget=parse_budget("10"), points=3,
                                                               dim_policy="pad", n_resamples=20),
                               tmp_path / "out", evaluator=EVALUATOR)
    assert [p.name for p in written] == ["plan.csv", "plan.json", "plan.md", "plan.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["plan.csv", "plan.json", "plan.md", "plan.png"]
    assert plan.max_difference == 0.0 and plan.budget.items == 10


def test_cli_extracts_the_sample_with_model_files(tmp_path, monkeypatch):
    """--old / --new as model files embedded on --dataset (the gate's sources), the gallery as stored features."""
    import torch

    from compat.gate import ExtractionSpec, load_source
    from compat.models import backbones, build_model, save_model
    from tests.gate.common import BACKBONE, Pixels

    monkeypatch.setitem(backbones.BACKBONES._entries, BACKBONE, Pixels)
    spec = {"backbone": BACKBONE, "feature_dim": None, "head": "linear", "num_classes": 10}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_model(tmp_path / f"m{seed}.pt", build_model(**spec), spec))
    stored = load_source(paths[0], option="--old", extraction=ExtractionSpec("mnist-mini", progress=False))
    gallery = save_features(stored, tmp_path / "gallery")
    out = tmp_path / "plan"
    result = CliRunner().invoke(cli, [str(a) for a in (
        "plan-backfill", "--gallery", gallery, "--old", paths[0], "--new", paths[1], "--dataset", "mnist-mini",
        "--ordering", "uncertainty", "--budget", "10%", "--points", 3, "--n-resamples", 20, "--quiet", "--out", out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    assert doc["sample"]["n"] == doc["gallery"]["n"] == 1000 and doc["sample"]["max_difference"] == 0.0
    assert doc["sample"]["new"] == str(paths[1]) and doc["budget"]["items"] == 100
