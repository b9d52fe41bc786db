"""``compat demo`` and :func:`compat.demo.run_demo` on a reduced training budget.

The real demo trains three models for a minute or more; here the CLI runs once with the library's
``run_demo`` wrapped so that it trains on a sliver of mnist-mini for one epoch (the wrapper records
the settings the CLI asked for, which must be the defaults), and once more through the library to
check that the reports are reproducible. Only the structure of the verdicts is checked on this budget.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import compat.demo
from compat.cli import cli
from compat.demo import DemoSettings, run_demo
from compat.errors import CompatError

TINY = DemoSettings(old_fraction=0.02, new_fraction=0.05, epochs=1, batch_size=64, n_resamples=200)
CHAIN_FILES = ("compat.json", "compat.md", "compat.png", "gate.json", "gate.md")
CHECK_KEYS = {"name", "value", "ci_low", "ci_high", "threshold", "passed"}


@pytest.fixture(scope="module")
def one_thread():
    """Training a tiny CNN is faster on one thread than on two oversubscribed ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, one_thread):
    """``compat demo`` through click, with run_demo shrunk to TINY; the settings it was called with."""
    out = tmp_path_factory.mktemp("demo") / "out"
    asked: list[DemoSettings] = []
    real = compat.demo.run_demo

    def shrunk(out_dir, *, settings=None, **kwargs):
        asked.append(settings)
        return real(out_dir, settings=TINY, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compat.demo, "run_demo", shrunk)
        result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--seed", "3", "--device", "cpu", "--quiet"])
    return result, out, asked


def _gate(out: Path, chain: str) -> dict:
    return json.loads((out / chain / "gate.json").read_text(encoding="utf-8"))


def _without_paths(checks: list[dict]) -> list[dict]:
    return [c | {"details": [{k: v for k, v in d.items() if k != "source"} for d in c.get("details", [])]}
            for c in checks]


def test_cli_uses_the_default_settings(cli_run):
    _, _, asked = cli_run
    assert asked == [DemoSettings()]
    recipe = DemoSettings().recipe(seed=0)
    assert recipe.name == "demo-cores" and recipe.data.dataset == "mnist-mini" and recipe.data.fractions == [0.3, 1.0]
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.train.lr) == (3, 64, 0.05)
    assert recipe.model.feature_dim == 9 and recipe.eval.independent_reference
    bct = DemoSettings(method="bct").recipe(seed=1)
    assert (bct.name, bct.method.name, bct.model.feature_dim, bct.seed) == ("demo-bct", "bct", 128, 1)


def test_demo_writes_every_report(cli_run):
    result, out, _ = cli_run
    assert result.exit_code in (0, 1), result.output
    for chain in ("independent", "compatible"):
        for name in CHAIN_FILES:
            assert (out / chain / name).stat().st_size > 0, f"{chain}/{name}"
        report = json.loads((out / chain / "compat.json").read_text(encoding="utf-8"))
        assert report["versions"] == ["old", "new"] and report["protocol"] == "loo"
        assert set(report["metrics"]) == {"cmc@1", "cmc@5", "map"}
        assert report["metrics"]["cmc@1"][0][1] is None
    for name in ("v0.npz", "v1.npz", "v1-independent.npz"):
        assert (out / "train" / "features" / name).is_file()
    assert not list(out.rglob(".compat-tmp-*")) and not list(out.rglob(".gate-tmp-*"))


def test_verdicts_have_the_gate_structure_and_set_the_exit_code(cli_run):
    result, out, _ = cli_run
    verdicts = {chain: _gate(out, chain) for chain in ("independent", "compatible")}
    for doc in verdicts.values():
        assert isinstance(doc["passed"], bool) and doc["seed"] == 3 and doc["n_resamples"] == TINY.n_resamples
        assert [c["name"] for c in doc["checks"]] == [
            "compatibility", "improvement", "no-drop-on-older-galleries", "update-gain", "negative-flips"]
        for check in doc["checks"]:
            assert CHECK_KEYS <= set(check)
        assert doc["passed"] == all(c["passed"] for c in doc["checks"] if c["required"])
    # The independent model is the update gain's reference, so only the compatible one is measured.
    assert verdicts["independent"]["checks"][3]["skipped"] and not verdicts["compatible"]["checks"][3]["skipped"]
    expected = not verdicts["independent"]["passed"] and verdicts["compatible"]["passed"]
    assert result.exit_code == (0 if expected else 1)


