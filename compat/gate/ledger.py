"""The gallery ledger: which feature space the live gallery is in, how far its backfill has gone,
and whether the champion was gated against it.

A **feature space** is named after the model whose features fill it: the ``sha256:`` digest of its
compat model file (the ``checkpoint`` of the features' metadata, which every extraction by compat
records), followed by ``+B:<digest of the adapter file>`` when queries and re-extracted items go
through an adapter's ``B``. The gate may name the gallery's space explicitly (``--gallery-space``)
when its ``--old`` features carry no digest.

Tags on a registered version, set when ``compat gate --promote`` moves ``champion`` to it:

==========================  ===================================================================
``compat.space``            the version's own space (its queries, and the items it re-extracts)
``compat.gallery_space``    the gallery space it was gated against (the gate's ``--old``)
``compat.compatible_with``  every space it was gated against: ``--old``, then each ``--chain``
``compat.adapter``          with ``--adapter``: the adapter file, logged under
                            ``compat-adapter/NAME-vVERSION/`` in the version's run; and
                            ``compat.adapter_digest``
``compat.space_change``     ``true`` when promoted over a live gallery it was not gated against
==========================  ===================================================================

The registered model's tag ``compat.gallery`` holds the live gallery as JSON (:class:`GalleryState`):
its size, the spaces of the items not re-extracted by the current backfill, and the backfill (the
space it re-extracts into, the version doing it, the items done). The first promotion through the
ledger starts it with the gallery in the space that candidate was gated against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from compat.errors import CompatError
from compat.features import FeatureSet
from compat.gate.registry import (
    CHAMPION,
    Promotion,
    _client,
    _registry_errors,
    promote,
    resolve_model_uri,
    undo_promotion,
)

__all__ = [
    "GALLERY_TAG",
    "GalleryState",
    "GatedSpaces",
    "check_promotion",
    "feature_space",
    "gated_spaces",
    "parse_done",
    "promote_gated",
    "read_gallery",
    "record_backfill",
    "render_status",
]

GALLERY_TAG = "compat.gallery"
SPACE_TAG, GALLERY_SPACE_TAG, COMPATIBLE_TAG = "compat.space", "compat.gallery_space", "compat.compatible_with"
ADAPTER_TAG, ADAPTER_DIGEST_TAG, SPACE_CHANGE_TAG = "compat.adapter", "compat.adapter_digest", "compat.space_change"
ADAPTER_DIR = "compat-adapter"


def feature_space(fs: FeatureSet, *, option: str, adapter_digest: str | None = None) -> str:
    """The space of a feature set: its ``checkpoint`` digest (``+B:<adapter digest>`` with an adapter)."""
    digest = fs.meta.get("checkpoint")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise CompatError(f"{option} {fs.source}: meta field 'checkpoint' (the model file's sha256 digest) is missing; "
                          "the ledger names a feature space by it (give a model file or models:/ URI, features "
                          "written by compat extract, or --gallery-space ID)")
    return digest if adapter_digest is None else f"{digest}+B:{adapter_digest}"


@dataclass(frozen=True)
class GatedSpaces:
    """What a gate run vouches for: the candidate's own space and the gallery spaces it was gated against.

    Attributes:
        own: the candidate's space.
        gallery: the space of the gate's ``--old``.
        compatible_with: ``gallery``, then the ``--chain`` spaces.
        adapter: the adapter file deployed with the candidate, if any.
    """

    own: str
    gallery: str
    compatible_with: tuple[str, ...]
    adapter: Path | None = None

    @property
    def covered(self) -> frozenset[str]:
        """Spaces the candidate may search: its own and those it was gated against."""
        return frozenset((self.own, *self.compatible_with))

    def tags(self) -> dict[str, str]:
        return {SPACE_TAG: self.own, GALLERY_SPACE_TAG: self.gallery, COMPATIBLE_TAG: ",".join(self.compatible_with)}


def gated_spaces(old: FeatureSet, new: FeatureSet, chain: tuple[FeatureSet, ...] | list[FeatureSet] = (), *,
                 gallery_space: str | None = None, adapter: str | Path | None = None) -> GatedSpaces:
    """The spaces of a gate run: ``new`` is the candidate as extracted (before any adapter).

    Args:
        old, new, chain: the gate's inputs.
        gallery_space: names the space of ``old`` (when its features carry no digest).
        adapter: the adapter file deployed with the candidate.
    """
    from compat.models.extract import file_digest

    adapter_digest = None if adapter is None else file_digest(adapter)
    own = feature_space(new, option="--new", adapter_digest=adapter_digest)
    gallery = gallery_space or feature_space(old, option="--old")
    others = [fs.meta["checkpoint"] for fs in chain if isinstance(fs.meta.get("checkpoint"), str)]
    spaces = tuple(dict.fromkeys([gallery, *others]))
    return GatedSpaces(own, gallery, spaces, None if adapter is None else Path(adapter))


@dataclass(frozen=True)
class GalleryState:
    """The live gallery as the ledger knows it.

    Attributes:
        size: items in the gallery (None until a backfill is recorded with it).
        spaces: spaces of the items not re-extracted by the current backfill (more than one when a
            backfill was left unfinished for another).
        backfill_space, backfill_version: the space the current backfill re-extracts into and the
            registered version doing it (None before any backfill).
        done: items re-extracted by the current backfill.
    """

    size: int | None
    spaces: tuple[str, ...]
    backfill_space: str | None = None
    backfill_version: str | None = None
    done: int = 0

    @property
    def fraction(self) -> float | None:
        return None if not self.size else self.done / self.size

    @property
    def present(self) -> list[tuple[tuple[str, ...], int | None]]:
        """Groups of items by space: (spaces they may be in, how many; None when the size is unknown)."""
        rest = None if self.size is None else self.size - self.done
        groups = [] if rest == 0 or not self.spaces else [(self.spaces, rest)]
        if self.backfill_space is not None and self.done > 0:
            groups.append(((self.backfill_space,), self.done))
        return groups

    def after_backfill(self, space: str, version: str, done: int, *, gallery_size: int | None = None) -> GalleryState:
        """The state once ``version`` (of ``space``) has re-extracted ``done`` items in all.

        A backfill into another space than the current one starts anew: the items the unfinished
        one re-extracted join the spaces of the rest (or, when it had finished, are the rest).
        """
        size = gallery_size if gallery_size is not None else self.size
        if size is None:
            raise CompatError("--gallery-size: the ledger does not know the gallery's size yet; give it once")
        if not 0 <= done <= size:
            raise CompatError(f"--done {done}: expected between 0 and the gallery's {size} items")
        spaces = self.spaces
        if self.backfill_space is not None and self.backfill_space != space and self.done > 0:
            finished = self.size is not None and self.done >= self.size
            spaces = (self.backfill_space,) if finished else tuple(dict.fromkeys((*spaces, self.backfill_space)))
        return GalleryState(size, spaces, space, version, done)

    def to_json(self) -> dict:
        return {"size": self.size, "spaces": list(self.spaces), "backfill": None if self.backfill_space is None else
                {"space": self.backfill_space, "version": self.backfill_version, "done": self.done}}

    @classmethod
    def from_json(cls, text: str, where: str) -> GalleryState:
        try:
            doc = json.loads(text)
            backfill = doc["backfill"] or {}
            return cls(doc["size"], tuple(doc["spaces"]), backfill.get("space"), backfill.get("version"),
                       int(backfill.get("done", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise CompatError(f"{where}: tag {GALLERY_TAG} is not a gallery ledger ({exc})") from None


def read_gallery(name: str, *, tracking_uri: str | None = None) -> GalleryState | None:
    """The ledger of registered model ``name`` (None when the model or its ledger does not exist yet)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise CompatError(f"registered model {name!r}: {(str(exc.message).strip().splitlines() or [''])[0]}") from None
    return None if GALLERY_TAG not in tags else GalleryState.from_json(tags[GALLERY_TAG], f"registered model {name!r}")


