"""The ``compat`` command line: a thin layer over the library.

Each command parses its options, calls the library, prints, and sets the exit code: 0 success,
1 gate failed, 2 bad input or usage (one line on stderr naming the file, field and expectation).
The commands live one module each; what they share is declared once in :mod:`compat.cli.options`.
"""

from __future__ import annotations

import logging
import sys

import click

from compat.cli.adapt import adapt_command
from compat.cli.backfill import backfill_command
from compat.cli.demo import demo_command
from compat.cli.evaluate import eval_command
from compat.cli.gate import gate_command
from compat.cli.plan_backfill import plan_backfill_command
from compat.cli.status import status_command
from compat.cli.train import extract_command, train_command
from compat.errors import EXIT_BAD_INPUT

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compat")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """compat: upgrade an embedding model without re-extracting the gallery."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _command in (eval_command, adapt_command, train_command, extract_command, gate_command, plan_backfill_command,
                 backfill_command, status_command, demo_command):
    cli.add_command(_command)


def main() -> None:
    """Console entry point: usage errors are one line on stderr with exit code 2, like bad input."""
    try:
        code = cli.main(prog_name="compat", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'compat {exc.ctx.info_name} --help')" if exc.ctx is not None and exc.ctx.parent else ""
        click.echo(f"compat: error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        click.echo(f"compat: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("compat: aborted", err=True)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code if isinstance(code, int) else 0)
