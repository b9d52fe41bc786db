"""Adapters on frozen features (B_perp, B_lambda, Procrustes, F), their files, partial backfilling,
``compat adapt`` / ``compat eval --adapter`` and the adapter recipe."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compat.adapters import (
    AdapterCell,
    AdapterConfig,
    LambdaAdapter,
    PerpAdapter,
    backfill_order,
    beta_grid,
    evaluate_with_adapters,
    fit_adapter,
    lambda_orthogonality,
    load_adapter,
    mix_gallery,
    procrustes,
    save_adapter,
    supervised_contrastive,
    trapezoid_area,
)
from compat.adapters.losses import orthogonality_gap, squared_distance
from compat.cli import cli
from compat.compatibility import Version
from compat.errors import CompatError
from compat.features import FeatureSet, load_features, save_features
from compat.retrieval import RetrievalEvaluator
from tests.cli_runs import train_recipe_text
from tests.paths import RECIPES


def _pair(n: int, *, d_old: int = 8, d_new: int = 12, seed: int = 0, id_offset: int = 0,
          classes: int = 4) -> tuple[FeatureSet, FeatureSet]:
    """Old and new features of the same items: class clusters in unrelated spaces, the new ones tighter."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centers_old = np.random.default_rng(100).normal(size=(classes, d_old))
    centers_new = np.random.default_rng(200).normal(size=(classes, d_new))
    old = centers_old[labels] + 0.8 * rng.normal(size=(n, d_old))
    new = centers_new[labels] + 0.3 * rng.normal(size=(n, d_new))
    ids = np.arange(n) + id_offset
    return (FeatureSet.from_arrays(old, labels, ids, meta={"version": "v0"}),
            FeatureSet.from_arrays(new, labels, ids, meta={"version": "v1"}))


