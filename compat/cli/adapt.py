"""``compat adapt``: adapters between two frozen models, trained on their features of the same items."""

from __future__ import annotations

from pathlib import Path

import click

from compat.adapters.config import AdapterConfig, BackwardKind, ForwardKind, Init
from compat.cli import options
from compat.errors import CompatError

__all__ = ["adapt_command"]

_DEFAULTS = AdapterConfig()


@click.command("adapt")
@click.option("--old", "old_path", type=click.Path(path_type=Path), required=True,
              help="Old model's features of the training items (.npz or .npy directory).")
@click.option("--new", "new_path", type=click.Path(path_type=Path), required=True,
              help="New model's features of the same items (matched by id).")
@click.option("--kind", type=options.choice(BackwardKind), default=_DEFAULTS.kind.value, show_default=True,
              help="Backward adapter B: exactly orthogonal, affine with the lambda regulariser, or closed form.")
@click.option("--lambda", "lam", type=float, default=_DEFAULTS.lam, show_default=True,
              help="lambda kind: radius around orthogonality left free (0 soft orthogonality, inf none).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.alpha, show_default=True,
              help="Steepness of the lambda switch.")
@click.option("--forward", type=options.choice(ForwardKind), default=_DEFAULTS.forward.value, show_default=True,
              help="Forward adapter F (old -> the space of B(new)).")
@click.option("--hidden", type=click.IntRange(min=1), default=_DEFAULTS.hidden, show_default=True,
              help="Hidden width of the MLP F.")
@click.option("--epochs", type=click.IntRange(min=1), default=_DEFAULTS.epochs, show_default=True,
              help="Passes over the features.")
@click.option("--batch-size", type=click.IntRange(min=2), default=_DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.lr, show_default=True,
              help="Adam.")
@click.option("--w-forward", type=click.FloatRange(min=0), default=_DEFAULTS.w_forward, show_default=True,
              help="w1, weight of L_F.")
@click.option("--w-backward", type=click.FloatRange(min=0), default=_DEFAULTS.w_backward, show_default=True,
              help="w2, weight of L_B.")
@click.option("--w-contrastive", type=click.FloatRange(min=0), default=_DEFAULTS.w_contrastive, show_default=True,
              help="w3, weight of the supervised contrastive term L_C.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.temperature,
              show_default=True, help="Of the contrastive term.")
@click.option("--init", type=options.choice(Init), default=_DEFAULTS.init.value, show_default=True,
              help="Starting B for perp and lambda.")
@click.option("--seed", type=options.SEED, default=_DEFAULTS.seed, show_default=True)
@click.option("--new-name", default=None, help="Version name of NEW stored in the adapter (default: its meta).")
@click.option("--old-name", default=None, help="Version name of OLD stored in the adapter (default: its meta).")
@options.device
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Adapter file to write (.npz).")
@options.quiet
@options.fail_cleanly
def adapt_command(old_path: Path, new_path: Path, new_name: str | None, old_name: str | None, device: str, out: Path,
                  quiet: bool, **settings) -> None:
    """Train adapters between two frozen models on their features of the same items.

    B maps NEW's features to OLD's space (so new queries can search the old gallery); F maps OLD's
    features to the space of B(NEW) (to upgrade the stored gallery without re-running images).
    """
    from compat._files import check_output_file
    from compat.adapters.fit import fit_adapter
    from compat.adapters.io import save_adapter
    from compat.device import resolve_device
    from compat.features import load_features

    if out.suffix != ".npz":
        raise CompatError(f"--out {out}: an adapter file must end in .npz")
    check_output_file(out)  # before the training, not after it
    cfg = AdapterConfig(**settings)
    old, new = load_features(old_path), load_features(new_path)
    adapter = fit_adapter(new, old, cfg, new_version=new_name, old_version=old_name, device=resolve_device(device),
                          progress=not quiet)
    try:
        save_adapter(adapter, out)
    except OSError as exc:
        raise CompatError(f"--out {out}: cannot write the adapter ({exc})") from None
    info = adapter.info
    losses = ", ".join(f"{k} {v:.4f}" for k, v in info.training.get("final_losses", {}).items())
    click.echo(f"{info.label} adapter {info.new_version or 'new'} -> {info.old_version or 'old'}: "
               f"{info.new_dim}-d -> {info.old_dim}-d space ({info.dim}-d maps), F {info.forward.value}, "
               f"{info.training['items']} items" + (f"; final losses: {losses}" if losses else ""))
    click.echo(f"adapter written to {out}")