def _write_gallery(client, name: str, state: GalleryState) -> None:
    with _registry_errors(f"registered model {name!r}"):
        client.set_registered_model_tag(name, GALLERY_TAG, json.dumps(state.to_json(), sort_keys=True))


def _ungated(state: GalleryState, covered: frozenset[str]) -> list[str]:
    return [s for spaces, _ in state.present for s in spaces if s not in covered]


def check_promotion(name: str, gated: GatedSpaces, *, allow_space_change: bool = False,
                    tracking_uri: str | None = None) -> list[str]:
    """Refuse a candidate that was not gated against every space the live gallery holds.

    Returns:
        The spaces it was not gated against (empty unless ``allow_space_change``).

    Raises:
        CompatError: such spaces exist and ``allow_space_change`` is False.
    """
    state = read_gallery(name, tracking_uri=tracking_uri)
    missing = [] if state is None else _ungated(state, gated.covered)
    if missing and not allow_space_change:
        raise CompatError(f"--promote {name}: the live gallery holds items in space {missing[0]}, which the candidate "
                          f"was not gated against (it was gated against {', '.join(gated.compatible_with)}); gate it "
                          "against that gallery's model, or pass --allow-space-change")
    return missing


def promote_gated(name: str, candidate: str, gated: GatedSpaces, *, tags: dict[str, str] | None = None,
                  allow_space_change: bool = False, tracking_uri: str | None = None) -> Promotion:
    """Promote ``candidate`` to ``champion`` of ``name`` (:func:`compat.gate.registry.promote`) with
    the ledger: refuse it as :func:`check_promotion` does, tag the version with its spaces, log
    the adapter file in its run before the alias moves, and start the ledger on a first promotion."""
    missing = check_promotion(name, gated, allow_space_change=allow_space_change, tracking_uri=tracking_uri)
    client = _client(tracking_uri)
    extra = {**gated.tags(), **({SPACE_CHANGE_TAG: "true"} if missing else {})}

    def record(version: str) -> None:
        if gated.adapter is not None:
            _log_adapter(client, name, version, gated.adapter)

    promotion = promote(name, candidate, tags={**(tags or {}), **extra}, tracking_uri=client.tracking_uri,
                        on_version=record)
    try:
        if read_gallery(name, tracking_uri=client.tracking_uri) is None:
            _write_gallery(client, name, GalleryState(None, (gated.gallery,)))
            promotion.journal.add("the gallery ledger", lambda: client.delete_registered_model_tag(name, GALLERY_TAG))
    except BaseException:
        undo_promotion(promotion)  # a run that fails leaves the registry as it was
        raise
    return promotion


