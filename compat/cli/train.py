"""``compat train`` (a recipe's whole chain) and ``compat extract`` (one model's features of a dataset)."""

from __future__ import annotations

from pathlib import Path

import click

from compat.cli import options
from compat.errors import CompatError

__all__ = ["extract_command", "train_command"]


@click.command("train")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set train.epochs=2 --set versions.1.feature_dim=96 (values are YAML).")
@click.option("--data-root", default=None, help="Directory holding the datasets (torchvision layout).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: runs/<recipe name>-seed<seed>).")
@options.device
@click.option("--resume", is_flag=True, help="Continue from the checkpoints under --out.")
@options.tracking
@options.quiet
@options.fail_cleanly
def train_command(recipe: Path, overrides: tuple[str, ...], data_root: str | None, out: Path | None, device: str,
                  resume: bool, track: bool, experiment: str | None, quiet: bool) -> None:
    """Train every version of RECIPE, extract their features and evaluate the chain.

    With an 'adapters' section, then train adapters between the frozen versions and evaluate them.
    """
    from compat.compatibility.report import render_markdown
    from compat.device import resolve_device
    from compat.train import load_recipe, train_chain

    cfg = load_recipe(recipe, overrides)
    out = out or Path("runs") / f"{cfg.name}-seed{cfg.seed}"
    result = train_chain(cfg, out=out, device=resolve_device(device), data_root=data_root, resume=resume,
                         track=track, experiment=experiment, progress=not quiet)
    if result.report is not None:
        click.echo(render_markdown(result.report))
        click.echo(f"checkpoints, features and reports written to {out}/")
    if result.adapters is not None:
        click.echo(result.adapters.summary_md.read_text(encoding="utf-8"))
        click.echo(f"adapters and their reports written to {out / 'adapters'}/")


@click.command("extract")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="A model.pt written by compat train.")
@click.option("--data", "dataset", required=True, help="Dataset name: mnist, mnist-mini, cifar10, cifar100, imagefolder.")
@options.extraction
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Feature file (.npz) or directory; with --shard-rows or under torchrun, a sharded set's directory.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Write a sharded set of N items per shard (default under torchrun: one shard per rank); a re-run "
              "skips the shards already complete.")
@options.device
@click.option("--version-name", default=None, help="Version name stored in the features' meta.")
@options.quiet
@options.fail_cleanly
def extract_command(checkpoint: Path, dataset: str, data_root: str | None, split: str, batch_size: int, out: Path,
                    shard_rows: int | None, device: str, version_name: str | None, quiet: bool) -> None:
    """Extract the retrieval features of a dataset split with a trained model.

    Under torchrun (one node or several) the ranks share the shards of the output and rank 0 writes
    its manifest when every shard is complete.
    """
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.features import save_features
    from compat.models import extract_model_file, extract_sharded

    dist, device = options.rank_context(device)
    ds = build_dataset(dataset, root=data_root, split=split, train_transform=False)
    meta = {"version": version_name or checkpoint.parent.name, "dataset": dataset, "split": split}
    if shard_rows is None and not dist.enabled:
        fs = extract_model_file(checkpoint, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), device=device,
                                batch_size=batch_size, meta=meta, progress=not quiet)
        save_features(fs, out)
        click.echo(f"{fs.n} x {fs.dim} features written to {out}")
        return
    if out.suffix == ".npz":
        raise CompatError(f"--out {out}: a sharded set is a directory, not a .npz file")
    rows = shard_rows or -(-len(ds) // dist.world_size)
    manifest = extract_sharded(checkpoint, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), out=out,
                               shard_rows=rows, dist=dist, device=device, batch_size=batch_size, meta=meta,
                               progress=not quiet)
    dist.close()
    if dist.is_main:
        click.echo(f"{len(ds)} items written to {out}/ as shards of {rows} ({manifest.name})")
