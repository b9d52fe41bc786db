"""compat.tracking: MLflow params, cell and summary metrics, artifacts, nested runs, metric names."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat.compatibility.matrix import CellCount, CompatibilityReport
from compat.compatibility.report import write_reports
from compat.compatibility.summary import summarize
from compat.tracking import PARAM_VALUE_MAX, log_evaluation, metric_key, tracking_enabled

VERSIONS = ("v1", "v2", "v3")
CMC1 = [[0.50, None, None], [0.55, 0.70, None], [0.45, 0.72, 0.80]]
MAP = [[0.30, None, None], [0.30, 0.40, None], [0.35, 0.45, 0.40]]  # update gain undefined


def chain3() -> CompatibilityReport:
    matrices = {"cmc@1": CMC1, "map": MAP}
    counts = [[CellCount(100, 0) if j <= i else None for j in range(3)] for i in range(3)]
    return CompatibilityReport(
        VERSIONS, "loo", tuple(matrices), matrices, {m: summarize(v) for m, v in matrices.items()}, counts
    )


INPUTS = {
    "v1": {"path": "/data/v1.npz", "n": 100, "dim": 8, "meta": {"model": "resnet18", "normalized": True}},
    "v2": {"path": "/data/v2.npz", "n": 100, "dim": 8, "note": "x" * (PARAM_VALUE_MAX + 50)},
    "v3": {"path": "/data/v3.npz", "n": 100, "dim": 16},
}


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) stays in tmp_path
    return write_reports(chain3(), tmp_path / "out")


def test_metric_key_maps_at_sign() -> None:
    assert metric_key("cmc@1.v2_on_v1") == "cmc_at_1.v2_on_v1"
    assert metric_key("map.v1_on_v1") == "map.v1_on_v1"
    assert metric_key("v1+ft.meta/x") == "v1_ft.meta_x"


def test_tracking_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracking_enabled(False)
    assert tracking_enabled(True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert not tracking_enabled(False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert tracking_enabled(False)


def test_log_evaluation_round_trip(tmp_mlflow: str, files: list[Path]) -> None:
    from mlflow import MlflowClient

    report = chain3()
    run_id = log_evaluation(report, inputs=INPUTS, files=files, run_name="eval", experiment="compat-test")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "eval"
    assert client.get_experiment(run.info.experiment_id).name == "compat-test"

    params = run.data.params
    assert params["protocol"] == "loo" and params["versions"] == "v1,v2,v3"
    assert params["v1.path"] == "/data/v1.npz" and params["v1.n"] == "100" and params["v3.dim"] == "16"
    assert params["v1.meta.model"] == "resnet18" and params["v1.meta.normalized"] == "True"
    assert params["v2.note"] == "x" * PARAM_VALUE_MAX

    metrics = run.data.metrics
    expected_cells = {}
    for m, matrix in (("cmc@1", CMC1), ("map", MAP)):
        for i, q in enumerate(VERSIONS):
            for j, g in enumerate(VERSIONS[: i + 1]):
                expected_cells[metric_key(f"{m}.{q}_on_{g}")] = matrix[i][j]
    assert len(expected_cells) == 12
    for key, value in expected_cells.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["cmc_at_1.v2_on_v1"] == pytest.approx(0.55)
    assert "cmc_at_1.v1_on_v2" not in metrics

    s = report.summary["cmc@1"]
    for field in ("ac", "am", "bc", "fc", "update_gain"):
        assert metrics[f"cmc_at_1.{field}"] == pytest.approx(getattr(s, field)), field
    assert metrics["map.am"] == pytest.approx(report.summary["map"].am)
    assert "map.update_gain" not in metrics  # None is skipped
    summaries = {f"{m}.{f}" for m in ("cmc_at_1", "map") for f in ("ac", "am", "bc", "fc", "update_gain")}
    assert set(metrics) == set(expected_cells) | (summaries - {"map.update_gain"})

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"compat.json", "compat.md", "compat.png"}


def test_mlflow_rejects_at_sign_in_metric_names(tmp_mlflow: str, files: list[Path]) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    with pytest.raises(MlflowException, match="Names may only contain"):
        client.log_metric(run_id, "cmc@1.v2_on_v1", 0.5)
    client.log_metric(run_id, metric_key("cmc@1.v2_on_v1"), 0.5)


def test_log_evaluation_nests_under_an_active_run(tmp_mlflow: str, files: list[Path]) -> None:
    import mlflow

    with mlflow.start_run(run_name="train") as parent:
        run_id = log_evaluation(chain3(), inputs={}, files=files[:1])
        assert mlflow.active_run().info.run_id == parent.info.run_id
    child = mlflow.MlflowClient().get_run(run_id)
    assert run_id != parent.info.run_id
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == parent.info.experiment_id


def test_default_store_is_sqlite_in_current_directory(files: list[Path], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    run_id = log_evaluation(chain3(), inputs={}, files=[])
    assert (tmp_path / "mlflow.db").is_file()
    run = MlflowClient(tracking_uri="sqlite:///mlflow.db").get_run(run_id)
    assert run.data.metrics["map.v3_on_v3"] == pytest.approx(0.40)


def test_two_processes_creating_one_new_store_both_log(tmp_path: Path) -> None:
    """Two ``compat eval --track`` runs in one directory create the same fresh sqlite store at once;
    MLflow's schema migration is not safe from two processes, so the first use is serialised."""
    import os
    import subprocess
    import sys

    from tests.paths import REPO

    go = tmp_path / "go"
    script = (
        "import os, time\n"
        "from compat.compatibility.matrix import CompatibilityReport\n"
        "from compat.compatibility.summary import summarize\n"
        "from compat.tracking import log_evaluation\n"
        "import mlflow, sqlalchemy\n"
        "report = CompatibilityReport(('v1',), 'loo', ('cmc@1',), {'cmc@1': [[0.5]]}, {'cmc@1': summarize([[0.5]])},"
        " [[None]])\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.001)\n"
        "print(log_evaluation(report, inputs={}, files=[]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    go.touch()  # both create the store now
    done = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in done]


def test_an_index_evaluation_logs_its_cells_summaries_and_recall(tmp_mlflow: str, files: list[Path]) -> None:
    import numpy as np
    from mlflow import MlflowClient

    from compat.compatibility import Version, evaluate_chain
    from compat.compatibility.indexed import IndexSetup
    from compat.features import FeatureSet
    from compat.retrieval import RetrievalEvaluator
    from compat.retrieval.index import IndexSpec

    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    chain = [Version(f"v{t}", FeatureSet.from_arrays(rng.normal(size=(100, 8)) + labels[:, None], labels))
             for t in (1, 2)]
    report = evaluate_chain(chain, RetrievalEvaluator(("cmc@1", "map@10"), device="cpu"),
                            index=IndexSetup(IndexSpec(factory="IVF2,Flat", nprobe=1)))
    run = MlflowClient().get_run(log_evaluation(report, inputs={}, files=files))
    metrics, params = run.data.metrics, run.data.params
    assert metrics["index.cmc_at_1.v2_on_v1"] == pytest.approx(report.index.matrices["cmc@1"][1][0])
    assert metrics["index.map_at_10.am"] == pytest.approx(report.index.summary["map@10"].am)
    assert metrics["index.recall.v1_on_v1"] == pytest.approx(report.index.recall[0][0])
    assert metrics["cmc_at_1.v2_on_v1"] == pytest.approx(report.matrices["cmc@1"][1][0])
    assert params["index.factory"] == "IVF2,Flat" and params["index.nprobe"] == "1"
