"""``compat gate``: may the candidate replace production and query its gallery without backfilling?"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from compat.cli import options
from compat.errors import EXIT_GATE_FAILED, CompatError
from compat.gate.bootstrap import DEFAULT_RESAMPLES
from compat.retrieval.evaluator import Protocol

__all__ = ["gate_command"]

DEFAULT_OUT = Path("gate-report")


class _GateCommand(click.Command):
    """A command line that cannot even be parsed is a failed run too: it leaves no earlier verdict in --out."""

    def make_context(self, info_name, args, parent=None, **extra):
        given = list(args)  # click's parser consumes the list it parses
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException:
            from compat.gate import remove_reports

            remove_reports(_out_of(given))
            raise


def _out_of(args: list[str]) -> Path:
    """The --out of an unparsed command line (its default when not given)."""
    for k, arg in enumerate(args):
        if arg == "--out" and k + 1 < len(args):
            return Path(args[k + 1])
        if arg.startswith("--out="):
            return Path(arg.partition("=")[2])
    return DEFAULT_OUT


@click.command("gate", cls=_GateCommand)
@click.option("--old", required=True, metavar="SOURCE",
              help="Production model: features (.npz or .npy directory), a model file (.pt), models:/NAME@ALIAS, "
              "torchscript:PATH or python:package.module:function (the last two need --trust-model-code).")
@click.option("--new", required=True, metavar="SOURCE", help="Candidate model, in any form that --old accepts.")
@click.option("--old-query", default=None, metavar="SOURCE",
              help="Production model's query features (query-gallery: required; --old is then its gallery).")
@click.option("--new-query", default=None, metavar="SOURCE", help="Candidate's query features (query-gallery).")
@click.option("--chain", multiple=True, metavar="SOURCE",
              help="An older gallery still in the index, oldest first (repeat); used by max_drop checks.")
@click.option("--independent", default=None, metavar="SOURCE",
              help="A model trained without compatibility: the reference of update_gain checks.")
@click.option("--independent-query", default=None, metavar="SOURCE", help="Its query features (query-gallery).")
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), default=None,
              help="Gate policy YAML (default: the packaged default policy, the same as configs/gate/default.yaml).")
@click.option("--dataset", default=None, help="Dataset that model sources are embedded on (e.g. mnist, mnist-mini).")
@options.extraction
@options.model_code
@click.option("--protocol", type=click.Choice([p.value for p in Protocol if p is not Protocol.PAIRS]),
              default=Protocol.LOO.value, show_default=True,
              help="The gate needs per-query values: loo, query-gallery or template.")
@options.relevance
@options.evaluator_options
@options.index
@click.option("--n-resamples", type=click.IntRange(min=1), default=DEFAULT_RESAMPLES, show_default=True,
              help="Bootstrap resamples per check; at least 5 / (1 - confidence), 100 for 95% intervals.")
@click.option("--seed", type=options.SEED, default=0, show_default=True,
              help="Seed of the bootstrap, of the query sample (and of --index's training sample).")
@options.query_sample
@click.option("--promote", "promote_name", default=None, metavar="NAME",
              help="On a pass, register the candidate (model file or models:/ URI) as NAME and move @champion to it.")
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="Deploy the candidate with this adapter file: its queries are B(new); logged with the promoted version.")
@click.option("--gallery-space", default=None, metavar="ID",
              help="Name the feature space of --old for the gallery ledger (default: the digest of its model file).")
@click.option("--allow-space-change", is_flag=True,
              help="Promote even though the live gallery holds a space the candidate was not gated against.")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True)
@options.quiet
@options.fail_cleanly
def gate_command(old: str, new: str, old_query: str | None, new_query: str | None, chain: tuple[str, ...],
                 independent: str | None, independent_query: str | None, policy_path: Path | None,
                 dataset: str | None, data_root: str | None, split: str, batch_size: int, trust_model_code: bool,
                 preset: str | None, image_size: int | None, resize: int | None, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None, protocol: str, qrels: Path | None, exclude: str, similarity: str,
                 dim_policy: str, backend: str, search_precision: str, device: str, memory_budget: str,
                 index: options.IndexOptions, n_resamples: int, seed: int, query_sample: int | None,
                 promote_name: str | None, adapter_path: Path | None, gallery_space: str | None,
                 allow_space_change: bool, out: Path, quiet: bool) -> None:
    """Decide whether the NEW model may replace the OLD one and query its gallery.

    Exit code 0: every required check of the policy passed; 1: one failed; 2: bad input; 3: a bug.
    Writes gate.json and gate.md under --out, and appends gate.md to $GITHUB_STEP_SUMMARY when set.
    A run that exits with another code than 0 or 1 leaves no gate.json (an earlier one is removed)
    and the registry as it was. Under torchrun every rank searches its part of each gallery; rank 0
    reports and promotes.
    """
    from compat._files import check_output_dir
    from compat.gate import SourceKind, check_model_name, load_policy, load_source, run_gate, source_kind
    from compat.retrieval.evaluator import RetrievalEvaluator
    from compat.retrieval.qrels import load_qrels

    dist, device = options.rank_context(device)
    with _no_verdict_on_failure(out, dist.is_main):
        dist.agree(lambda: check_output_dir(out))  # before any work: a verdict that cannot be written is never computed
        if promote_name is not None:
            check_model_name(promote_name)
            if source_kind(new) not in (SourceKind.MODEL, SourceKind.REGISTRY):
                what = "a feature set" if source_kind(new) is SourceKind.FEATURES else "a model compat did not train"
                raise CompatError(f"--promote: the candidate {new} is {what}; promotion needs a compat model file "
                                  "(.pt) or a models:/ URI as --new")
        policy = load_policy(policy_path)
        evaluator = RetrievalEvaluator(policy.metrics, protocol=protocol, similarity=similarity, backend=backend,
                                       search_precision=search_precision, device=device, memory_budget=memory_budget,
                                       progress=not quiet and dist.is_main, query_sample=query_sample, seed=seed,
                                       dist=dist, exclude=exclude,
                                       qrels=load_qrels(qrels) if qrels is not None else None)
        extraction = options.extraction_spec(dataset, data_root, split, batch_size, evaluator.device, quiet,
                                             options.preprocessing_of(preset, image_size, resize, mean, std))

        def load(source: str | None, option: str):
            return None if source is None else dist.agree(lambda: load_source(
                source, option=option, extraction=extraction, trust_model_code=trust_model_code, dist=dist))

        sources = {"old": old, "new": new, "old_query": old_query, "new_query": new_query, "independent": independent,
                   "independent_query": independent_query}
        sets = {name: load(source, f"--{name.replace('_', '-')}") for name, source in sources.items()}
        chain_fs = [load(src, "--chain") for src in chain]
        old_fs, new_fs = sets.pop("old"), sets.pop("new")
        if adapter_path is not None:
            from compat.gate.inputs import adapt_source

            new_fs = adapt_source(new_fs, adapter_path, old_dim=old_fs.dim)
            if sets["new_query"] is not None:  # the candidate's queries are B(new) too
                sets["new_query"] = adapt_source(sets["new_query"], adapter_path, old_dim=old_fs.dim)
            dim_policy = "truncate" if dim_policy == "error" else dim_policy  # B(new) meets old's first d coordinates
        gated = None
        if promote_name is not None:  # refuse before the gate runs, not after
            from compat.gate.ledger import check_promotion, gated_spaces

            gated = gated_spaces(old_fs, new_fs, chain_fs, gallery_space=gallery_space, adapter=adapter_path)
            check_promotion(promote_name, gated, allow_space_change=allow_space_change)
        verdict = run_gate(old_fs, new_fs, policy, chain=chain_fs, evaluator=evaluator, dim_policy=dim_policy,
                           n_resamples=n_resamples, seed=seed, progress=not quiet and dist.is_main,
                           index=index.spec(seed), **sets)
        dist.close()
        if dist.is_main:
            _report(verdict, new, promote_name, out, gated=gated, allow_space_change=allow_space_change)
    if not verdict.passed:
        sys.exit(EXIT_GATE_FAILED)


@contextmanager
def _no_verdict_on_failure(out: Path, main: bool = True) -> Iterator[None]:
    """A run that fails must not leave an earlier run's verdict behind as if it were its own (rank 0 removes it)."""
    from compat.gate import remove_reports

    try:
        yield
    except BaseException:
        if main:
            remove_reports(out)
        raise


