"""What the commands share: one-line errors, the parameter types, and options declared once.

Defaults and choices come from the library (its enums and config classes), never copied here.
Importing this module loads click, numpy and the light config modules, not torch or mlflow, so
that ``compat --help`` answers quickly.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import click

from compat.errors import EXIT_BAD_INPUT, CompatError

__all__ = [
    "AdapterPath",
    "NamedPath",
    "backend",
    "choice",
    "device",
    "dim_policy",
    "evaluator_options",
    "extraction",
    "extraction_spec",
    "fail_cleanly",
    "memory_budget",
    "query_sample",
    "quiet",
    "rank_context",
    "search_precision",
    "similarity",
    "tracking",
    "unique_names",
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`CompatError` into one line on stderr and exit code 2 (under torchrun, every rank
    exits 2 and rank 0 prints the line)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CompatError as exc:
            if os.environ.get("RANK", "0") == "0":
                click.echo(f"compat: error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)

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


def evaluator_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--similarity, --dim-policy, --backend, --search-precision, --device, --memory-budget: how cells are computed."""
    for option in (memory_budget, device, search_precision, backend, dim_policy, similarity):
        fn = option(fn)
    return fn


def extraction_spec(dataset: str | None, data_root: str | None, split: str, batch_size: int, device: str,
                    quiet: bool):
    """The gate's :class:`compat.gate.ExtractionSpec` of the ``--dataset`` and :func:`extraction` options
    (None without ``--dataset``: model sources are then refused when loaded)."""
    if dataset is None:
        return None
    from compat.gate.inputs import ExtractionSpec

    return ExtractionSpec(dataset, data_root, split, device=device, batch_size=batch_size, progress=not quiet)
