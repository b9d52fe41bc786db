"""The ``compat`` command line: a thin layer over the library.

Each command parses its options, calls the library, prints, and sets the exit code: 0 success,
1 gate failed, 2 bad input or usage (one line on stderr naming the file, field and expectation).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from compat.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, CompatError

__all__ = ["cli", "main"]


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`CompatError` into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CompatError as exc:
            click.echo(f"compat: error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


class NamedPath(click.ParamType):
    """``NAME=PATH``."""

    name = "NAME=PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Path]:
        if isinstance(value, tuple):
            return value
        name, sep, path = str(value).partition("=")
        if not sep or not name or not path:
            self.fail(f"{value!r} is not NAME=PATH (e.g. v1=features/v1.npz)", param, ctx)
        return name, Path(path)


class AdapterPath(click.ParamType):
    """``NEW:OLD=PATH``."""

    name = "NEW:OLD=PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str, Path]:
        if isinstance(value, tuple):
            return value
        pair, sep, path = str(value).partition("=")
        new, colon, old = pair.partition(":")
        if not sep or not colon or not new or not old or ":" in old or not path:
            self.fail(f"{value!r} is not NEW:OLD=PATH (e.g. v2:v1=adapters/v2-v1.npz)", param, ctx)
        return new, old, Path(path)


def _unique_names(pairs: tuple[tuple[str, Path], ...], option: str) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise CompatError(f"{option}: version name {name!r} is given twice")
        seen.add(name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compat")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """compat: upgrade an embedding model without re-extracting the gallery."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command("eval")
@click.option(
    "--version",
    "versions",
    type=NamedPath(),
    multiple=True,
    required=True,
    help="A version's gallery features, oldest first: NAME=FEATURES (.npz or .npy directory).",
)
@click.option(
    "--query",
    "queries",
    type=NamedPath(),
    multiple=True,
    help="Separate query features for a version: NAME=FEATURES. Default: the gallery itself.",
)
@click.option(
    "--adapter",
    "adapters",
    type=AdapterPath(),
    multiple=True,
    help="An adapter file from 'compat adapt': B maps NEW's queries before they search OLD's gallery.",
)
@click.option(
    "--backfill",
    "backfill",
    multiple=True,
    type=click.Choice(["random", "farthest", "uncertainty"]),
    help="Draw the partial-backfill curve with this ordering (repeatable), for every adapted pair "
    "(without adapters: the newest upgrade).",
)
@click.option("--backfill-points", type=click.IntRange(min=2), default=11, show_default=True,
              help="Points of the backfill grid, beta from 0 to 1.")