def _report(verdict, candidate: str, promote_name: str | None, out: Path, *, gated=None,
            allow_space_change: bool = False) -> None:
    """Write the reports; then, for a passing candidate and --promote, promote it with the gallery
    ledger and record the promotion in the reports (taken back if they cannot be written); print;
    append the step summary."""
    from compat.gate import append_step_summary, render_markdown, undo_promotion, write_reports
    from compat.gate.ledger import promote_gated

    write_reports(verdict, out)  # the verdict is on disk before the registry is touched
    promotion = None
    if verdict.passed and promote_name is not None:
        tags = {"compat.gate": "passed", **{f"compat.gate.{c.name}": f"{c.value}" for c in verdict.checks
                                            if c.value is not None}}
        done = promote_gated(promote_name, candidate, gated, tags=tags,  # undoes its own steps if one fails
                             allow_space_change=allow_space_change)
        promotion = done.to_json()
        try:
            write_reports(verdict, out, promotion=promotion)
        except BaseException:
            undo_promotion(done)
            raise
    for warning in verdict.warnings:
        click.echo(f"compat: warning: {warning}", err=True)
    markdown = render_markdown(verdict, promotion)
    click.echo(markdown, nl=False)
    try:
        append_step_summary(markdown)
    except CompatError as exc:
        click.echo(f"compat: warning: {exc}", err=True)
    click.echo(f"gate {'passed' if verdict.passed else 'FAILED'}; reports written to {out}/")
