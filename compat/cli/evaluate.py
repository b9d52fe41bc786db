"""``compat eval``: a chain of feature sets, every version's queries against every older gallery."""

from __future__ import annotations

from pathlib import Path

import click

from compat.adapters.config import DEFAULT_BACKFILL_POINTS, Ordering
from compat.cli import options
from compat.errors import CompatError
from compat.retrieval.evaluator import DEFAULT_FOLDS, DEFAULT_PAIRS, Protocol

__all__ = ["eval_command"]


@click.command("eval")
@click.option("--version", "versions", type=options.NamedPath(), multiple=True, required=True,
              help="A version's gallery features, oldest first: NAME=FEATURES (.npz or .npy directory).")
@click.option("--query", "queries", type=options.NamedPath(), multiple=True,
              help="Separate query features for a version: NAME=FEATURES. Default: the gallery itself "
              "(query-gallery: required for every version).")
@click.option("--adapter", "adapters", type=options.AdapterPath(), multiple=True,
              help="An adapter file from 'compat adapt': B maps NEW's queries before they search OLD's gallery.")
@click.option("--backfill", "backfill", multiple=True, type=options.choice(Ordering),
              help="Draw the partial-backfill curve with this ordering (repeatable), for every adapted pair "
              "(without adapters: the newest upgrade).")
@click.option("--backfill-points", type=click.IntRange(min=2), default=DEFAULT_BACKFILL_POINTS, show_default=True,
              help="Points of the backfill grid, beta from 0 to 1.")
@click.option("--protocol", type=options.choice(Protocol), default=Protocol.LOO.value, show_default=True,
              help="Leave-one-out retrieval, separate query and gallery sets, per-class template identification, "
              "or pair verification.")
@click.option("--metric", "metrics", multiple=True,
              help="cmc@K, map, map@r (loo, query-gallery); cmc@K, map (template); acc (pairs). "
              "Default: cmc@1 cmc@5 map.")
@options.relevance
@options.evaluator_options
@options.index
@click.option("--index-file", "index_files", type=options.NamedPath(), multiple=True,
              help="Search NAME's gallery through this stored faiss index as it is (read-only): NAME=PATH.")
@click.option("--index-ids", "index_ids", type=options.NamedPath(), multiple=True,
              help="NAME=IDS.npy: the gallery id of each vector of NAME's stored index, when it has no IndexIDMap.")
@click.option("--independent", type=click.Path(path_type=Path), default=None,
              help="Features of the newest model trained without compatibility: the update gain's upper bound.")
@click.option("--independent-query", type=click.Path(path_type=Path), default=None,
              help="Its query features (query-gallery).")
@click.option("--pairs", "n_pairs", type=click.IntRange(min=1), default=DEFAULT_PAIRS, show_default=True,
              help="Positive (and as many negative) pairs for --protocol pairs.")
@click.option("--folds", type=click.IntRange(min=2), default=DEFAULT_FOLDS, show_default=True)
@click.option("--seed", type=options.SEED, default=0, show_default=True,
              help="Seed of the pair sampler, the query sample, the random backfill ordering and the index's "
              "training sample.")
@options.query_sample
@click.option("--ties-pass", is_flag=True,
              help="Count M(new, old) == M(old, old) as compatible (default: a tie fails).")