@click.option(
    "--protocol",
    type=click.Choice(["loo", "template", "pairs"]),
    default="loo",
    show_default=True,
    help="Leave-one-out retrieval, per-class template identification, or pair verification.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="cmc@K, map, map@r (loo); cmc@K, map (template); acc (pairs). Default: cmc@1 cmc@5 map.",
)
@click.option("--similarity", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True)
@click.option(
    "--dim-policy",
    type=click.Choice(["error", "truncate", "pad"]),
    default="error",
    show_default=True,
    help="When two versions' feature sizes differ.",
)
@click.option("--backend", type=click.Choice(["auto", "torch", "faiss"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--memory-budget", default="1GiB", show_default=True, help="Bound on score buffers, e.g. 512MiB.")
@click.option(
    "--independent",
    type=click.Path(path_type=Path),
    default=None,
    help="Features of the newest model trained without compatibility: the update gain's upper bound.",
)
@click.option(
    "--pairs",
    "n_pairs",
    type=click.IntRange(min=1),
    default=3000,
    show_default=True,
    help="Positive (and as many negative) pairs for --protocol pairs.",
)
@click.option("--folds", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the pair sampler.")
@click.option(
    "--ties-pass", is_flag=True, help="Count M(new, old) == M(old, old) as compatible (default: a tie fails)."
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("compat-report"), show_default=True)
@click.option("--track", is_flag=True, help="Log to MLflow (also on when MLFLOW_TRACKING_URI is set).")
@click.option("--experiment", default=None, help="MLflow experiment name.")
@_fail_cleanly
def eval_command(
    versions: tuple[tuple[str, Path], ...],
    queries: tuple[tuple[str, Path], ...],
    adapters: tuple[tuple[str, str, Path], ...],
    backfill: tuple[str, ...],
    backfill_points: int,
    protocol: str,
    metrics: tuple[str, ...],
    similarity: str,
    dim_policy: str,
    backend: str,
    device: str,
    memory_budget: str,
    independent: Path | None,
    n_pairs: int,
    folds: int,
    seed: int,
    ties_pass: bool,
    out: Path,
    track: bool,
    experiment: str | None,
) -> None:
    """Evaluate a chain of versions: every version's queries against every older gallery.

    Writes compat.json, compat.md and compat.png under --out (and backfill.png with --backfill).
    """
    from compat.compatibility.matrix import Version, evaluate_chain
    from compat.compatibility.report import render_markdown, write_reports
    from compat.features import load_features
    from compat.retrieval.evaluator import RetrievalEvaluator

    _unique_names(versions, "--version")
    _unique_names(queries, "--query")
    names = [n for n, _ in versions]
    for name, _ in queries:
        if name not in names:
            raise CompatError(f"--query: {name!r} is not one of the versions ({', '.join(names)})")
    evaluator = RetrievalEvaluator(
        metrics or None,
        protocol=protocol,
        similarity=similarity,
        backend=backend,
        device=device,
        memory_budget=memory_budget,
        pairs=n_pairs,
        folds=folds,
        seed=seed,
    )
    query_paths = dict(queries)
    chain = [
        Version(name, load_features(path), load_features(query_paths[name]) if name in query_paths else None)
        for name, path in versions
    ]
    reference = load_features(independent) if independent is not None else None
    if adapters or backfill:
        report, files = _eval_adapted(chain, evaluator, adapters, backfill, backfill_points, seed=seed,
                                      dim_policy=dim_policy, strict=not ties_pass, independent=reference, out=out)
    else:
        report = evaluate_chain(chain, evaluator, dim_policy=dim_policy, strict=not ties_pass, independent=reference)
        try:
            files = write_reports(report, out)
        except OSError as exc:
            raise CompatError(f"--out {out}: cannot write the reports ({exc})") from None
        click.echo(render_markdown(report))
    click.echo(f"reports written to {out}/")

    from compat.tracking import log_evaluation, tracking_enabled

    if tracking_enabled(track):
        inputs = {v.name: _describe(v.gallery) for v in chain}
        for v in chain:
            if v.query is not None:
                inputs[f"{v.name}.query"] = _describe(v.query)
        run_id = log_evaluation(report, inputs=inputs, files=files, experiment=experiment)
        click.echo(f"MLflow run {run_id}")


def _eval_adapted(chain, evaluator, adapters, backfill, backfill_points, *, seed, dim_policy, strict, independent,
                  out):
    """``compat eval`` with adapters and / or backfill curves; returns the chain report and the files written."""
    from compat.adapters import evaluate_with_adapters, load_adapter
    from compat.adapters.report import render_adapter_markdown, write_adapted_reports
    from compat.compatibility.report import render_markdown

    loaded, paths = {}, {}
    for new, old, path in adapters:
        if (new, old) in loaded:
            raise CompatError(f"--adapter: the pair {new}:{old} is given twice")
        loaded[(new, old)] = load_adapter(path)
        paths[(new, old)] = str(path)
    adapted = evaluate_with_adapters(chain, evaluator, loaded, paths=paths, dim_policy=dim_policy, strict=strict,
                                     independent=independent, backfill=backfill, backfill_points=backfill_points,
                                     seed=seed)
    try:
        files = write_adapted_reports(adapted, out)
    except OSError as exc:
        raise CompatError(f"--out {out}: cannot write the reports ({exc})") from None
    click.echo(render_markdown(adapted.report))
    click.echo(render_adapter_markdown(adapted))
    return adapted.report, files


@cli.command("adapt")
@click.option("--old", "old_path", type=click.Path(path_type=Path), required=True,
              help="Old model's features of the training items (.npz or .npy directory).")
@click.option("--new", "new_path", type=click.Path(path_type=Path), required=True,
              help="New model's features of the same items (matched by id).")
@click.option("--kind", type=click.Choice(["perp", "lambda", "procrustes"]), default="perp", show_default=True,
              help="Backward adapter B: exactly orthogonal, affine with the lambda regulariser, or closed form.")
@click.option("--lambda", "lam", type=float, default=12.0, show_default=True,
              help="lambda kind: radius around orthogonality left free (0 soft orthogonality, inf none).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Steepness of the lambda switch (default 10).")
@click.option("--forward", type=click.Choice(["mlp", "affine", "none"]), default="mlp", show_default=True,
              help="Forward adapter F (old -> the space of B(new)).")
@click.option("--hidden", type=click.IntRange(min=1), default=256, show_default=True, help="Hidden width of the MLP F.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Passes over the features (default 10).")
@click.option("--batch-size", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True, help="Adam.")
@click.option("--w-forward", type=click.FloatRange(min=0), default=1.0, show_default=True, help="w1, weight of L_F.")
@click.option("--w-backward", type=click.FloatRange(min=0), default=1.0, show_default=True, help="w2, weight of L_B.")
@click.option("--w-contrastive", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="w3, weight of the supervised contrastive term L_C.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Of the contrastive term (default 0.1).")
@click.option("--init", type=click.Choice(["procrustes", "identity"]), default="procrustes", show_default=True,
              help="Starting B for perp and lambda.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--new-name", default=None, help="Version name of NEW stored in the adapter (default: its meta).")
@click.option("--old-name", default=None, help="Version name of OLD stored in the adapter (default: its meta).")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Adapter file to write (.npz).")
@_fail_cleanly
def adapt_command(old_path: Path, new_path: Path, kind: str, lam: float, alpha: float | None, forward: str,
                  hidden: int, epochs: int | None, batch_size: int, lr: float, w_forward: float, w_backward: float,
                  w_contrastive: float, temperature: float | None, init: str, seed: int, new_name: str | None,
                  old_name: str | None, device: str, out: Path) -> None:
    """Train adapters between two frozen models on their features of the same items.

    B maps NEW's features to OLD's space (so new queries can search the old gallery); F maps OLD's
    features to the space of B(NEW) (to upgrade the stored gallery without re-running images).
    """
    from compat.adapters import AdapterConfig, fit_adapter, save_adapter
    from compat.device import resolve_device
    from compat.features import load_features

    if out.suffix != ".npz":
        raise CompatError(f"--out {out}: an adapter file must end in .npz")
    defaults = AdapterConfig()
    cfg = AdapterConfig(kind=kind, lam=lam, alpha=alpha or defaults.alpha, forward=forward, hidden=hidden,
                        epochs=epochs or defaults.epochs, batch_size=batch_size, lr=lr, w_forward=w_forward,
                        w_backward=w_backward, w_contrastive=w_contrastive,
                        temperature=temperature or defaults.temperature, init=init, seed=seed)
    old, new = load_features(old_path), load_features(new_path)
    adapter = fit_adapter(new, old, cfg, new_version=new_name, old_version=old_name, device=resolve_device(device))
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


@cli.command("train")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set train.epochs=2 --set seed=1 (values are YAML).")
@click.option("--data-root", default=None, help="Directory holding the datasets (torchvision layout).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: runs/<recipe name>-seed<seed>).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints under --out.")
@click.option("--track", is_flag=True, help="Log to MLflow (also on when MLFLOW_TRACKING_URI is set).")
@click.option("--experiment", default=None, help="MLflow experiment name.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
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
    report = train_chain(cfg, out=out, device=resolve_device(device), data_root=data_root, resume=resume,
                         track=track, experiment=experiment, progress=not quiet)
    if report is not None:
        click.echo(render_markdown(report))
        click.echo(f"checkpoints, features and reports written to {out}/")
    if report is not None and cfg.adapters is not None:
        from compat.adapters.stage import run_adapter_stage

        stage = run_adapter_stage(cfg, report.versions, out=out, device=resolve_device(device), data_root=data_root,
                                  resume=resume, track=track, experiment=experiment)
        click.echo(stage.summary_md.read_text(encoding="utf-8"))
        click.echo(f"adapters and their reports written to {out / 'adapters'}/")


@cli.command("extract")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A model.pt written by compat train.")
@click.option("--data", "dataset", required=True, help="Dataset name: mnist, mnist-mini, cifar10, cifar100, imagefolder.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data-root", default=None, help="Directory holding the datasets.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Feature file (.npz) or directory.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--version-name", default=None, help="Version name stored in the features' meta.")
@_fail_cleanly
def extract_command(checkpoint: Path, dataset: str, split: str, data_root: str | None, out: Path, device: str,
                    batch_size: int, version_name: str | None) -> None:
    """Extract the retrieval features of a dataset split with a trained model."""
    from compat.data import build_dataset, dataset_ids, dataset_labels
    from compat.device import resolve_device
    from compat.features import save_features
    from compat.train import extract_features, load_model
    from compat.train.extract import file_digest

    device = resolve_device(device)
    model = load_model(checkpoint, device=device)
    ds = build_dataset(dataset, root=data_root, split=split, train_transform=False)
    meta = {"version": version_name or checkpoint.parent.name, "dataset": dataset, "split": split,
            "checkpoint": file_digest(checkpoint)}
    fs = extract_features(model, ds, labels=dataset_labels(ds), ids=dataset_ids(ds), device=device,
                          batch_size=batch_size, meta=meta)
    save_features(fs, out)
    click.echo(f"{fs.n} x {fs.dim} features written to {out}")


@cli.command("gate")
@click.option("--old", required=True, metavar="SOURCE",
              help="Production model: features (.npz or .npy directory), a model file (.pt) or models:/NAME@ALIAS.")
@click.option("--new", required=True, metavar="SOURCE", help="Candidate model, in any form that --old accepts.")
@click.option("--chain", multiple=True, metavar="SOURCE",
              help="An older gallery still in the index, oldest first (repeat); used by max_drop checks.")
@click.option("--independent", default=None, metavar="SOURCE",
              help="A model trained without compatibility: the reference of update_gain checks.")
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), default=None,
              help="Gate policy YAML (default: the packaged configs/gate/default.yaml).")
@click.option("--dataset", default=None, help="Dataset that model sources are embedded on (e.g. mnist, mnist-mini).")
@click.option("--data-root", default=None, help="Directory holding the datasets.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--protocol", type=click.Choice(["loo", "template"]), default="loo", show_default=True)
@click.option("--similarity", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True)
@click.option("--dim-policy", type=click.Choice(["error", "truncate", "pad"]), default="error", show_default=True)
@click.option("--backend", type=click.Choice(["auto", "torch", "faiss"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--memory-budget", default="1GiB", show_default=True, help="Bound on score buffers, e.g. 512MiB.")
@click.option("--n-resamples", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Bootstrap resamples per check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--promote", "promote_name", default=None, metavar="NAME",
              help="On a pass, register the candidate (model file or models:/ URI) as NAME and move @champion to it.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gate-report"), show_default=True)
@_fail_cleanly
def gate_command(old: str, new: str, chain: tuple[str, ...], independent: str | None, policy_path: Path | None,
                 dataset: str | None, data_root: str | None, split: str, batch_size: int, protocol: str,
                 similarity: str, dim_policy: str, backend: str, device: str, memory_budget: str, n_resamples: int,
                 seed: int, promote_name: str | None, out: Path) -> None:
    """Decide whether the NEW model may replace the OLD one and query its gallery.

    Exit code 0: every required check of the policy passed; 1: one failed; 2: bad input.
    Writes gate.json and gate.md under --out, and appends gate.md to $GITHUB_STEP_SUMMARY when set.
    """
    from compat.gate import (
        ExtractionSpec,
        SourceKind,
        append_step_summary,
        load_policy,
        load_source,
        promote,
        render_markdown,
        run_gate,
        source_kind,
        write_reports,
    )
    from compat.retrieval.evaluator import RetrievalEvaluator

    if promote_name is not None and source_kind(new) is SourceKind.FEATURES:
        raise CompatError(f"--promote: the candidate {new} is a feature set; promotion needs a model file (.pt) "
                          "or a models:/ URI as --new")
    policy = load_policy(policy_path)
    evaluator = RetrievalEvaluator(policy.metrics, protocol=protocol, similarity=similarity, backend=backend,
                                   device=device, memory_budget=memory_budget)
    extraction = None
    if dataset is not None:
        extraction = ExtractionSpec(dataset, data_root, split, device=evaluator.device, batch_size=batch_size)
    old_fs = load_source(old, option="--old", extraction=extraction)
    new_fs = load_source(new, option="--new", extraction=extraction)
    chain_fs = [load_source(src, option="--chain", extraction=extraction) for src in chain]
    ind_fs = load_source(independent, option="--independent", extraction=extraction) if independent else None
    verdict = run_gate(old_fs, new_fs, policy, chain=chain_fs, independent=ind_fs, evaluator=evaluator,
                       dim_policy=dim_policy, n_resamples=n_resamples, seed=seed)
    promotion = None
    if verdict.passed and promote_name is not None:
        tags = {"compat.gate": "passed", **{f"compat.gate.{c.name}": f"{c.value}" for c in verdict.checks
                                            if c.value is not None}}
        promotion = promote(promote_name, new, tags=tags).to_json()
    write_reports(verdict, out, promotion=promotion)
    markdown = render_markdown(verdict, promotion)
    click.echo(markdown, nl=False)
    try:
        append_step_summary(markdown)
    except CompatError as exc:
        click.echo(f"compat: warning: {exc}", err=True)
    click.echo(f"gate {'passed' if verdict.passed else 'FAILED'}; reports written to {out}/")
    if not verdict.passed:
        sys.exit(EXIT_GATE_FAILED)


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("compat-demo"), show_default=True,
              help="Output directory: models, features and the reports of both chains.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the data split, training and bootstrap.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--method", type=click.Choice(["cores", "bct"]), default="cores", show_default=True,
              help="How the compatible model is trained: CoReS (fixed d-Simplex classifier) or BCT.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
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


def _describe(fs: Any) -> dict[str, object]:
    return {"path": fs.source, "n": fs.n, "dim": fs.dim, **fs.meta}


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


if __name__ == "__main__":  # pragma: no cover
    main()
