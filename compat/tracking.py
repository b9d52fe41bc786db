"""MLflow tracking of a compatibility evaluation.

``mlflow`` is imported inside the functions that need it (it takes about a second).

Names: MLflow 3.17 accepts only alphanumerics, ``_``, ``-``, ``.``, space, ``:`` and ``/`` in
metric and param names, so ``cmc@1`` cannot be logged as is. :func:`metric_key` is the one place
that maps a name: ``@`` becomes ``_at_`` (``cmc@1.v2_on_v1`` -> ``cmc_at_1.v2_on_v1``) and any other
character outside ``[A-Za-z0-9_.- ]`` becomes ``_``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from compat.errors import CompatError

if TYPE_CHECKING:
    from compat.compatibility.matrix import CompatibilityReport

__all__ = ["DEFAULT_TRACKING_URI", "TrainingTracker", "log_evaluation", "metric_key", "ready_store", "tracking_enabled"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow's limit on the length of a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
PARAM_VALUE_MAX = 6000
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.\- ]")


def tracking_enabled(track: bool) -> bool:
    """Track when asked to, or when ``MLFLOW_TRACKING_URI`` is set and non-empty."""
    return bool(track) or bool(os.environ.get("MLFLOW_TRACKING_URI", "").strip())


def metric_key(name: str) -> str:
    """An MLflow-safe metric or param name: ``@`` -> ``_at_``, other disallowed characters -> ``_``."""
    return _NOT_ALLOWED.sub("_", name.replace("@", "_at_"))


def _flatten(prefix: str, values: Mapping[str, object], out: dict[str, str]) -> None:
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            _flatten(name, value, out)
        else:
            out[metric_key(name)] = str(value)[:PARAM_VALUE_MAX]


def _params(report: CompatibilityReport, inputs: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    out = {"protocol": report.protocol, "versions": ",".join(report.versions)}
    for version, meta in inputs.items():
        _flatten(version, meta, out)
    if report.index is not None:
        _flatten("index", {"factory": report.index.factory, **report.index.params, **report.index.files}, out)
    return out


def _metrics(report: CompatibilityReport) -> dict[str, float]:
    out = _matrix_metrics("", report.versions, report.metrics, report.matrices, report.summary)
    if report.index is not None:
        index = report.index
        out |= _matrix_metrics("index.", report.versions, index.metrics, index.matrices, index.summary)
        out |= _matrix_metrics("index.", report.versions, ("recall",), {"recall": index.recall}, {})
    return out


def _matrix_metrics(prefix: str, versions, metrics, matrices, summary) -> dict[str, float]:
    """``<prefix><metric>.<query>_on_<gallery>`` per cell and ``<prefix><metric>.<ac|am|...>``."""
    out: dict[str, float] = {}
    for m in metrics:
        for i, qv in enumerate(versions):
            for j, gv in enumerate(versions[: i + 1]):
                value = matrices[m][i][j]
                if value is not None:
                    out[metric_key(f"{prefix}{m}.{qv}_on_{gv}")] = float(value)
        s = summary.get(m)
        if s is None:
            continue
        for field, value in (("ac", s.ac), ("am", s.am), ("bc", s.bc), ("fc", s.fc), ("update_gain", s.update_gain)):
            if value is not None:
                out[metric_key(f"{prefix}{m}.{field}")] = float(value)
    return out


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` (next to a sqlite store's file) while the store is first used.

    MLflow creates and migrates a sqlite store's tables on first use; two processes doing it at once
    (two ``compat eval`` runs in one directory) make one of them fail in the middle of a migration.
    """
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (MLflow's own behaviour)
        path = None
    if path is None or path in ("", ":memory:") or not Path(path).parent.is_dir():
        yield  # (a missing directory: MLflow says so itself)
        return
    lock = Path(path).with_name(Path(path).name + ".lock")
    with open(lock, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ready_store(uri: str):
    """An ``MlflowClient`` on ``uri`` whose store exists and is migrated, created one process at a time."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        try:
            client.search_experiments(max_results=1)  # creates and migrates a new store under the lock
        except MlflowException as exc:
            first = (str(exc.message).strip().splitlines() or [""])[0]
            raise CompatError(f"MLflow store {uri}: {first}") from None
    return client


def experiment_id_for(client, name: str | None) -> str:
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def log_evaluation(
    report: CompatibilityReport,
    *,
    inputs: dict[str, dict[str, object]],
    files: list[Path],
    run_name: str | None = None,
    experiment: str | None = None,
) -> str:
    """Log one chain evaluation as an MLflow run and return its run id.

    Params: ``protocol``, ``versions`` and, per version, ``"<version>.<key>"`` from ``inputs``
    (nested dicts flattened with dots; values stringified and truncated to MLflow's limit); with an
    index ``index.factory``, its parameters and stored files.
    Metrics: every cell as ``"<metric>.<query>_on_<gallery>"`` and the summaries as
    ``"<metric>.ac"``, ``.am``, ``.bc``, ``.fc``, ``.update_gain`` (``None`` skipped); with an index the
    same under ``"index."`` and the recall as ``"index.recall.<query>_on_<gallery>"``; all names
    passed through :func:`metric_key`. Artifacts: ``files``.

    When a run is active the evaluation is logged as a run nested under it (in its experiment,
    ``experiment`` is then ignored). Otherwise a new run is created in ``experiment`` (default:
    ``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID`` or MLflow's default experiment) on the
    tracking URI in effect, or ``sqlite:///mlflow.db`` in the current directory when none is set.
    The global MLflow state (tracking URI, active run) is left untouched.
    """
    import mlflow
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    parent = mlflow.active_run()
    uri = mlflow.get_tracking_uri() if parent is not None or mlflow.is_tracking_uri_set() else DEFAULT_TRACKING_URI
    client = ready_store(uri)
    if parent is not None:
        experiment_id, tags = parent.info.experiment_id, {MLFLOW_PARENT_RUN_ID: parent.info.run_id}
    else:
        experiment_id, tags = experiment_id_for(client, experiment), {}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in _metrics(report).items()],
            params=[Param(k, v) for k, v in _params(report, inputs).items()],
        )
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id)
    return run_id


class TrainingTracker:
    """MLflow for a training recipe: one parent run, a nested run per version. A no-op when off.

    Uses MLflow's fluent API (the active run), so that :func:`log_evaluation` called inside the
    parent run nests the final evaluation under it.
    """

    def __init__(self, enabled: bool, *, experiment: str | None = None):
        self.enabled = enabled
        self.experiment = experiment
        self._mlflow = None

    def start(self, run_name: str, params: Mapping[str, object]) -> None:
        if not self.enabled:
            return
        import mlflow

        if not mlflow.is_tracking_uri_set():
            mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
        ready_store(mlflow.get_tracking_uri())
        if self.experiment:
            mlflow.set_experiment(self.experiment)
        self._mlflow = mlflow
        mlflow.start_run(run_name=run_name)
        flat: dict[str, str] = {}
        _flatten("recipe", params, flat)
        mlflow.log_params(flat)

    def start_version(self, name: str, params: Mapping[str, object] | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.start_run(run_name=name, nested=True)
            if params:
                self._mlflow.log_params({metric_key(k): str(v)[:PARAM_VALUE_MAX] for k, v in params.items()})

    def end_version(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metrics({metric_key(k): float(v) for k, v in values.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_evaluation(self, report: CompatibilityReport, files: list[Path], *,
                       inputs: dict[str, dict[str, object]] | None = None, run_name: str = "evaluation") -> str | None:
        """:func:`log_evaluation` as a run nested under the recipe's run; returns its id (None when off)."""
        if self._mlflow is None:
            return None
        return log_evaluation(report, inputs=inputs or {}, files=files, run_name=run_name)

    def end(self, failed: bool = False) -> None:
        if self._mlflow is not None:
            while self._mlflow.active_run() is not None:
                self._mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self._mlflow = None