def _log_adapter(client, name: str, version: str, adapter: Path) -> None:
    from compat.models.extract import file_digest

    with _registry_errors(f"registered model {name!r} version {version}"):
        run_id = client.get_model_version(name, version).run_id
        if run_id is None:
            run_id = client.create_run("0", run_name=f"adapter of {name} v{version}").info.run_id
        folder = f"{ADAPTER_DIR}/{name}-v{version}"
        client.log_artifact(run_id, str(adapter), artifact_path=folder)
        client.set_model_version_tag(name, version, ADAPTER_TAG, f"runs:/{run_id}/{folder}/{adapter.name}")
        client.set_model_version_tag(name, version, ADAPTER_DIGEST_TAG, file_digest(adapter))


def download_adapter(uri: str, dst_dir: str | Path, *, tracking_uri: str | None = None) -> Path | None:
    """The adapter file deployed with a registered version (None when it has none)."""
    import mlflow.artifacts

    version = resolve_model_uri(uri, tracking_uri=tracking_uri)
    client = _client(tracking_uri)
    with _registry_errors(uri):
        location = client.get_model_version(version.name, version.version).tags.get(ADAPTER_TAG)
        if location is None:
            return None
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst_dir),
                                                        tracking_uri=client.tracking_uri))


def version_tags(uri: str, *, tracking_uri: str | None = None) -> tuple[str, str, dict[str, str]]:
    """(registered model name, version, the version's tags) of a ``models:/`` URI."""
    version = resolve_model_uri(uri, tracking_uri=tracking_uri)
    client = _client(tracking_uri)
    with _registry_errors(uri):
        tags = dict(client.get_model_version(version.name, version.version).tags)
    return version.name, version.version, tags