@click.option("--allow-partial", is_flag=True,
              help="loo: versions holding different items are evaluated over the ids all hold (said in every "
              "report) instead of refused.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("compat-report"), show_default=True)
@options.tracking
@options.quiet
@options.fail_cleanly
def eval_command(versions: tuple[tuple[str, Path], ...], queries: tuple[tuple[str, Path], ...],
                 adapters: tuple[tuple[str, str, Path], ...], backfill: tuple[str, ...], backfill_points: int,
                 protocol: str, metrics: tuple[str, ...], qrels: Path | None, exclude: str, similarity: str,
                 dim_policy: str, backend: str, search_precision: str, device: str, memory_budget: str,
                 index: options.IndexOptions, index_files: tuple[tuple[str, Path], ...],
                 index_ids: tuple[tuple[str, Path], ...], independent: Path | None, independent_query: Path | None,
                 n_pairs: int, folds: int, seed: int, query_sample: int | None, ties_pass: bool, allow_partial: bool,
                 out: Path, track: bool, experiment: str | None,
                 quiet: bool) -> None:
    """Evaluate a chain of versions: every version's queries against every older gallery.

    Writes compat.json, compat.md and compat.png under --out (and backfill.png with --backfill).
    Under torchrun every rank searches its part of each gallery and rank 0 writes the reports.
    """
    from compat._files import check_output_dir
    from compat.manifest import load_for_rank
    from compat.retrieval.evaluator import RetrievalEvaluator
    from compat.retrieval.qrels import load_qrels

    dist, device = options.rank_context(device)
    dist.agree(lambda: check_output_dir(out))  # before any work: reports that cannot be written are never computed
    relevance = load_qrels(qrels) if qrels is not None else None
    setup = _index_setup(index, index_files, index_ids, seed)
    if setup is not None:
        metrics = _with_index(setup, metrics, protocol, adapters or backfill, dist.world_size, query_sample)
    evaluator = RetrievalEvaluator(metrics or None, protocol=protocol, similarity=similarity, backend=backend,
                                   search_precision=search_precision,
                                   device=device, memory_budget=memory_budget, pairs=n_pairs, folds=folds, seed=seed,
                                   progress=not quiet and dist.is_main, query_sample=query_sample, dist=dist,
                                   exclude=exclude, qrels=relevance)

    def load(path: Path | None):
        return None if path is None else load_for_rank(path, dist.rank, dist.world_size)

    chain = dist.agree(lambda: _load_chain(versions, queries, dist))
    reference, reference_query = dist.agree(lambda: (load(independent), load(independent_query)))
    if reference_query is not None and reference is None:
        raise CompatError("--independent-query: needs --independent (the independent model's gallery)")
    settings = {"dim_policy": dim_policy, "strict": not ties_pass, "independent": reference,
                "independent_query": reference_query, "allow_partial": allow_partial}
    if adapters or backfill:
        report, files = _eval_adapted(chain, evaluator, adapters, backfill, backfill_points, seed, out, settings)
    else:
        report, files = _eval_plain(chain, evaluator, out, settings | {"index": setup})
    dist.close()
    if not dist.is_main:
        return
    for warning in report.warnings:
        click.echo(f"compat: warning: {warning}", err=True)
    click.echo(f"reports written to {out}/")

    from compat.tracking import log_evaluation, tracking_enabled

    if tracking_enabled(track):
        inputs = {v.name: _describe(v.gallery) for v in chain}
        inputs.update({f"{v.name}.query": _describe(v.query) for v in chain if v.query is not None})
        click.echo(f"MLflow run {log_evaluation(report, inputs=inputs, files=files, experiment=experiment)}")


def _with_index(setup, metrics: tuple[str, ...], protocol: str, adapted: bool, ranks: int,
                query_sample: int | None) -> tuple[str, ...]:
    """The metrics with the index's ``map@K``; an index goes with plain ``loo`` chains in one process,
    over all the queries."""
    from compat.compatibility.indexed import with_index_metrics
    from compat.retrieval.evaluator import DEFAULT_METRICS

    if adapted:
        raise CompatError("--index: cannot be combined with --adapter or --backfill")
    if protocol != Protocol.LOO.value:
        raise CompatError(f"--index: an index is searched under protocol loo only, not {protocol}")
    if ranks > 1:
        raise CompatError(f"--index: an index is searched in one process, not over {ranks} torchrun ranks; "
                          "run it without torchrun")
    if query_sample is not None:
        raise CompatError("--index: an index is searched with every query; leave out --query-sample")
    return with_index_metrics(metrics or DEFAULT_METRICS, setup.spec.k)


def _load_chain(versions: tuple[tuple[str, Path], ...], queries: tuple[tuple[str, Path], ...], dist):
    """The ``Version`` chain of ``--version`` (and ``--query``) options, oldest first."""
    from compat.compatibility.matrix import Version
    from compat.manifest import load_for_rank

    def load_features(path: Path):
        return load_for_rank(path, dist.rank, dist.world_size)

    options.unique_names(versions, "--version")
    options.unique_names(queries, "--query")
    names = [n for n, _ in versions]
    for name, _ in queries:
        if name not in names:
            raise CompatError(f"--query: {name!r} is not one of the versions ({', '.join(names)})")
    query_paths = dict(queries)
    return [Version(name, load_features(path), load_features(query_paths[name]) if name in query_paths else None)
            for name, path in versions]


def _index_setup(index: options.IndexOptions, files: tuple[tuple[str, Path], ...],
                 ids: tuple[tuple[str, Path], ...], seed: int):
    """The ``IndexSetup`` of the index options, or ``None`` when no index is named."""
    from compat.compatibility.indexed import IndexFile, IndexSetup

    options.unique_names(files, "--index-file")
    options.unique_names(ids, "--index-ids")
    stored = dict(files)
    for name, _ in ids:
        if name not in stored:
            raise CompatError(f"--index-ids: {name!r} has no --index-file")
    spec = index.spec(seed, stored=bool(stored))
    if spec is None:
        return None
    return IndexSetup(spec, {name: IndexFile(path, dict(ids).get(name)) for name, path in stored.items()})


def _eval_plain(chain, evaluator, out: Path, settings: dict):
    from compat.compatibility.matrix import evaluate_chain
    from compat.compatibility.report import render_markdown, write_reports

    report = evaluate_chain(chain, evaluator, **settings)
    if not evaluator.dist.is_main:
        return report, []
    files = _write(lambda: write_reports(report, out), out)
    click.echo(render_markdown(report))
    return report, files


def _eval_adapted(chain, evaluator, adapters, backfill, backfill_points: int, seed: int, out: Path, settings: dict):
    """``compat eval`` with adapters and / or backfill curves; returns the chain report and the files written."""
    from compat.adapters.evaluate import evaluate_with_adapters
    from compat.adapters.io import load_adapter
    from compat.adapters.report import render_adapter_markdown, write_adapted_reports
    from compat.compatibility.report import render_markdown

    loaded, paths = {}, {}
    for new, old, path in adapters:
        if (new, old) in loaded:
            raise CompatError(f"--adapter: the pair {new}:{old} is given twice")
        loaded[(new, old)] = load_adapter(path)
        paths[(new, old)] = str(path)
    adapted = evaluate_with_adapters(chain, evaluator, loaded, paths=paths, backfill=backfill,
                                     backfill_points=backfill_points, seed=seed, **settings)
    if not evaluator.dist.is_main:
        return adapted.report, []
    files = _write(lambda: write_adapted_reports(adapted, out), out)
    click.echo(render_markdown(adapted.report))
    click.echo(render_adapter_markdown(adapted))
    return adapted.report, files


def _write(write, out: Path) -> list[Path]:
    try:
        return write()
    except OSError as exc:
        raise CompatError(f"--out {out}: cannot write the reports ({exc})") from None


def _describe(fs) -> dict[str, object]:
    return {"path": fs.source, "n": fs.n, "dim": fs.dim, **fs.meta}
