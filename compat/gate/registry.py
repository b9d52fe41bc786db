"""compat models in the MLflow model registry: register, resolve ``models:/`` URIs, download, promote.

A registered compat model version holds one artifact directory, ``compat-model/``, with the file
that :func:`compat.models.save_model` writes (``model.pt``: a state dict and the arguments that
rebuild the model), loaded with ``torch.load(weights_only=True)``. Nothing else in a downloaded
version is read: MLflow pyfunc / flavour models, which unpickle arbitrary objects, are refused.

``mlflow`` is imported inside the functions (it takes about a second). The store is the tracking
URI in effect (``MLFLOW_TRACKING_URI``), else ``sqlite:///mlflow.db`` as for tracking; the registry
URI follows MLflow's own rules (``MLFLOW_REGISTRY_URI``, else the tracking URI).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from compat.errors import CompatError
from compat.gate.rollback import Journal
from compat.tracking import experiment_id_for

__all__ = [
    "ARTIFACT_DIR",
    "CHAMPION",
    "MODEL_FILE",
    "PREVIOUS",
    "ModelRef",
    "Promotion",
    "RegisteredVersion",
    "check_model_name",
    "download_model",
    "is_model_uri",
    "parse_model_uri",
    "promote",
    "register_model",
    "resolve_model_uri",
    "undo_promotion",
]

ARTIFACT_DIR = "compat-model"
MODEL_FILE = "model.pt"
CHAMPION = "champion"
PREVIOUS = "previous"

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def is_model_uri(text: str) -> bool:
    return str(text).startswith("models:/")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model and where its artifacts are."""

    name: str
    version: str
    source: str
    run_id: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Promotion:
    """An alias moved by :func:`promote`: ``version`` is now ``alias``; ``previous`` held it before.

    ``journal`` records how to take the promotion back (:func:`undo_promotion`).
    """

    name: str
    version: str
    alias: str
    previous: str | None
    journal: Journal | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "version": self.version, "alias": self.alias, "previous": self.previous}


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (VERSION a positive integer)."""
    match = _URI.match(str(uri))
    if match is None or match.group("version") == "0":
        raise CompatError(f"{uri}: expected a model URI models:/NAME@ALIAS or models:/NAME/VERSION")
    return ModelRef(match.group("name"), match.group("alias"), match.group("version"))


def _client(tracking_uri: str | None = None):
    import mlflow

    from compat.tracking import DEFAULT_TRACKING_URI, ready_store

    if tracking_uri is None:
        tracking_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else DEFAULT_TRACKING_URI
    return ready_store(tracking_uri)


@contextmanager
def _registry_errors(what: str) -> Iterator[None]:
    """MLflow failures (missing model, alias, store) as one-line :class:`CompatError`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first = (str(exc.message).strip().splitlines() or [""])[0]
        raise CompatError(f"{what}: {first}") from None


def resolve_model_uri(uri: str, *, tracking_uri: str | None = None) -> RegisteredVersion:
    """The registered version that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names."""
    ref = parse_model_uri(uri)
    client = _client(tracking_uri)
    with _registry_errors(uri):
        mv = (
            client.get_model_version_by_alias(ref.name, ref.alias)
            if ref.alias
            else client.get_model_version(ref.name, ref.version)
        )
    return RegisteredVersion(mv.name, str(mv.version), mv.source, mv.run_id)


@contextmanager
def _quiet_download() -> Iterator[None]:
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def download_model(uri: str, dst_dir: str | os.PathLike[str], *, tracking_uri: str | None = None) -> Path:
    """Download the compat model file of a registered version into ``dst_dir``.

    Only ``model.pt`` is downloaded and returned; load it with :func:`compat.models.load_model`
    (``weights_only``). A version without it (e.g. a pyfunc model) is a :class:`CompatError`.
    """
    import mlflow.artifacts

    version = resolve_model_uri(uri, tracking_uri=tracking_uri)
    client = _client(tracking_uri)
    source = version.source.rstrip("/")
    with _registry_errors(f"{uri} (version {version.version}, {source})"):
        listed = {
            Path(f.path).name
            for f in mlflow.artifacts.list_artifacts(artifact_uri=source, tracking_uri=client.tracking_uri)
        }
    if MODEL_FILE not in listed:
        found = ", ".join(sorted(listed)) or "nothing"
        raise CompatError(
            f"{uri}: not a compat model (version {version.version} holds {found}; expected {MODEL_FILE}, "
            "as register_model writes it; MLflow pyfunc models are never loaded)"
        )
    with _registry_errors(f"{uri} (version {version.version})"), _quiet_download():
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/{MODEL_FILE}", dst_path=str(dst_dir), tracking_uri=client.tracking_uri
        )
    return Path(local)


