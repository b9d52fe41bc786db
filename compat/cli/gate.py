"""``compat gate``: may the candidate replace production and query its gallery without backfilling?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from compat.cli import options
from compat.errors import EXIT_GATE_FAILED, CompatError
from compat.gate.bootstrap import DEFAULT_RESAMPLES
from compat.retrieval.evaluator import Protocol

__all__ = ["gate_command"]


@click.command("gate")
@click.option("--old", required=True, metavar="SOURCE",
              help="Production model: features (.npz or .npy directory), a model file (.pt) or models:/NAME@ALIAS.")
@click.option("--new", required=True, metavar="SOURCE", help="Candidate model, in any form that --old accepts.")
@click.option("--chain", multiple=True, metavar="SOURCE",
              help="An older gallery still in the index, oldest first (repeat); used by max_drop checks.")
@click.option("--independent", default=None, metavar="SOURCE",
              help="A model trained without compatibility: the reference of update_gain checks.")
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), default=None,
              help="Gate policy YAML (default: the packaged default policy, the same as configs/gate/default.yaml).")
@click.option("--dataset", default=None, help="Dataset that model sources are embedded on (e.g. mnist, mnist-mini).")
@options.extraction
@click.option("--protocol", type=click.Choice([Protocol.LOO.value, Protocol.TEMPLATE.value]),
              default=Protocol.LOO.value, show_default=True, help="The gate needs per-query values: loo or template.")
@options.evaluator_options
@click.option("--n-resamples", type=click.IntRange(min=1), default=DEFAULT_RESAMPLES, show_default=True,
              help="Bootstrap resamples per check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and of the query sample.")
@options.query_sample
@click.option("--promote", "promote_name", default=None, metavar="NAME",
              help="On a pass, register the candidate (model file or models:/ URI) as NAME and move @champion to it.")
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="Deploy the candidate with this adapter file: its queries are B(new); logged with the promoted version.")
@click.option("--gallery-space", default=None, metavar="ID",
              help="Name the feature space of --old for the gallery ledger (default: the digest of its model file).")
@click.option("--allow-space-change", is_flag=True,
              help="Promote even though the live gallery holds a space the candidate was not gated against.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gate-report"), show_default=True)
@options.quiet
@options.fail_cleanly
def gate_command(old: str, new: str, chain: tuple[str, ...], independent: str | None, policy_path: Path | None,
                 dataset: str | None, data_root: str | None, split: str, batch_size: int, protocol: str,
                 similarity: str, dim_policy: str, backend: str,
                 search_precision: str, device: str, memory_budget: str, n_resamples: int,
                 seed: int, query_sample: int | None, promote_name: str | None, adapter_path: Path | None, gallery_space: str | None,
                 allow_space_change: bool, out: Path, quiet: bool) -> None:
    """Decide whether the NEW model may replace the OLD one and query its gallery.

    Exit code 0: every required check of the policy passed; 1: one failed; 2: bad input.
    Writes gate.json and gate.md under --out, and appends gate.md to $GITHUB_STEP_SUMMARY when set.
    Under torchrun every rank searches its part of each gallery; rank 0 reports and promotes.
    """
    from compat.gate import SourceKind, load_policy, load_source, run_gate, source_kind
    from compat.retrieval.evaluator import RetrievalEvaluator

    if promote_name is not None and source_kind(new) is SourceKind.FEATURES:
        raise CompatError(f"--promote: the candidate {new} is a feature set; promotion needs a model file (.pt) "
                          "or a models:/ URI as --new")
    policy = load_policy(policy_path)
    dist, device = options.rank_context(device)
    evaluator = RetrievalEvaluator(policy.metrics, protocol=protocol, similarity=similarity, backend=backend,
                                   search_precision=search_precision,
                                   device=device, memory_budget=memory_budget, progress=not quiet and dist.is_main,
                                   query_sample=query_sample, seed=seed, dist=dist)
    extraction = options.extraction_spec(dataset, data_root, split, batch_size, evaluator.device, quiet)

    def load(source: str, option: str):
        return dist.agree(lambda: load_source(source, option=option, extraction=extraction, dist=dist))

    old_fs, new_fs = load(old, "--old"), load(new, "--new")
    chain_fs = [load(src, "--chain") for src in chain]
    ind_fs = load(independent, "--independent") if independent else None
    if adapter_path is not None:
        from compat.gate.inputs import adapt_source

        new_fs = adapt_source(new_fs, adapter_path, old_dim=old_fs.dim)
        dim_policy = "truncate" if dim_policy == "error" else dim_policy  # B(new) meets old's first d coordinates
    gated = None
    if promote_name is not None:  # refuse before the gate runs, not after
        from compat.gate.ledger import check_promotion, gated_spaces

        gated = gated_spaces(old_fs, new_fs, chain_fs, gallery_space=gallery_space, adapter=adapter_path)
        check_promotion(promote_name, gated, allow_space_change=allow_space_change)
    verdict = run_gate(old_fs, new_fs, policy, chain=chain_fs, independent=ind_fs, evaluator=evaluator,
                       dim_policy=dim_policy, n_resamples=n_resamples, seed=seed, progress=not quiet and dist.is_main)
    dist.close()
    if dist.is_main:
        _report(verdict, new, promote_name, out, gated=gated, allow_space_change=allow_space_change)
    if not verdict.passed:
        sys.exit(EXIT_GATE_FAILED)


def _report(verdict, candidate: str, promote_name: str | None, out: Path, *, gated=None,
            allow_space_change: bool = False) -> None:
    """Promote a passing candidate when asked (with the gallery ledger), write the reports, print and
    append the step summary."""
    from compat.gate import append_step_summary, render_markdown, write_reports
    from compat.gate.ledger import promote_gated

    promotion = None
    if verdict.passed and promote_name is not None:
        tags = {"compat.gate": "passed", **{f"compat.gate.{c.name}": f"{c.value}" for c in verdict.checks
                                            if c.value is not None}}
        promotion = promote_gated(promote_name, candidate, gated, tags=tags,
                                  allow_space_change=allow_space_change).to_json()
    write_reports(verdict, out, promotion=promotion)
    markdown = render_markdown(verdict, promotion)
    click.echo(markdown, nl=False)
    try:
        append_step_summary(markdown)
    except CompatError as exc:
        click.echo(f"compat: warning: {exc}", err=True)
    click.echo(f"gate {'passed' if verdict.passed else 'FAILED'}; reports written to {out}/")
