"""``compat demo``: the whole story offline, on the MNIST subset that ships with the package."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from compat.cli import options
from compat.errors import EXIT_GATE_FAILED

__all__ = ["demo_command"]


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("compat-demo"), show_default=True,
              help="Output directory: models, features and the reports of both chains.")
@click.option("--seed", type=options.SEED, default=0, show_default=True, help="Seeds the data split, training and bootstrap.")
@options.device
@click.option("--method", type=click.Choice(["cores", "bct"]), default="cores", show_default=True,
              help="How the compatible model is trained: CoReS (fixed d-Simplex classifier) or BCT.")
@options.quiet
@options.fail_cleanly
def demo_command(out: Path, seed: int, device: str, method: str, quiet: bool) -> None:
    """Train an old model, an independent and a compatible new one on the bundled MNIST subset; gate both.

    Offline, a few minutes at most on 2 CPU cores. Prints both compatibility matrices side by side and the gate's
    verdict on each candidate (default policy). Exit code 0 when the gate refuses the independent model and
    passes the compatible one, 1 otherwise.
    """
    from compat.demo import DemoSettings, render_text, run_demo

    def echo(line: str) -> None:
        click.echo(line, err=True)

    result = run_demo(out, seed=seed, device=device, progress=not quiet, settings=DemoSettings(method=method),
                      echo=None if quiet else echo)
    click.echo(render_text(result), nl=False)
    click.echo(f"done in {result.seconds:.0f} s")
    if not result.as_expected:
        unexpected = [c.title for c, want in ((result.independent, False), (result.compatible, True))
                      if c.verdict.passed is not want]
        click.echo(f"compat: the gate's verdict on the {' and '.join(unexpected)} candidate is not the expected one",
                   err=True)
        sys.exit(EXIT_GATE_FAILED)