def register_model(
    path: str | os.PathLike[str],
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> RegisteredVersion:
    """Register a compat model file (written by :func:`compat.models.save_model`) as a new version of
    the registered model ``name`` (created when absent).

    The file is first loaded with ``weights_only=True`` (so only a valid compat model is registered),
    then logged as ``compat-model/model.pt`` in a new MLflow run of ``experiment`` (default: MLflow's
    default experiment), which is the version's source.

    Returns:
        The new version; ``models:/NAME/VERSION`` is its URI.
    """
    from compat.models import load_model

    p = Path(path)
    load_model(p)  # raises CompatError unless it is a loadable compat model file
    check_model_name(name)
    client = _client(tracking_uri)
    return _register(client, p, name, tags=tags, experiment=experiment, journal=Journal())


def _register(client, p: Path, name: str, *, tags: Mapping[str, str] | None, experiment: str | None,
              journal: Journal) -> RegisteredVersion:
    """Log ``p`` in a new run and make it a new version of ``name``; every step recorded in ``journal``."""
    from mlflow.entities import RunStatus

    with _registry_errors(f"registered model {name!r}"):
        experiment_id = experiment_id_for(client, experiment)
        run = client.create_run(experiment_id, run_name=f"register {name}", tags={"compat.model_file": str(p)})
        run_id = run.info.run_id
        journal.add(f"run {run_id}", lambda: client.delete_run(run_id))
        try:
            with _staged_model(p) as staged:
                client.log_artifact(run_id, str(staged), artifact_path=ARTIFACT_DIR)
        except BaseException:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        client.set_terminated(run_id)
        _ensure_registered(client, name, journal)
        mv = client.create_model_version(
            name, source=f"runs:/{run_id}/{ARTIFACT_DIR}", run_id=run_id, tags=dict(tags or {})
        )
        journal.add(f"version {mv.version} of {name}", lambda: client.delete_model_version(name, str(mv.version)))
    return RegisteredVersion(mv.name, str(mv.version), mv.source, run_id)


@contextmanager
def _staged_model(p: Path) -> Iterator[Path]:
    """``p`` under the name ``model.pt`` (a hard link or copy in a temporary directory when named otherwise)."""
    import shutil
    import tempfile

    if p.name == MODEL_FILE:
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="compat-register-") as tmp:
        staged = Path(tmp) / MODEL_FILE
        shutil.copyfile(p, staged)
        yield staged


def check_model_name(name: str) -> None:
    """A registered model name: non-empty, without ``/`` or ``@`` (checked before any work)."""
    if not name or not str(name).strip() or "/" in name or "@" in name:
        raise CompatError(f"registered model name {name!r}: expected a non-empty name without '/' or '@'")


def _ensure_registered(client, name: str, journal: Journal) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
        journal.add(f"registered model {name}", lambda: client.delete_registered_model(name))


