"""The gate's reports: ``gate.json`` and ``gate.md``, written all or nothing, and the CI step summary."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compat._atomic import write_all_or_nothing
from compat.errors import CompatError
from compat.gate.decide import CheckResult, GateVerdict
from compat.gate.policy import Bound, CheckKind
from compat.jsontext import report_json
from compat.markdown import escape

__all__ = ["JSON_NAME", "MARKDOWN_NAME", "append_step_summary", "remove_reports", "render_markdown", "write_reports"]

JSON_NAME = "gate.json"
MARKDOWN_NAME = "gate.md"


def _fmt(check: CheckResult, x: float | None, *, bound: str = "") -> str:
    """Differences of fractions as signed percentage points, gains as ratios; undefined as n/a."""
    if x is None:
        return {"low": "-inf", "high": "+inf"}.get(bound, "n/a")
    if check.kind is CheckKind.UPDATE_GAIN:
        return f"{x:.3f}"
    if check.kind is CheckKind.NEGATIVE_FLIPS:
        return f"{100 * x:.2f}%"
    return f"{100 * x:+.2f} pp"


def _verdict(check: CheckResult) -> str:
    if check.passed is None:
        return "skipped"
    if check.passed:
        return "✓ pass"
    return "✗ fail" if check.required else "✗ fail (not required)"


_BOUND = {Bound.LOW: "lower bound", Bound.HIGH: "upper bound"}
_OP = {">": ">", ">=": "≥", "<=": "≤"}


def _threshold(check: CheckResult) -> str:
    return f"{_BOUND[check.rule.bound]} {_OP[check.rule.op]} {_fmt(check, check.threshold)}"


def render_markdown(verdict: GateVerdict, promotion: Mapping[str, Any] | None = None) -> str:
    """The ``gate.md`` report: the verdict, one table row per check, the cells behind each check."""
    head = "PASSED ✓" if verdict.passed else "FAILED ✗"
    level = round(100 * verdict.confidence)
    setting = (
        f"Candidate `{escape(verdict.inputs['new']['source'])}` against production "
        f"`{escape(verdict.inputs['old']['source'])}` · protocol {verdict.protocol} · {verdict.similarity} · "
        f"{level}% paired bootstrap intervals over queries ({verdict.n_resamples} resamples, seed {verdict.seed})"
    )
    if verdict.query_sample is not None:
        setting += (f" · a sample of {verdict.query_sample} queries per cell, stratified by label: the intervals "
                    "include the sampling")
    if verdict.ranks > 1:
        setting += f" · {verdict.ranks} ranks"
    lines = [
        f"## compat gate: {head}",
        "",
        setting,
        "",
        f"| check | metric | value | {level}% interval | passes when | required | result |",
        "|---|---|---:|---|---|---|---|",
    ]
    for c in verdict.checks:
        interval = "–" if c.skipped else f"[{_fmt(c, c.ci_low, bound='low')}, {_fmt(c, c.ci_high, bound='high')}]"
        lines.append(
            f"| {escape(c.name)} | {c.metric} | {_fmt(c, c.value) if not c.skipped else '–'} | {interval} | "
            f"{_threshold(c)} | {'yes' if c.required else 'no'} | {_verdict(c)} |"
        )
    lines.append("")
    for c in verdict.checks:
        if c.skipped:
            lines.append(f"- **{escape(c.name)}**: {escape(c.note)}")
            continue
        cells = ", ".join(f"M({m.query}, {m.gallery}) = {100 * m.value:.2f}" for m in c.cells)
        text = f"- **{escape(c.name)}** ({c.kind.value}, {c.n_queries} paired queries): {escape(cells)}"
        if c.index is not None:
            recall = ", ".join(f"{cell} {'n/a' if r is None else f'{100 * r:.2f}'}" for cell, r in c.recall.items())
            text += f"; through the index {escape(c.index.label())} (recall@{c.index.k}: {escape(recall)})"
        if c.note:
            text += f"; {escape(c.note)}"
        lines.append(text)
    lines += ["", "M(q, g): queries of model q against the gallery of model g, in percent."]
    lines += [f"\n**Warning:** {escape(w)}" for w in verdict.warnings]
    if promotion:
        lines += [
            "",
            f"Promoted: `models:/{escape(promotion['name'])}/{promotion['version']}` is now "
            f"`@{promotion['alias']}`"
            + (
                f" (the previous champion, version {promotion['previous']}, is `@previous`)."
                if promotion.get("previous")
                else "."
            ),
        ]
    return "\n".join(lines) + "\n"


def write_reports(
    verdict: GateVerdict, out_dir: str | os.PathLike[str], *, promotion: Mapping[str, Any] | None = None
) -> list[Path]:
    """Write ``gate.json`` and ``gate.md`` into ``out_dir``, all or nothing.

    Args:
        verdict: what the gate decided.
        out_dir: created if needed; existing gate reports are replaced.
        promotion: registry promotion to record (``name``, ``version``, ``alias``, ``previous``).

    Returns:
        The two paths.
    """
    out = Path(out_dir)
    document = verdict.to_json() | ({"promotion": dict(promotion)} if promotion else {})
    try:
        out.mkdir(parents=True, exist_ok=True)
        return write_all_or_nothing(out, {
            JSON_NAME: lambda p: p.write_text(report_json(document), encoding="utf-8"),
            MARKDOWN_NAME: lambda p: p.write_text(render_markdown(verdict, promotion), encoding="utf-8"),
        })
    except OSError as exc:
        raise CompatError(f"--out {out}: cannot write the gate reports ({exc})") from None


def remove_reports(out_dir: str | os.PathLike[str]) -> None:
    """Remove ``gate.json`` and ``gate.md`` from ``out_dir``: a run that fails must not leave an earlier
    run's verdict behind as if it were its own (a CI step reading ``gate.json`` would see "passed")."""
    for name in (JSON_NAME, MARKDOWN_NAME):
        try:
            (Path(out_dir) / name).unlink(missing_ok=True)
        except OSError:  # --out is not a directory, or not writable: no verdict of ours can be there
            pass


def append_step_summary(markdown: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Append ``markdown`` to the file named by ``$GITHUB_STEP_SUMMARY``, when that is set.

    Returns:
        The file appended to, or ``None`` when the variable is unset or empty.

    Raises:
        CompatError: the file cannot be written.
    """
    env = os.environ if environ is None else environ
    target = env.get("GITHUB_STEP_SUMMARY", "").strip()
    if not target:
        return None
    path = Path(target)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:
        raise CompatError(
            f"GITHUB_STEP_SUMMARY {path}: cannot append the gate report ({exc.strerror or exc})"
        ) from None
    return path
