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
    from compat._files import check_output_dir
    from compat.compatibility.report import render_markdown
    from compat.device import resolve_device
    from compat.train import load_recipe, train_chain

    cfg = load_recipe(recipe, overrides)
    out = out or Path("runs") / f"{cfg.name}-seed{cfg.seed}"
    check_output_dir(out)
    result = train_chain(cfg, out=out, device=resolve_device(device), data_root=data_root, resume=resume,
                         track=track, experiment=experiment, progress=not quiet)
    if result.report is not None:
        click.echo(render_markdown(result.report))
        click.echo(f"checkpoints, features and reports written to {out}/")
    if result.adapters is not None:
        click.echo(result.adapters.summary_md.read_text(encoding="utf-8"))
        click.echo(f"adapters and their reports written to {out / 'adapters'}/")


@click.command("extract")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A model.pt written by compat train (or --model).")
@click.option("--model", "model_spec", default=None, metavar="SOURCE",
              help="A model compat did not train: torchscript:PATH or python:package.module:function "
              "(needs --trust-model-code and its preprocessing).")
@click.option("--data", "dataset", required=True,
              help="Dataset name: mnist, mnist-mini, fashion-mnist, cifar10, cifar100, imagefolder.")
@options.extraction
@options.model_code
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Feature file (.npz) or directory; with --shard-rows or under torchrun, a sharded set's directory.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Write a sharded set of N items per shard (default under torchrun: one shard per rank); a re-run "
              "skips the shards already complete (--checkpoint models).")
@options.device
@click.option("--version-name", default=None, help="Version name stored in the features' meta.")
@options.quiet
@options.fail_cleanly
def extract_command(checkpoint: Path | None, model_spec: str | None, dataset: str, data_root: str | None, split: str,
                    batch_size: int, trust_model_code: bool, preset: str | None, image_size: int | None,
                    resize: int | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, out: Path,
                    shard_rows: int | None, device: str, version_name: str | None, quiet: bool) -> None:
    """Extract the retrieval features of a dataset split with a trained model.

    The model is a compat model file (--checkpoint) or, with --trust-model-code, a TorchScript file or
    a Python factory (--model) with its preprocessing (--preprocessing PRESET or --image-size, --mean,
    --std), which is recorded in the features' metadata.

    With --shard-rows, or under torchrun (one node or several), the output is a sharded set: the ranks
    share its shards and rank 0 writes its manifest when every shard is complete.
    """
    from compat._files import check_output_file

    if (checkpoint is None) == (model_spec is None):
        raise CompatError("--checkpoint / --model: give exactly one model (a compat model.pt, or torchscript:PATH "
                          "or python:package.module:function)")
    preprocessing = options.preprocessing_of(preset, image_size, resize, mean, std)
    if checkpoint is not None and preprocessing is not None:
        raise CompatError("--preprocessing / --image-size / --mean / --std: a compat model file is embedded with its "
                          "dataset's own transform; these options are for --model")
    dist, device = options.rank_context(device)
    if shard_rows is not None or dist.enabled:
        if model_spec is not None:
            raise CompatError(f"--model {model_spec}: a sharded extraction (--shard-rows or torchrun) takes a compat "
                              "model file (--checkpoint); extract this model in one process")
        _extract_shards(checkpoint, dataset, data_root, split, batch_size, out, shard_rows, dist, device,
                        version_name, quiet)
        return
    from compat.features import save_features

    check_output_file(out)  # before the extraction, not after it
    if checkpoint is not None:
        fs = _extract_checkpoint(checkpoint, dataset, data_root, split, batch_size, device, version_name, quiet)
    else:
        fs = _extract_external(model_spec, trust_model_code, preprocessing, dataset, data_root, split, batch_size,
                               device, version_name, quiet)
    save_features(fs, out)
    click.echo(f"{fs.n} x {fs.dim} features written to {out}")


def _checkpoint_meta(ds, checkpoint: Path, dataset: str, split: str, version_name: str | None) -> dict:
    from compat.models.external import dataset_preprocessing

    return {"version": version_name or checkpoint.parent.name, "dataset": dataset, "split": split,
            "preprocessing": dataset_preprocessing(ds.info).to_meta()}


def _extract_checkpoint(checkpoint: Path, dataset: str, data_root, split: str, batch_size: int, device: str,
                        version_name: str | None, quiet: bool):
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.models import extract_model_file

    ds = build_dataset(dataset, root=data_root, split=split, train_transform=False)
    meta = _checkpoint_meta(ds, checkpoint, dataset, split, version_name)
    return extract_model_file(checkpoint, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), device=device,
                              batch_size=batch_size, meta=meta, progress=not quiet)


def _extract_shards(checkpoint: Path, dataset: str, data_root, split: str, batch_size: int, out: Path,
                    shard_rows: int | None, dist, device: str, version_name: str | None, quiet: bool) -> None:
    """Every rank embeds its shards of the split; rank 0 writes the manifest (a re-run skips finished shards)."""
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.models import extract_sharded

    if out.suffix == ".npz":
        raise CompatError(f"--out {out}: a sharded set is a directory, not a .npz file")
    ds = build_dataset(dataset, root=data_root, split=split, train_transform=False)
    meta = _checkpoint_meta(ds, checkpoint, dataset, split, version_name)
    rows = shard_rows or -(-len(ds) // dist.world_size)
    manifest = extract_sharded(checkpoint, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), out=out,
                               shard_rows=rows, dist=dist, device=device, batch_size=batch_size, meta=meta,
                               progress=not quiet)
    dist.close()
    if dist.is_main:
        click.echo(f"{len(ds)} items written to {out}/ as shards of {rows} ({manifest.name})")


def _extract_external(model_spec: str, trust_model_code: bool, preprocessing, dataset: str, data_root, split: str,
                      batch_size: int, device: str, version_name: str | None, quiet: bool):
    """A torchscript: / python: model: refused untrusted before anything is read, imported or built."""
    from compat.models.external import TRUST_HINT, extract_external, parse_model_spec

    model = parse_model_spec(model_spec)
    if model is None:
        raise CompatError(f"--model {model_spec}: expected torchscript:PATH or python:package.module:function "
                          "(a compat model file goes with --checkpoint)")
    if not trust_model_code:
        raise CompatError(f"--model {model_spec}: {TRUST_HINT}")
    if preprocessing is None:
        raise CompatError(f"--model {model_spec}: a model compat did not train needs its preprocessing "
                          "(--preprocessing PRESET, or --image-size, --mean and --std)")
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.device import resolve_device
    from compat.models.external import preprocessing_transform

    device = resolve_device(device)
    ds = build_dataset(dataset, root=data_root, split=split, train_transform=False,
                       transform=preprocessing_transform(preprocessing))
    meta = {"version": version_name or model.target, "dataset": dataset, "split": split}
    return extract_external(model, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), preprocessing=preprocessing,
                            trust_model_code=True, device=device, batch_size=batch_size, meta=meta,
                            progress=not quiet)
