"""``compat plan-backfill``: which gallery items to re-extract first, how many, and what it buys."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from compat.adapters.config import DEFAULT_BACKFILL_POINTS, Ordering
from compat.adapters.plan_goals import DEFAULT_FLAT_TOLERANCE
from compat.cli import options
from compat.errors import EXIT_GATE_FAILED, CompatError
from compat.gate.bootstrap import DEFAULT_RESAMPLES
from compat.retrieval.evaluator import DEFAULT_METRICS, Protocol

__all__ = ["plan_backfill_command"]


@click.command("plan-backfill")
@click.option("--gallery", required=True, type=click.Path(path_type=Path),
              help="The stored gallery's features (old model): a .npy directory streams in bounded memory, a .npz is read whole.")
@click.option("--old", required=True, metavar="SOURCE",
              help="Old features of the evaluation sample (items of the gallery): features, or a model file / models:/ URI with --dataset.")
@click.option("--new", required=True, metavar="SOURCE", help="New features of the same sample, in any form --old accepts.")
@click.option("--dataset", default=None, help="Dataset that model sources are embedded on.")
@options.extraction
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="Adapter file: B maps the new features to the stored space; with F, items not yet re-extracted are F(old).")
@click.option("--no-forward", is_flag=True, help="With an adapter that has F: keep the stored items as stored.")
@click.option("--ordering", required=True, type=options.choice(Ordering), help="Which items to re-extract first.")
@click.option("--budget", default=None, metavar="N%|COUNT", help="Re-extract this share (20%) or number of items.")
@click.option("--target", default=None, metavar="METRIC>=VALUE",
              help="Re-extract until the predicted metric reaches this, e.g. cmc@1>=0.95 (exit 1 if it never does).")
@click.option("--metric", "metrics", multiple=True, help=f"Metrics to predict (default: {' '.join(DEFAULT_METRICS)}).")
@click.option("--protocol", type=click.Choice([Protocol.LOO.value, Protocol.TEMPLATE.value]),
              default=Protocol.LOO.value, show_default=True)
@options.evaluator_options
@click.option("--points", type=click.IntRange(min=2), default=DEFAULT_BACKFILL_POINTS, show_default=True,
              help="Grid of fractions re-extracted, from 0 to 1.")
@click.option("--seed", type=options.SEED, default=0, show_default=True,
              help="Seed of the random ordering and the bootstrap.")
@click.option("--n-resamples", type=click.IntRange(min=1), default=DEFAULT_RESAMPLES, show_default=True,
              help="Bootstrap resamples of the band.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Level of the band.")
@click.option("--flat-tolerance", type=float, default=DEFAULT_FLAT_TOLERANCE, show_default=True,
              help="The curve flattens where the remaining gain is at most this (a fraction: 0.005 = 0.5 pp).")
@click.option("--tmp-dir", type=click.Path(path_type=Path), default=None,
              help="Where the sorted runs go (default: inside --out).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("backfill-plan"), show_default=True)
@options.quiet
@options.fail_cleanly
def plan_backfill_command(gallery: Path, old: str, new: str, dataset: str | None, data_root: str | None, split: str,
                          batch_size: int, adapter_path: Path | None, no_forward: bool, ordering: str,
                          budget: str | None, target: str | None, metrics: tuple[str, ...], protocol: str,
                          similarity: str, dim_policy: str, backend: str,
                 search_precision: str, device: str, memory_budget: str, points: int,
                          seed: int, n_resamples: int, confidence: float, flat_tolerance: float,
                          tmp_dir: Path | None, out: Path, quiet: bool) -> None:
    """Order the whole stored gallery for re-extraction and predict the metric against the share re-extracted.

    Writes plan.csv (every gallery id, first to re-extract first), plan.json, plan.md and plan.png
    under --out. The metric is predicted on the evaluation sample (--old / --new), whose items
    must be in the gallery. Give --budget or --target. Exit 0; 1: the target is not reachable;
    2: bad input.
    """
    from compat._files import check_output_dir
    from compat.adapters.plan import PlanSettings
    from compat.adapters.plan_goals import parse_budget, parse_target
    from compat.adapters.plan_report import render_plan_markdown, write_plan
    from compat.gate import load_source
    from compat.retrieval.evaluator import RetrievalEvaluator
    from compat.stored import open_stored

    check_output_dir(out)  # before any work: a plan that cannot be written is never computed
    if (budget is None) == (target is None):
        raise CompatError("--budget / --target: give exactly one (e.g. --budget 20% or --target 'cmc@1>=0.95')")
    goal = {"budget": parse_budget(budget)} if budget is not None else {"target": parse_target(target)}
    wanted = list(metrics or DEFAULT_METRICS)
    if "target" in goal and goal["target"].metric not in wanted:
        wanted.append(goal["target"].metric)
    settings = PlanSettings(ordering, points=points, seed=seed, n_resamples=n_resamples, confidence=confidence,
                            flat_tolerance=flat_tolerance, dim_policy=dim_policy, forward=not no_forward,
                            memory_budget=memory_budget, **goal)
    evaluator = RetrievalEvaluator(wanted, protocol=protocol, similarity=similarity, backend=backend,
                                   search_precision=search_precision, device=device,
                                   memory_budget=memory_budget, progress=not quiet)
    stored = open_stored(gallery)
    extraction = options.extraction_spec(dataset, data_root, split, batch_size, evaluator.device, quiet)
    old_fs = load_source(old, option="--old", extraction=extraction)
    new_fs = load_source(new, option="--new", extraction=extraction)
    adapter = None
    if adapter_path is not None:
        from compat.adapters.io import load_adapter

        adapter = load_adapter(adapter_path)
    plan, _ = write_plan(stored, old_fs, new_fs, settings, out, evaluator=evaluator, adapter=adapter,
                         adapter_path=None if adapter_path is None else str(adapter_path), tmp_dir=tmp_dir)
    click.echo(render_plan_markdown(plan), nl=False)
    click.echo(f"plan written to {out}/")
    if plan.reachable is False:
        sys.exit(EXIT_GATE_FAILED)