def _current(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(
    name: str,
    candidate: str | os.PathLike[str],
    *,
    tags: Mapping[str, str] | None = None,
    alias: str = CHAMPION,
    previous_alias: str = PREVIOUS,
    tracking_uri: str | None = None,
    on_version: Callable[[str], None] | None = None,
) -> Promotion:
    """Make ``candidate`` the ``alias`` (``champion``) version of registered model ``name``.

    Args:
        name: the registered model (created when absent).
        candidate: a compat model file (registered as a new version) or a ``models:/`` URI: the same
            registered model's version itself, or another model's version (registered again under
            ``name`` with the same artifacts).
        tags: set on the promoted version (e.g. the gate's verdict); keys are made MLflow-safe
            as metric names are (:func:`compat.tracking.metric_key`).
        alias, previous_alias: the alias moved to the candidate, and the one given to the version
            that held it before (unless that is the candidate itself).
        on_version: called with the version (registered and tagged) before any alias moves; if it
            raises, nothing moves (the gallery ledger records there, :mod:`compat.gate.ledger`).

    Returns:
        What moved. If a step fails (or Ctrl-C arrives), the steps already made are undone, so the
        registry is left as it was; :func:`undo_promotion` takes a finished promotion back.
    """
    from compat.tracking import PARAM_VALUE_MAX, metric_key

    check_model_name(name)
    client = _client(tracking_uri)
    tags = {metric_key(k): str(v)[:PARAM_VALUE_MAX] for k, v in (tags or {}).items()}
    journal = Journal()
    try:
        version = _candidate_version(client, name, candidate, tags, journal)
        if on_version is not None:
            _restorable_tags(client, name, version, journal)  # what on_version tags is taken back with the rest
            on_version(version)
        with _registry_errors(f"registered model {name!r}"):
            before = _current(client, name, alias)
            if before is not None and before != version:
                _move_alias(client, name, previous_alias, before, journal)
            _move_alias(client, name, alias, version, journal)
    except BaseException:
        journal.undo()
        raise
    return Promotion(name, version, alias, before if before != version else None, journal)


def _candidate_version(client, name: str, candidate: str | os.PathLike[str], tags: dict[str, str],
                       journal: Journal) -> str:
    """The version of ``name`` that holds ``candidate``: registered, copied in, or (the same model's
    version) tagged; each change recorded in ``journal``."""
    if not is_model_uri(str(candidate)):
        from compat.models import load_model

        load_model(candidate)  # raises CompatError unless it is a loadable compat model file
        return _register(client, Path(candidate), name, tags=tags, experiment=None, journal=journal).version
    found = resolve_model_uri(str(candidate), tracking_uri=client.tracking_uri)
    with _registry_errors(f"registered model {name!r}"):
        if found.name != name:
            _ensure_registered(client, name, journal)
            version = str(client.create_model_version(
                name, source=found.source, run_id=found.run_id, tags={"compat.copied_from": found.uri, **tags}
            ).version)
            journal.add(f"version {version} of {name}", lambda: client.delete_model_version(name, version))
            return version
        old_tags = dict(client.get_model_version(name, found.version).tags)
        for key, value in tags.items():
            client.set_model_version_tag(name, found.version, key, value)
            journal.add(f"tag {key}", lambda k=key: (
                client.set_model_version_tag(name, found.version, k, old_tags[k]) if k in old_tags
                else client.delete_model_version_tag(name, found.version, k)))
        return found.version


def _restorable_tags(client, name: str, version: str, journal: Journal) -> None:
    """Record how to put the version's tags back as they are now."""
    with _registry_errors(f"registered model {name!r}"):
        before = dict(client.get_model_version(name, version).tags)

    def restore() -> None:
        now = dict(client.get_model_version(name, version).tags)
        for key in now.keys() - before.keys():
            client.delete_model_version_tag(name, version, key)
        for key, value in before.items():
            if now.get(key) != value:
                client.set_model_version_tag(name, version, key, value)

    journal.add(f"tags of version {version}", restore)


def _move_alias(client, name: str, alias: str, version: str, journal: Journal) -> None:
    """Point ``alias`` at ``version``, recording how to point it back (or remove it)."""
    held = _current(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    journal.add(f"alias {alias}", lambda: (client.set_registered_model_alias(name, alias, held) if held is not None
                                           else client.delete_registered_model_alias(name, alias)))


def undo_promotion(promotion: Promotion) -> list[str]:
    """Take a promotion back: aliases as they were, a version registered or copied for it deleted.

    Returns:
        What could not be undone (empty when the registry is as it was before :func:`promote`).
    """
    return promotion.journal.undo() if promotion.journal is not None else []
