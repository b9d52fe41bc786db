"""The ``compat`` command line: a thin layer over the library.

Each command parses its options, calls the library, prints, and sets the exit code: 0 success,
1 gate failed, 2 bad input or usage (one line on stderr naming the file, field and expectation),
3 a bug (one line; the traceback in a log file), 130 interrupted (:mod:`compat.cli.failures`).
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
from compat.cli.failures import DEBUG_KEY, fail, report_bug
from compat.cli.gate import gate_command
from compat.cli.plan_backfill import plan_backfill_command
from compat.cli.status import status_command
from compat.cli.train import extract_command, train_command
from compat.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compat")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="On an unexpected error (exit 3), print the traceback instead of logging it.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """compat: upgrade an embedding model without re-extracting the gallery."""
    ctx.meta[DEBUG_KEY] = debug
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _command in (eval_command, adapt_command, train_command, extract_command, gate_command, plan_backfill_command,
                 backfill_command, status_command, demo_command):
    cli.add_command(_command)


def main() -> None:
    """Console entry point: usage errors are one line on stderr with exit code 2, like bad input;
    Ctrl-C exits 130 and an error that escapes a command 3 (:mod:`compat.cli.failures`)."""
    try:
        code = cli.main(prog_name="compat", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'compat {exc.ctx.info_name} --help')" if exc.ctx is not None and exc.ctx.parent else ""
        fail(f"compat: error: {exc.format_message()}{hint}", EXIT_BAD_INPUT)
    except click.ClickException as exc:
        fail(f"compat: error: {exc.format_message()}", exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        fail("compat: interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001  (a bug outside a command: reported, not hidden)
        report_bug(exc, debug="--debug" in sys.argv[1:])
    sys.exit(code if isinstance(code, int) else 0)
