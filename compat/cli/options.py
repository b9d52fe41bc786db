"""What the commands share: one-line errors, the parameter types, and options declared once.

Defaults and choices come from the library (its enums and config classes), never copied here.
Importing this module loads click, numpy and the light config modules, not torch or mlflow, so
that ``compat --help`` answers quickly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import click

from compat.cli.failures import run_cleanly
from compat.errors import CompatError

__all__ = [
    "SEED",
    "AdapterPath",
    "FloatList",
    "NamedPath",
    "backend",
    "choice",
    "device",
    "dim_policy",
    "evaluator_options",
    "extraction",
    "extraction_spec",
    "fail_cleanly",
    "index",
    "memory_budget",
    "model_code",
    "preprocessing_of",
    "query_sample",
    "quiet",
    "rank_context",
    "relevance",
    "search_precision",
    "similarity",
    "tracking",
    "unique_names",
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Seeds of every command: what numpy's and torch's generators accept alike.
SEED = click.IntRange(0, 2**32 - 1)


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line on stderr and an exit code for whatever the command raises: a :class:`CompatError` or
    an unusable file exit 2, Ctrl-C 130, anything else (a bug) 3 (:mod:`compat.cli.failures`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run_cleanly(fn, args, kwargs)

    return wrapper


def choice(enum_cls: type[Enum]) -> click.Choice:
    """A click choice of an enum's values."""
    return click.Choice([str(m.value) for m in enum_cls])


class NamedPath(click.ParamType):
    """``NAME=PATH``."""

    name = "NAME=PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Path]:
        if isinstance(value, tuple):
            return value
        name, sep, path = str(value).partition("=")
        if not sep or not name or not path:
            self.fail(f"{value!r} is not NAME=PATH (e.g. v1=features/v1.npz)", param, ctx)
        return name, Path(path)


class AdapterPath(click.ParamType):
    """``NEW:OLD=PATH``."""

    name = "NEW:OLD=PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str, Path]:
        if isinstance(value, tuple):
            return value
        pair, sep, path = str(value).partition("=")
        new, colon, old = pair.partition(":")
        if not sep or not colon or not new or not old or ":" in old or not path:
            self.fail(f"{value!r} is not NEW:OLD=PATH (e.g. v2:v1=adapters/v2-v1.npz)", param, ctx)
        return new, old, Path(path)


class FloatList(click.ParamType):
    """``0.485,0.456,0.406``: comma-separated numbers."""

    name = "X[,Y,Z]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers (e.g. 0.485,0.456,0.406)", param, ctx)


def unique_names(pairs: tuple[tuple[str, Path], ...], option: str) -> None:
    """Every NAME of ``NAME=PATH`` options given once."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise CompatError(f"{option}: version name {name!r} is given twice")
        seen.add(name)


def device(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")(fn)


def quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", is_flag=True, help="No progress bars (they are shown on a terminal only).")(fn)


def similarity(fn: Callable[..., Any]) -> Callable[..., Any]:
    from compat.retrieval.knn import Similarity

    return click.option("--similarity", type=choice(Similarity), default=Similarity.COSINE.value, show_default=True,
                        help="Cosine (inner product of L2-normalised features) or squared L2 distance.")(fn)


def dim_policy(fn: Callable[..., Any]) -> Callable[..., Any]:
    from compat.compatibility.cell import DimPolicy

    return click.option("--dim-policy", type=choice(DimPolicy), default=DimPolicy.ERROR.value, show_default=True,
                        help="When two versions' feature sizes differ (and the newer declares no compatible_dim).")(fn)


def backend(fn: Callable[..., Any]) -> Callable[..., Any]:
    from compat.retrieval.knn import Backend

    return click.option("--backend", type=choice(Backend), default=Backend.AUTO.value, show_default=True,
                        help="Exact search backend; every backend returns the same neighbours.")(fn)


def memory_budget(fn: Callable[..., Any]) -> Callable[..., Any]:
    from compat.retrieval.knn import DEFAULT_MEMORY_BUDGET

    return click.option("--memory-budget", default=DEFAULT_MEMORY_BUDGET, show_default=True,
                        help="Bound on score buffers, e.g. 512MiB.")(fn)


def query_sample(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--query-sample", type=click.IntRange(min=1), default=None, metavar="N",
                        help="Evaluate a seeded sample of N queries per cell, stratified by label (--seed); the "
                        "reports say so.")(fn)


def rank_context(device: str):
    """This process's :class:`compat.distributed.DistributedContext` (torchrun) and its device."""
    from compat.device import resolve_device
    from compat.distributed import DistributedContext

    resolved = resolve_device(device)
    dist = DistributedContext.from_env(resolved)
    return dist, dist.device(resolved)