def test_printout_shows_both_matrices_and_verdicts(cli_run):
    result, out, _ = cli_run
    text = result.stdout
    for metric in ("cmc@1", "cmc@5", "map"):
        assert f"{metric}: old -> independent new model" in text
        assert f"{metric}: old -> CoReS (d-Simplex) new model" in text
    verdict_line = next(line for line in text.splitlines() if line.startswith("verdict"))
    assert verdict_line.count("PASSED") + verdict_line.count("FAILED") == 2
    assert str(out / "compatible") in text


@pytest.fixture(scope="module")
def library_run(tmp_path_factory, one_thread):
    """The same tiny demo again, through the library."""
    return run_demo(tmp_path_factory.mktemp("demo") / "again", seed=3, device="cpu", progress=False, settings=TINY)


def test_reports_are_reproducible(cli_run, library_run):
    _, out, _ = cli_run
    for chain in ("independent", "compatible"):
        for name in ("compat.json", "compat.md", "compat.png"):
            assert (library_run.out / chain / name).read_bytes() == (out / chain / name).read_bytes(), name
        assert _without_paths(_gate(library_run.out, chain)["checks"]) == _without_paths(_gate(out, chain)["checks"])


def test_result_matches_the_files(library_run):
    for chain in library_run.chains:
        doc = _gate(library_run.out, chain.name)
        assert doc["passed"] == chain.verdict.passed
        assert json.loads((chain.directory / "compat.json").read_text(encoding="utf-8")) == chain.report.to_json()
    assert library_run.as_expected == (not library_run.independent.verdict.passed
                                       and library_run.compatible.verdict.passed)
    assert library_run.settings == TINY and library_run.seed == 3 and library_run.seconds > 0


@pytest.mark.parametrize(
    ("independent", "compatible", "code"),
    [(False, True, 0), (True, True, 1), (False, False, 1)],
    ids=["as-expected", "independent-passes", "compatible-fails"],
)
def test_exit_code_says_whether_the_verdicts_are_the_expected_ones(library_run, monkeypatch, tmp_path, independent,
                                                                   compatible, code):
    """A finished tiny run with its verdicts overridden, through the CLI's exit-code logic."""

    def verdict(chain, passed):
        return dataclasses.replace(chain, verdict=dataclasses.replace(chain.verdict, passed=passed))

    canned = dataclasses.replace(library_run, independent=verdict(library_run.independent, independent),
                                 compatible=verdict(library_run.compatible, compatible))
    monkeypatch.setattr(compat.demo, "run_demo", lambda *args, **kwargs: canned)
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "x"), "--quiet"])
    assert result.exit_code == code, result.output
    assert ("not the expected one" in result.stderr) == bool(code)
    assert ("PASSED ✓" in result.stdout) == (independent or compatible)


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"method": "hoc"}, "method: unknown demo method 'hoc'"),
        ({"old_fraction": 0.5, "new_fraction": 0.4}, "old_fraction, new_fraction: expected 0 < old_fraction"),
        ({"new_fraction": 1.5}, "new_fraction"),
        ({"epochs": 0}, "epochs: expected an integer >= 1"),
        ({"lr": 0.0}, "lr"),
        ({"n_resamples": 0}, "n_resamples"),
    ],
)
def test_bad_settings_are_refused_before_training(changes, expect, tmp_path):
    with pytest.raises(CompatError, match=expect):
        run_demo(tmp_path / "out", device="cpu", settings=dataclasses.replace(DemoSettings(), **changes))
    assert not (tmp_path / "out").exists()


def test_bad_device_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "out"), "--device", "tpu"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "device" in result.stderr
    assert not (tmp_path / "out").exists()
