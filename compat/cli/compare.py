"""``compat compare``: two runs on the same queries, every shared cell's difference with an interval."""

from __future__ import annotations

from pathlib import Path

import click

from compat.cli import options
from compat.errors import CompatError
from compat.gate.bootstrap import DEFAULT_RESAMPLES

__all__ = ["compare_command"]


def _matches(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """``--match A=B`` options as run A's version -> run B's version."""
    if not pairs:
        return None
    mapping: dict[str, str] = {}
    for item in pairs:
        a, sep, b = item.partition("=")
        if not sep or not a or not b:
            raise CompatError(f"--match: {item!r} is not A_VERSION=B_VERSION (e.g. v2=v1)")
        if a in mapping:
            raise CompatError(f"--match: version {a!r} of run A is matched twice")
        mapping[a] = b
    return mapping


@click.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, help="Compare this metric (repeatable). Default: every metric "
              "both runs report (they must report the same ones).")
@click.option("--match", "matches", multiple=True, metavar="A=B",
              help="Compare run A's version A with run B's version B (repeatable; only the matched versions are "
              "compared). Default: the versions with the same name.")
@click.option("--n-resamples", type=click.IntRange(min=1), default=DEFAULT_RESAMPLES, show_default=True,
              help="Bootstrap resamples per cell and metric.")
@click.option("--confidence", type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True), default=0.95,
              show_default=True, help="Level of the intervals.")
@click.option("--seed", type=options.SEED, default=0, show_default=True, help="Seed of the bootstrap.")
@options.backend
@options.device
@options.memory_budget
@click.option("--out", type=click.Path(path_type=Path), default=Path("compare-report"), show_default=True)
@options.quiet
@options.fail_cleanly
def compare_command(run_a: Path, run_b: Path, metrics: tuple[str, ...], matches: tuple[str, ...], n_resamples: int,
                    confidence: float, seed: int, backend: str, device: str, memory_budget: str, out: Path,
                    quiet: bool) -> None:
    """Compare RUN_A with RUN_B, evaluated on the same queries: A - B for every shared cell.

    A run is a 'compat train' output directory or a compat.json beside its feature sets. Queries are
    matched by id (other queries: exit 2). Writes compare.json and compare.md under --out.
    """
    from compat._files import check_output_dir
    from compat.comparison import compare_runs, render_markdown, write_reports

    check_output_dir(out)  # before any work: reports that cannot be written are never computed
    comparison = compare_runs(run_a, run_b, metrics=metrics or None, versions=_matches(matches),
                              n_resamples=n_resamples, confidence=confidence, seed=seed, backend=backend,
                              device=device, memory_budget=memory_budget, progress=not quiet)
    write_reports(comparison, out)
    click.echo(render_markdown(comparison), nl=False)
    click.echo(f"reports written to {out}/")
