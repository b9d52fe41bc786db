"""``compat backfill record``: how far the live gallery's backfill has gone, in the registry's ledger."""

from __future__ import annotations

import click

from compat.cli import options

__all__ = ["backfill_command"]


@click.group("backfill")
def backfill_command() -> None:
    """Record a backfill's progress in the gallery ledger of the MLflow registry."""


@backfill_command.command("record")
@click.argument("uri", metavar="models:/NAME@champion")
@click.option("--done", required=True, metavar="IDS_FILE|COUNT",
              help="Items re-extracted so far by this version (a total, not an increment): a count, or a file of "
              "ids one per line such as the head of plan.csv.")
@click.option("--gallery-size", type=click.IntRange(min=1), default=None,
              help="Items in the gallery (needed the first time; updates it later).")
@options.fail_cleanly
def record_command(uri: str, done: str, gallery_size: int | None) -> None:
    """Record that the version URI names has re-extracted --done items of the live gallery."""
    from compat.gate.ledger import parse_done, record_backfill

    state = record_backfill(uri, parse_done(done), gallery_size=gallery_size)
    click.echo(f"recorded: {state.done:,} of {state.size:,} items ({100 * state.fraction:.1f}%) re-extracted "
               f"into {state.backfill_space} by version {state.backfill_version}")