def tracking(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--experiment", default=None, help="MLflow experiment name.")(fn)
    return click.option("--track", is_flag=True, help="Log to MLflow (also on when MLFLOW_TRACKING_URI is set).")(fn)


def extraction(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--data-root, --split, --batch-size: where and how model inputs are embedded."""
    fn = click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True,
                      help="Images per forward pass.")(fn)
    fn = click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
                      help="The dataset split to embed.")(fn)
    return click.option("--data-root", default=None, help="Directory holding the datasets (torchvision layout).")(fn)


def search_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    from compat.retrieval.precision import Precision

    return click.option("--search-precision", type=choice(Precision), default=Precision.FP32.value, show_default=True,
                        help="Inputs of the torch backend's top-k search (tf32, fp16, bf16: tensor cores on CUDA); "
                        "the neighbours stay exact.")(fn)


def model_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--trust-model-code and the explicit preprocessing of models compat did not train."""
    from compat.preprocessing import list_presets

    fn = click.option("--std", type=FloatList(), default=None, help="Per-channel std, e.g. 0.229,0.224,0.225.")(fn)
    fn = click.option("--mean", type=FloatList(), default=None, help="Per-channel mean (1 or 3 values).")(fn)
    fn = click.option("--resize", type=click.IntRange(min=1), default=None,
                      help="Resize the shorter edge to this before the centre crop (default: --image-size).")(fn)
    fn = click.option("--image-size", type=click.IntRange(min=1), default=None, help="Side of the centre crop.")(fn)
    fn = click.option("--preprocessing", "preset", type=click.Choice(list_presets()), default=None,
                      help="Named preprocessing of torchscript:/python: models; --image-size, --resize, --mean, "
                      "--std override its fields.")(fn)
    return click.option("--trust-model-code", is_flag=True,
                        help="Allow torchscript:PATH and python:module:function models, which run code you supply.")(fn)


def preprocessing_of(preset: str | None, image_size: int | None, resize: int | None, mean: tuple[float, ...] | None,
                     std: tuple[float, ...] | None):
    """The :class:`~compat.preprocessing.Preprocessing` the options give, or ``None`` when none is given."""
    from compat.preprocessing import resolve_preprocessing

    if preset is None and image_size is None and resize is None and mean is None and std is None:
        return None
    return resolve_preprocessing(preset, image_size=image_size, resize=resize, mean=mean, std=std)


def relevance(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--qrels, --exclude: what counts as a positive under the query-gallery protocol."""
    from compat.retrieval.query_gallery import Exclude

    fn = click.option("--exclude", type=choice(Exclude), default=Exclude.NONE.value, show_default=True,
                      help="query-gallery: same-group ignores gallery items that would be positives and share the "
                      "query's group (re-identification: same identity, same camera); needs 'groups' in the features.")(fn)
    return click.option("--qrels", type=click.Path(path_type=Path), default=None,
                        help="query-gallery: relevance file (CSV query_id,gallery_id,relevance with positive or "
                        "junk) replacing label relevance; junk is removed from the ranking.")(fn)


def evaluator_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--similarity, --dim-policy, --backend, --search-precision, --device, --memory-budget: how cells are computed."""
    for option in (memory_budget, device, search_precision, backend, dim_policy, similarity):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class IndexOptions:
    """``--index``, ``--nprobe``, ``--ef-search``, ``--index-train-size``, ``--index-k`` as given."""

    factory: str | None
    nprobe: int | None
    ef_search: int | None
    train_size: int | None
    k: int

    def spec(self, seed: int, *, stored: bool = False):
        """The :class:`~compat.retrieval.index.IndexSpec`, or ``None`` when no index is named
        (``stored``: a stored index file is, so the search parameters apply to it)."""
        from compat.configfile import validate_model
        from compat.retrieval.index import IndexSpec

        if self.factory is None and not stored:
            given = [name for name, value in (("--nprobe", self.nprobe), ("--ef-search", self.ef_search),
                                              ("--index-train-size", self.train_size)) if value is not None]
            if given:
                raise CompatError(f"{given[0]}: applies to an index; name one with --index FACTORY")
            return None
        raw = {"factory": self.factory, "nprobe": self.nprobe, "ef_search": self.ef_search,
               "train_size": self.train_size, "k": self.k, "seed": seed}
        return validate_model(IndexSpec, raw, "--index")


def index(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--index, --nprobe, --ef-search, --index-train-size, --index-k, passed on as ``index: IndexOptions``."""
    from compat.retrieval.index import DEFAULT_INDEX_K

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["index"] = IndexOptions(kwargs.pop("index"), kwargs.pop("nprobe"), kwargs.pop("ef_search"),
                                       kwargs.pop("index_train_size"), kwargs.pop("index_k"))
        return fn(*args, **kwargs)

    for option in (
        click.option("--index-k", type=click.IntRange(min=1), default=DEFAULT_INDEX_K, show_default=True,
                     help="Depth of map@K and of the index's recall against the exact top-k."),
        click.option("--index-train-size", type=click.IntRange(min=1), default=None,
                     help="Train each index on a seeded sample of this many gallery vectors (default: all)."),
        click.option("--ef-search", type=click.IntRange(min=1), default=None, help="HNSW search breadth (efSearch)."),
        click.option("--nprobe", type=click.IntRange(min=1), default=None, help="Inverted lists an IVF index visits."),
        click.option("--index", default=None, metavar="FACTORY",
                     help="Also search each gallery through a faiss index_factory index built on it "
                          "(e.g. IVF1024,PQ16, HNSW32), as production does; in the gate, for every "
                          "cmc@K / map@K check."),
    ):
        wrapper = option(wrapper)
    return wrapper


def extraction_spec(dataset: str | None, data_root: str | None, split: str, batch_size: int, device: str,
                    quiet: bool, preprocessing=None):
    """The gate's :class:`compat.gate.ExtractionSpec` of the ``--dataset`` and :func:`extraction` options
    (None without ``--dataset``: model sources are then refused when loaded); ``preprocessing`` (from
    :func:`preprocessing_of`) prepares the images of ``torchscript:`` / ``python:`` models."""
    if dataset is None:
        return None
    from compat.gate.inputs import ExtractionSpec

    return ExtractionSpec(dataset, data_root, split, device=device, batch_size=batch_size, progress=not quiet,
                          preprocessing=preprocessing)