def record_backfill(uri: str, done: int, *, gallery_size: int | None = None,
                    tracking_uri: str | None = None) -> GalleryState:
    """Record that the version ``uri`` names has re-extracted ``done`` gallery items in all (not an increment).

    Args:
        uri: ``models:/NAME@champion`` (or any version promoted through the ledger).
        done: items re-extracted so far by this version.
        gallery_size: the gallery's size (needed at the first record; updates it later).

    Returns:
        The new state. A version of another space than the current backfill's starts a new
        backfill; the items of the unfinished one join the spaces of the rest.
    """
    name, version, tags = version_tags(uri, tracking_uri=tracking_uri)
    space = tags.get(SPACE_TAG)
    if space is None:
        raise CompatError(f"{uri}: version {version} has no {SPACE_TAG} tag; promote it with compat gate --promote "
                          "so that the ledger knows its feature space")
    state = read_gallery(name, tracking_uri=tracking_uri)
    if state is None:
        raise CompatError(f"{uri}: registered model {name!r} has no gallery ledger yet; promote with compat gate --promote")
    new = state.after_backfill(space, version, done, gallery_size=gallery_size)
    _write_gallery(_client(tracking_uri), name, new)
    return new


@dataclass(frozen=True)
class LedgerStatus:
    """The champion of a registered model against its live gallery.

    Attributes:
        name, version: the registered model and its champion version.
        space: the champion's own space (None: it was promoted without the ledger).
        covered: spaces the champion may search (its own and those it was gated against).
        gallery: the live gallery (None: no ledger).
    """

    name: str
    version: str
    space: str | None
    covered: frozenset[str]
    gallery: GalleryState | None
    tags: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def gated(self) -> bool:
        """The live combination was gated: every space the gallery holds is covered by the champion."""
        return self.space is not None and self.gallery is not None and not _ungated(self.gallery, self.covered)


def gallery_status(name: str, *, tracking_uri: str | None = None) -> LedgerStatus:
    """The champion of ``name`` (``NAME`` or ``models:/NAME``) and its live gallery."""
    name = name.removeprefix("models:/").split("@", 1)[0]
    model, version, tags = version_tags(f"models:/{name}@{CHAMPION}", tracking_uri=tracking_uri)
    covered = frozenset(s for s in (tags.get(SPACE_TAG), *tags.get(COMPATIBLE_TAG, "").split(",")) if s)
    return LedgerStatus(model, version, tags.get(SPACE_TAG), covered, read_gallery(model, tracking_uri=tracking_uri),
                        tags)


def render_status(status: LedgerStatus) -> str:
    """What ``compat status`` prints: the champion, the gallery's spaces and shares, and the verdict."""
    mark = {True: "gated", False: "NOT gated"}
    lines = [f"champion: models:/{status.name}/{status.version}, space {status.space or 'unknown (not promoted through the ledger)'}"]
    if status.tags.get(ADAPTER_TAG):
        lines.append(f"adapter: {status.tags[ADAPTER_TAG]}")
    g = status.gallery
    if g is None:
        lines.append("gallery: no ledger (promote with compat gate --promote)")
    else:
        size = "size unknown" if g.size is None else f"{g.size:,} items"
        backfill = "no backfill recorded" if g.backfill_space is None else (
            f"backfill by version {g.backfill_version}: {g.done:,} items ({100 * (g.fraction or 0):.1f}%)")
        lines.append(f"gallery: {size}; {backfill}")
        for spaces, items in g.present:
            share = "" if items is None or not g.size else f"{items:,} items ({100 * items / g.size:.1f}%) "
            for space in spaces:
                lines.append(f"  {share}in {space}: {mark[space in status.covered]}")
    lines.append(f"the live combination was gated: {'yes' if status.gated else 'NO'}")
    return "\n".join(lines) + "\n"


def parse_done(value: str) -> int:
    """``--done``: a count of items, or a file of ids one per line (e.g. the head of ``plan.csv``;
    a first line ``id`` is its header, not an item). Lines are counted, not checked against the gallery."""
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    path = Path(text)
    if not path.is_file():
        raise CompatError(f"--done {value}: expected a number of items or a file of ids, one per line")
    count = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for k, line in enumerate(fh):
                count += bool(line.strip()) and not (k == 0 and line.strip() == "id")  # plan.csv's header
    except (OSError, UnicodeDecodeError) as exc:
        raise CompatError(f"--done {path}: not a readable text file of ids ({exc})") from None
    return count
