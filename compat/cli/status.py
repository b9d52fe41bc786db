"""``compat status``: the champion, the space its live gallery is in, and whether that combination was gated."""

from __future__ import annotations

import sys

import click

from compat.cli import options
from compat.errors import EXIT_GATE_FAILED

__all__ = ["status_command"]


@click.command("status")
@click.argument("name", metavar="models:/NAME")
@options.fail_cleanly
def status_command(name: str) -> None:
    """Print the champion of NAME, the spaces its gallery holds, the backfill's progress and whether
    the champion was gated against every space the gallery holds.

    Exit code 0: it was; 1: the live combination was never gated (or the ledger does not know);
    2: bad input (no such model or champion).
    """
    from compat.gate.ledger import gallery_status, render_status

    status = gallery_status(name)
    click.echo(render_status(status), nl=False)
    if not status.gated:
        sys.exit(EXIT_GATE_FAILED)
