"""The notebooks under ``notebooks/`` run as plain scripts on tiny settings (``COMPAT_NOTEBOOK_TINY=1``).

Each runs in its own interpreter with a non-interactive matplotlib backend, as ``python notebook.py``
would; the run-comparison notebook reads run directories (with and without a ``backfill`` key, in
both curve layouts), an MLflow experiment, and falls back to the example feature sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compat.compatibility import Version, evaluate_chain
from compat.compatibility.report import write_reports
from compat.features import FeatureSet
from compat.gate import load_policy, run_gate
from compat.gate import write_reports as write_gate_reports
from compat.retrieval import RetrievalEvaluator

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "COMPAT_NOTEBOOK_TINY": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    for key in ("COMPAT_RUNS", "COMPAT_MLFLOW_EXPERIMENT", "COMPAT_NOTEBOOK_OUT", "COMPAT_PLAN"):
        if key not in env:
            environment.pop(key, None)
    result = subprocess.run([sys.executable, str(NOTEBOOKS / name)], check=False, cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _versions(noise: tuple[float, ...], *, rotate_last: bool = False) -> list[FeatureSet]:
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(6), 30).astype(np.int64)
    ids = np.arange(len(labels), dtype=np.int64)
    centres = rng.normal(size=(6, 8)) * 2.0
    sets = []
    for k, sigma in enumerate(noise):
        x = centres[labels] + sigma * rng.normal(size=(len(labels), 8))
        if rotate_last and k == len(noise) - 1:
            x = x @ np.linalg.qr(rng.normal(size=(8, 8)))[0]
        sets.append(FeatureSet.from_arrays(x.astype(np.float32), labels, ids, meta={"version": f"v{k}"}))
    return sets


def _adapters_layout(betas: list[float]) -> dict:
    ramp = [0.5 + 0.4 * b for b in betas]
    return {"v1:v0": {"new": "v1", "old": "v0", "adapter": None, "start": "v1/v0", "end": "v1/v1", "betas": betas,
                      "orderings": {"random": {"curve": {"cmc@1": ramp, "map": ramp}, "area": {"cmc@1": 0.7}}}}}


def _points_layout(betas: list[float]) -> dict:
    return {"v1:v0": {"orderings": {"farthest": {"cmc@1": [[b, 0.4 + 0.5 * b] for b in betas]}}}}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Three run directories: a recipe run with a gate verdict, and two with backfill curves."""
    evaluator = RetrievalEvaluator(("cmc@1", "cmc@5", "map"))
    betas = [0.0, 0.5, 1.0]
    root = tmp_path / "runs"
    old, new = _versions((1.6, 1.0))
    write_reports(evaluate_chain([Version("v0", old), Version("v1", new)], evaluator), root / "cores-run")
    (root / "cores-run" / "recipe.yaml").write_text("name: x\nmethod:\n  name: cores\n", encoding="utf-8")
    write_gate_reports(run_gate(old, new, load_policy(), n_resamples=100), root / "cores-run")
    for name, backfill in (("adapters-run", _adapters_layout(betas)), ("points-run", _points_layout(betas))):
        sets = _versions((1.6, 1.0), rotate_last=True)
        report = evaluate_chain([Version(f"v{k}", fs) for k, fs in enumerate(sets)], evaluator)
        write_reports(report, root / name, extra_json={"backfill": backfill})
    return root


def _table(out: Path) -> dict[str, list[str]]:
    lines = (out / "methods.md").read_text(encoding="utf-8").splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_compare_runs_reads_directories_backfill_and_mlflow(runs, tmp_path, tmp_mlflow, monkeypatch):
    from compat.tracking import log_evaluation

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) stays in tmp_path
    evaluator = RetrievalEvaluator(("cmc@1", "map"))
    report = evaluate_chain([Version(f"v{k}", fs) for k, fs in enumerate(_versions((1.5, 1.2, 0.9)))], evaluator)
    files = write_reports(report, tmp_path / "tracked")
    log_evaluation(report, inputs={}, files=files, run_name="tracked-chain", experiment="notebook-test")

    out = tmp_path / "figures"
    result = run_notebook("compare_runs.py", tmp_path, COMPAT_RUNS=f"{runs}/*{os.pathsep}{runs}/missing",
                          COMPAT_MLFLOW_EXPERIMENT="notebook-test", COMPAT_NOTEBOOK_OUT=str(out),
                          MLFLOW_TRACKING_URI=tmp_mlflow)
    assert "skipped" in result.stdout and "missing" in result.stdout
    for figure in ("heatmaps.png", "backfill.png"):
        assert (out / figure).stat().st_size > 0
    table = _table(out)
    assert set(table) == {"runs/adapters-run", "runs/cores-run", "runs/points-run", "mlflow:tracked-chain"}
    assert table["runs/cores-run"]["method"] == "cores"
    assert table["runs/cores-run"]["gate"] in ("passed", "FAILED")
    assert table["mlflow:tracked-chain"]["versions"] == "v0 -> v1 -> v2"
    assert table["runs/points-run"]["gate"] == "–"
    doc = json.loads((runs / "cores-run" / "compat.json").read_text(encoding="utf-8"))
    assert table["runs/cores-run"]["cmc@1 new/old"] == f"{100 * doc['metrics']['cmc@1'][1][0]:.2f}"


def test_compare_runs_without_backfill_or_runs_uses_the_examples(tmp_path):
    work = tmp_path / "clean" / "work"
    work.mkdir(parents=True)
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    out = tmp_path / "figures"
    result = run_notebook("compare_runs.py", work, COMPAT_NOTEBOOK_OUT=str(out))
    assert "no reports found" in result.stdout
    assert "no backfill curves" in result.stdout and not (out / "backfill.png").exists()
    table = {name.rsplit("/", 1)[-1]: row for name, row in _table(out).items()}
    assert table["example-v1-v2"]["AC"] == "1.00" and table["example-v1-v3"]["AC"] == "0.00"
    assert (out / "heatmaps.png").is_file()


def test_own_training_loop_walkthrough_runs(tmp_path):
    result = run_notebook("own_training_loop.py", tmp_path)
    for name in ("d-simplex", "bct", "independent"):
        assert f"| {name} |" in result.stdout
        assert any(line.startswith(f"{name}: ") and ("PASSED" in line or "FAILED" in line)
                   for line in result.stdout.splitlines())
    assert "trainable parameters of the head: 0" in result.stdout


def test_backfill_plan_plans_the_examples_then_reads_and_draws_the_plan(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    out = tmp_path / "figures"
    result = run_notebook("backfill_plan.py", work, COMPAT_NOTEBOOK_OUT=str(out))
    plan_dir = out / "example-plan"
    plan = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
    first = (plan_dir / "plan.csv").read_text(encoding="utf-8").splitlines()[1:6]
    assert f"first ids to re-extract: {', '.join(first)}" in result.stdout
    assert f"re-extract: {plan['plan']['re_extract']} of 2,000" in result.stdout
    assert plan["target"]["text"] == "cmc@1>=0.55" and plan["sample"]["n"] == 500
    last = plan["curve"][-1]
    assert f"| 100% | 2,000 | {100 * last['values']['cmc@1']['value']:.2f}" in result.stdout
    assert (out / "plan-curve.png").stat().st_size > 0


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.py")), ids=lambda p: p.name)
def test_notebooks_are_jupytext_percent_scripts(path):
    text = path.read_text(encoding="utf-8")
    assert "format_name: percent" in text.split("# ---", 2)[1]
    assert text.count("# %%") >= 5 and "plt.show(" not in text