FAST = {"epochs": 2, "batch_size": 64, "hidden": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    """The matrices here are tiny: several threads on a busy machine only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the maps and losses


def _random_orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_perp_stays_orthogonal_after_training_steps():
    torch.manual_seed(0)
    b = PerpAdapter(10, init=_random_orthogonal(10, 1))
    target = torch.randn(10, 10)  # a non-orthogonal target pulls hard on the parameters
    opt = torch.optim.Adam(b.parameters(), lr=0.1)
    x = torch.randn(64, 10)
    for _ in range(30):
        loss = squared_distance(b(x), x @ target.T)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = b.weight.detach().double()
    assert not torch.allclose(q, torch.as_tensor(_random_orthogonal(10, 1)), atol=1e-2)  # it did move
    assert (q @ q.T - torch.eye(10, dtype=torch.float64)).abs().max() < 1e-5


def test_trained_perp_adapter_is_orthogonal():
    old, new = _pair(256)
    adapter = fit_adapter(new, old, AdapterConfig(kind="perp", init="identity", **FAST))
    w = adapter.backward.weight.double()
    assert (w @ w.T - torch.eye(8, dtype=torch.float64)).abs().max() < 1e-5
    assert adapter.info.training["orthogonality_gap"] < 1e-5
    assert adapter.backward.bias is None


def test_lambda_regulariser_matches_a_hand_computation():
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # W W^T - I = diag(3, 0): distance 3
    assert float(orthogonality_gap(w)) == pytest.approx(3.0)
    for lam, alpha in ((1.0, 10.0), (0.0, 10.0), (2.5, 2.0), (3.0, 1.0)):
        want = 3.0 / (1.0 + math.exp(-alpha * (3.0 - lam)))
        assert float(lambda_orthogonality(w, lam, alpha=alpha)) == pytest.approx(want, rel=1e-6)
    # off-diagonal terms: W = [[1, 1], [0, 1]] -> W W^T - I = [[1, 1], [1, 0]], distance sqrt(3)
    w2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    want = math.sqrt(3) / (1 + math.exp(-10 * math.sqrt(3)))
    assert float(lambda_orthogonality(w2, 0.0)) == pytest.approx(want, rel=1e-6)


def test_lambda_regulariser_switches_off_below_lambda():
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)  # distance 3
    inside = lambda_orthogonality(w, 12.0)
    assert float(inside.detach()) < 1e-30
    inside.backward()
    assert float(w.grad.abs().max()) < 1e-30
    assert float(lambda_orthogonality(w, math.inf).detach()) == 0.0  # unconstrained
    assert float(lambda_orthogonality(torch.eye(3), 0.0)) == 0.0  # soft orthogonality: 0 at an orthogonal W
    outside = lambda_orthogonality(w, 0.5).detach()
    assert float(outside) == pytest.approx(3.0, rel=1e-9)  # far outside: the distance itself


def test_the_default_radius_is_soft_orthogonality():
    # Chosen on Fashion-MNIST's validation split (docs/methods.md, "Choosing lambda"): lambda = 0.
    cfg = AdapterConfig(kind="lambda")
    assert cfg.lam == 0.0
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # ||W W^T - I||_F = 3, penalised by 3 / (1 + e^-30)
    assert float(lambda_orthogonality(w, cfg.lam, alpha=cfg.alpha)) == pytest.approx(3.0 / (1 + math.exp(-30.0)))


def test_lambda_adapter_regulariser_and_identity_start():
    b = LambdaAdapter(4, lam=0.0)
    torch.testing.assert_close(b.weight, torch.eye(4))
    assert float(b.regularizer().detach()) == 0.0
    with pytest.raises(CompatError, match="radius"):
        LambdaAdapter(4, lam=-1.0)


def test_supervised_contrastive_matches_a_loop():
    torch.manual_seed(0)
    a, k = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    tau = 0.5
    total = 0.0
    for i in range(6):
        s = [float(torch.nn.functional.cosine_similarity(a[i], k[j], dim=0)) / tau for j in range(6)]
        log_z = math.log(sum(math.exp(v) for v in s))
        pos = [j for j in range(6) if y[j] == y[i]]
        total += -sum(s[j] - log_z for j in pos) / len(pos)
    assert float(supervised_contrastive(a, k, y, temperature=tau)) == pytest.approx(total / 6, rel=1e-5)


@pytest.mark.parametrize("kind", ["perp", "lambda", "procrustes"])
def test_every_kind_gives_finite_gradients_and_zero_loss_at_a_perfect_fit(kind):
    from compat.adapters.fit import _backward, _losses
    from compat.adapters.modules import build_forward

    torch.manual_seed(0)
    cfg = AdapterConfig(kind=kind, lam=0.0)
    h_new = torch.nn.functional.normalize(torch.randn(16, 6), dim=1)
    r = torch.as_tensor(_random_orthogonal(6, 2), dtype=torch.float32)
    h_old = h_new @ r.T  # an orthogonal map fits exactly
    b = _backward(cfg, h_new.numpy(), h_old.numpy())
    f = build_forward("mlp", 6, 6, hidden=8)
    labels = torch.arange(16) % 3
    parts = _losses(cfg, b, f, h_new, h_old, h_old, labels)
    assert float(parts["backward"].detach()) < 1e-10  # B starts at the closed-form solution
    if kind == "lambda":
        assert float(parts["lambda"].detach()) < 1e-5  # orthogonal W: no penalty even at lambda = 0
    sum(parts.values()).backward()
    grads = [p.grad for m in (b, f) for p in m.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_procrustes_recovers_a_known_rotation_exactly():
    r = _random_orthogonal(6, 3)
    x = np.random.default_rng(4).normal(size=(50, 6))
    np.testing.assert_allclose(procrustes(x, x @ r.T), r, atol=1e-12)
    # Through the adapter training (B is the closed form; rows are unit-normalised, which a rotation keeps).
    ids = np.arange(50)
    new = FeatureSet.from_arrays(x, ids % 3, ids)
    old = FeatureSet.from_arrays(x @ r.T, ids % 3, ids)
    adapter = fit_adapter(new, old, AdapterConfig(kind="procrustes", forward="none"))
    np.testing.assert_allclose(adapter.backward.weight.numpy(), r, atol=1e-6)
    np.testing.assert_allclose(adapter.to_old(new.features), adapter.old_space(old.features), atol=1e-5)


def test_training_is_deterministic_and_aligns_items_by_id():
    old, new = _pair(200)
    a = fit_adapter(new, old, AdapterConfig(kind="lambda", **FAST))
    shuffled = np.random.default_rng(0).permutation(200)
    old_shuffled = FeatureSet.from_arrays(old.features[shuffled], old.labels[shuffled], old.ids[shuffled])
    b = fit_adapter(new, old_shuffled, AdapterConfig(kind="lambda", **FAST))
    torch.testing.assert_close(a.backward.weight, b.backward.weight, rtol=0, atol=0)
    bad = FeatureSet.from_arrays(old.features, (old.labels + 1) % 4, old.ids)
    with pytest.raises(CompatError, match="label"):
        fit_adapter(new, bad, AdapterConfig(**FAST))
    with pytest.raises(CompatError, match="no item id in common"):
        fit_adapter(new, FeatureSet.from_arrays(old.features, old.labels, old.ids + 10_000), AdapterConfig(**FAST))


def test_adapters_learn_the_upgrade():
    old, new = _pair(800)
    test_old, test_new = _pair(400, seed=1, id_offset=5000)
    adapter = fit_adapter(new, old, AdapterConfig(kind="perp", epochs=5, batch_size=128, hidden=32))
    ev = RetrievalEvaluator(("cmc@1",))
    before = ev.evaluate(FeatureSet.from_arrays(test_new.features[:, :8], test_new.labels, test_new.ids), test_old)
    q = adapter.to_old(test_new.features)
    after = ev.evaluate_arrays(q, test_new.labels, test_new.ids, adapter.old_space(test_old.features),
                               test_old.labels, test_old.ids)
    assert after["cmc@1"] > before["cmc@1"] + 0.3


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("kind, forward", [("perp", "mlp"), ("lambda", "affine"), ("procrustes", "none")])
def test_adapter_files_round_trip(tmp_path, kind, forward):
    old, new = _pair(128)
    adapter = fit_adapter(new, old, AdapterConfig(kind=kind, forward=forward, lam=math.inf, **FAST),
                          new_version="v1", old_version="v0")
    path = save_adapter(adapter, tmp_path / "a.npz")
    loaded = load_adapter(path)
    assert loaded.info == adapter.info
    assert loaded.info.to_json()["lam"] == ("inf" if kind == "lambda" else None)
    np.testing.assert_array_equal(loaded.to_old(new.features), adapter.to_old(new.features))
    if forward != "none":
        np.testing.assert_array_equal(loaded.upgrade(old.features), adapter.upgrade(old.features))
    else:
        with pytest.raises(CompatError, match="no forward adapter"):
            loaded.upgrade(old.features)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["kind"] == kind and meta["new_dim"] == 12 and meta["old_dim"] == 8 and meta["dim"] == 8
    assert (meta["new_version"], meta["old_version"]) == ("v1", "v0")


class Evil:
    """Any class: unpickling it would run code of the file's choosing."""


def test_adapter_loading_refuses_pickles(tmp_path):
    pickled = tmp_path / "evil.npz"
    pickled.write_bytes(pickle.dumps({"meta": Evil()}))
    with pytest.raises(CompatError, match="pickle"):
        load_adapter(pickled)
    obj = tmp_path / "object.npz"
    np.savez(obj, meta=np.array([Evil()], dtype=object), **{"backward.weight": np.eye(2, dtype=np.float32)})
    with pytest.raises(CompatError, match="pickled"):
        load_adapter(obj)
    checkpoint = tmp_path / "adapter.pt"
    torch.save({"backward": Evil()}, checkpoint)
    with pytest.raises(CompatError, match="not an adapter file"):
        load_adapter(checkpoint)


def test_adapter_loading_validates_tensors_and_metadata(tmp_path):
    old, new = _pair(64)
    path = save_adapter(fit_adapter(new, old, AdapterConfig(forward="none", **FAST)), tmp_path / "a.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = dict(z)

    def broken(name, **change):
        p = tmp_path / name
        np.savez(p, **{**arrays, **change})
        return p

    meta = json.loads(str(arrays["meta"]))
    cases = {
        "shape": broken("shape.npz", **{"backward.weight": np.eye(3, dtype=np.float32)}),
        "NaN": broken("nan.npz", **{"backward.weight": np.full((8, 8), np.nan, dtype=np.float32)}),
        "format": broken("format.npz", meta=np.array(json.dumps({**meta, "format": "other"}))),
        "unknown key": broken("key.npz", meta=np.array(json.dumps({**meta, "extra": 1}))),
        "unexpected array": broken("extra.npz", **{"forward.0.weight": np.eye(8, dtype=np.float32)}),
    }
    for p in cases.values():
        with pytest.raises(CompatError, match=str(p)):
            load_adapter(p)
    with pytest.raises(CompatError, match=".npz"):
        save_adapter(load_adapter(path), tmp_path / "a.bin")


# ---------------------------------------------------------------- partial backfilling


def test_backfill_orderings():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    # class 1 mean direction ~ (0.2, 0.98): item 3 is the farthest from it, then 1 within class 0
    far = backfill_order("farthest", x, labels)
    assert far[0] == 3 and sorted(far) == list(range(5))
    r1, r2 = backfill_order("random", x, labels, seed=5), backfill_order("random", x, labels, seed=5)
    np.testing.assert_array_equal(r1, r2)
    assert sorted(r1) == list(range(5))
    unc = backfill_order("uncertainty", x, labels)
    assert unc[0] == 3  # halfway between the two class means
    with pytest.raises(CompatError, match="farthest"):
        backfill_order("nearest", x, labels)


def test_mixed_gallery_and_area():
    before, after = np.zeros((4, 2), np.float32), np.ones((4, 2), np.float32)
    mixed = mix_gallery(before, after, np.array([2, 0]))
    np.testing.assert_array_equal(mixed[:, 0], [1, 0, 1, 0])
    assert trapezoid_area([0.0, 0.5, 1.0], [0.2, 0.4, 1.0]) == pytest.approx(0.5 * 0.3 + 0.5 * 0.7)
    np.testing.assert_allclose(beta_grid(5), [0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("forward", ["mlp", "none"])
def test_backfill_curve_end_points_equal_the_cells(forward):
    old, new = _pair(300)
    test_old, test_new = _pair(200, seed=2, id_offset=1000)
    adapter = fit_adapter(new, old, AdapterConfig(forward=forward, **FAST))
    ev = RetrievalEvaluator(("cmc@1", "map"))
    adapted = evaluate_with_adapters([Version("v0", test_old), Version("v1", test_new)], ev, {("v1", "v0"): adapter},
                                     backfill=["random", "farthest", "uncertainty"], backfill_points=5)
    cells = adapted.adapters[0].cells
    # From the stored gallery always; from the gallery upgraded by F too when there is an F.
    starts = [AdapterCell.B_OLD, AdapterCell.B_F] if forward == "mlp" else [AdapterCell.B_OLD]
    assert [r.start for r in adapted.backfill] == starts
    for result in adapted.backfill:
        assert result.end is AdapterCell.B_B
        for curve in result.curves:
            for m in ("cmc@1", "map"):
                assert curve.values[m][0] == cells[result.start][m]
                assert curve.values[m][-1] == cells[AdapterCell.B_B][m]
                assert curve.area[m] == pytest.approx(trapezoid_area(curve.betas, curve.values[m]))
    doc = adapted.extra_json()
    assert doc["backfill"]["v1:v0"]["start"] == "B(new)/old"
    assert ("backfill_forward" in doc) == (forward == "mlp")
    # The chain's own cell v1 on v0 is the adapted one.
    assert adapted.report.cell("cmc@1", "v1", "v0") == cells[AdapterCell.B_OLD]["cmc@1"]


def test_mixed_gallery_of_partly_re_extracted_items():
    """Gallery items re-extracted with the new model (mapped by B) sit next to old items upgraded by F."""
    old, new = _pair(300)
    test_old, test_new = _pair(120, seed=3, id_offset=1000)
    adapter = fit_adapter(new, old, AdapterConfig(**FAST))
    ev = RetrievalEvaluator(("cmc@1", "map"))
    adapted = evaluate_with_adapters([Version("v0", test_old), Version("v1", test_new)], ev, {("v1", "v0"): adapter},
                                     backfill=["farthest"], backfill_points=3)
    stored, upgraded = adapted.backfill
    for result, before in ((stored, adapter.old_space(test_old.features)), (upgraded, adapter.upgrade(test_old.features))):
        order = backfill_order("farthest", before, test_old.labels)
        gallery = before.copy()
        gallery[order[:60]] = adapter.to_old(test_new.features[order[:60]])
        by_hand = ev.evaluate_arrays(adapter.to_old(test_new.features), test_new.labels, test_new.ids, gallery,
                                     test_old.labels, test_old.ids)
        curve = result.curves[0]
        assert curve.betas[1] == 0.5
        assert curve.values["map"][1] == by_hand["map"]


def test_backfill_without_adapters_uses_raw_features():
    old, _ = _pair(100, d_new=8)
    newer = FeatureSet.from_arrays(old.features + 0.01, old.labels, old.ids)
    adapted = evaluate_with_adapters([Version("v0", old), Version("v1", newer)], RetrievalEvaluator(("cmc@1",)),
                                     backfill=["random"], backfill_points=3)
    (result,) = adapted.backfill
    assert result.adapter is None
    assert result.curves[0].values["cmc@1"][0] == adapted.report.cell("cmc@1", "v1", "v0")
    assert result.curves[0].values["cmc@1"][-1] == adapted.report.cell("cmc@1", "v1", "v1")


# ---------------------------------------------------------------- command line


def _write_pair(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for split, (n, seed, offset) in {"train": (400, 0, 0), "test": (160, 1, 10_000)}.items():
        old, new = _pair(n, seed=seed, id_offset=offset)
        paths[f"{split}-old"] = save_features(old, tmp_path / f"{split}-old.npz")
        paths[f"{split}-new"] = save_features(new, tmp_path / f"{split}-new.npz")
    return paths


def test_compat_adapt_then_eval_with_the_adapter(tmp_path):
    p = _write_pair(tmp_path)
    runner = CliRunner()
    adapter = tmp_path / "v1-v0.npz"
    result = runner.invoke(cli, ["adapt", "--old", str(p["train-old"]), "--new", str(p["train-new"]), "--kind",
                                 "lambda", "--lambda", "12", "--epochs", "15", "--batch-size", "64", "--hidden", "16",
                                 "--out", str(adapter)])
    assert result.exit_code == 0, result.output
    assert "lambda=12 adapter v1 -> v0" in result.output
    assert load_adapter(adapter).info.lam == 12.0

    out = tmp_path / "report"
    result = runner.invoke(cli, ["eval", "--version", f"v0={p['test-old']}", "--version", f"v1={p['test-new']}",
                                 "--adapter", f"v1:v0={adapter}", "--backfill", "random", "--backfill", "farthest",
                                 "--backfill-points", "3", "--metric", "cmc@1", "--metric", "map", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compat.json").read_text())
    assert {"versions", "protocol", "metrics", "summary"} <= set(doc)  # the core schema stays
    cells = doc["adapters"]["v1:v0"]["cells"]
    assert set(cells) == {"old/old", "new/new", "new/old", "B(new)/old", "B(new)/F(old)", "B(new)/B(new)"}
    assert doc["metrics"]["cmc@1"][1][0] == cells["B(new)/old"]["cmc@1"]
    assert doc["adapters"]["v1:v0"]["ecc"]["cmc@1"]["new/old"] is False  # unrelated spaces
    assert doc["adapters"]["v1:v0"]["ecc"]["cmc@1"]["B(new)/old"] is True
    assert cells["B(new)/F(old)"]["map"] > cells["new/old"]["map"] + 0.3
    bf = doc["backfill"]["v1:v0"]
    assert bf["betas"] == [0.0, 0.5, 1.0] and set(bf["orderings"]) == {"random", "farthest"}
    assert bf["orderings"]["farthest"]["curve"]["map"][0] == cells["B(new)/old"]["map"]
    assert doc["backfill_forward"]["v1:v0"]["orderings"]["farthest"]["curve"]["map"][0] == cells["B(new)/F(old)"]["map"]
    md = (out / "compat.md").read_text()
    assert "## Adapters" in md and "## Partial backfilling" in md
    assert (out / "compat.png").is_file() and (out / "backfill.png").is_file()


def test_eval_adapter_bad_input_exits_2_without_a_report(tmp_path):
    p = _write_pair(tmp_path)
    runner = CliRunner()
    adapter = tmp_path / "a.npz"
    assert runner.invoke(cli, ["adapt", "--old", str(p["train-old"]), "--new", str(p["train-new"]), "--epochs", "1",
                               "--forward", "none", "--out", str(adapter)]).exit_code == 0
    base = ["eval", "--version", f"v0={p['test-old']}", "--version", f"v1={p['test-new']}"]
    cases = {
        "v0:v1": ["--adapter", f"v0:v1={adapter}"],  # reversed
        "not one of the versions": ["--adapter", f"v2:v0={adapter}"],
        "NEW:OLD=PATH": ["--adapter", f"v1={adapter}"],
        "features to a 8-d": ["--adapter", f"v1:v0={adapter}", "--version", f"v2={p['test-old']}",
                              "--adapter", f"v2:v0={adapter}"],
        "no such adapter file": ["--adapter", f"v1:v0={tmp_path / 'missing.npz'}"],
    }
    for i, (message, extra) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        result = runner.invoke(cli, [*base, *extra, "--out", str(out)])
        assert result.exit_code == 2, (message, result.output)
        assert message.split(":")[0] in result.output or message in result.output
        assert not (out / "compat.json").exists()
    result = runner.invoke(cli, ["adapt", "--old", str(p["train-old"]), "--new", str(p["train-new"]), "--out",
                                 str(tmp_path / "a.pt")])
    assert result.exit_code == 2 and ".npz" in result.output


# ---------------------------------------------------------------- the recipe


def test_adapter_recipe_validates():
    from compat.methods import build_method
    from compat.train import load_recipe
    from compat.train.adapters import adapter_configs
    from compat.train.plan import model_spec as _model_spec

    recipe = load_recipe(RECIPES / "mnist-adapters.yaml")
    method = build_method(recipe.method.name, **recipe.method.options)
    old, new = (_model_spec(recipe, v, 10, method.head) for v in (0, 1))
    assert old["backbone"] != new["backbone"] and old["feature_dim"] != new["feature_dim"]
    assert recipe.data.fractions[0] <= 0.1 and recipe.data.fractions[-1] == 1.0
    configs = adapter_configs(recipe)
    assert {c.kind.value for c in configs.values()} >= {"perp", "lambda", "procrustes"}
    assert any(c.kind.value == "lambda" and c.lam == 12 for c in configs.values())
    assert {"random", "farthest"} <= set(recipe.adapters.backfill)


TINY = """
name: tiny-adapters
seed: 1
data: {dataset: mnist-mini, protocol: growth, fractions: [0.05, 0.1]}
model: {backbone: smallcnn, feature_dim: 16}
versions: [{feature_dim: 8}, {}]
method: {name: independent}
train: {epochs: 1, batch_size: 32, lr: 0.05}
eval: {metrics: [cmc@1, map], dim_policy: truncate}
adapters:
  backward: [{kind: perp}, {kind: lambda, lam: 12}]
  epochs: 1
  hidden: 16
  backfill: [random, farthest]
  backfill_points: 3
"""


def test_train_recipe_with_adapters_end_to_end(tmp_path):
    result, out = train_recipe_text(tmp_path, TINY)
    assert result.exit_code == 0, result.output
    assert load_features(out / "features" / "train" / "v0.npz").dim == 8
    assert load_adapter(out / "adapters" / "v1-v0-lambda12.npz").info.lam == 12
    summary = json.loads((out / "adapters" / "summary.json").read_text())
    assert set(summary["v1:v0"]["adapters"]) == {"perp", "lambda12"}
    doc = json.loads((out / "adapters" / "perp" / "compat.json").read_text())
    assert set(doc["backfill"]["v1:v0"]["orderings"]) == {"random", "farthest"}
    assert "B_perp(new)/old" in (out / "adapters" / "summary.md").read_text()

    # With eval_split val the adapters' training features leave the held-out images out.
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.train import load_recipe
    from compat.train.adapters import _train_features
    from compat.train.data import RecipeData, training_pool

    full = load_features(out / "features" / "train" / "v0.npz")
    val = load_recipe(tmp_path / "tiny.yaml", ["data.eval_split=val"])
    pool_fs = _train_features(RecipeData.build(val), "v0", out, device="cpu", progress=False)
    train = build_dataset("mnist-mini", split="train", train_transform=False)
    pool, held = training_pool(val, dataset_labels(train))
    np.testing.assert_array_equal(pool_fs.ids, dataset_ids(train)[pool])
    assert pool_fs.n == full.n - len(held) and not set(pool_fs.ids) & set(dataset_ids(train)[held])
