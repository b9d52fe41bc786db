"""The CI gate: may a candidate model replace the production model without backfilling the gallery?

``run_gate(old, new, policy)`` evaluates the cells the policy's checks need, pairs them query by
query and decides each check on a seeded bootstrap confidence interval; ``write_reports`` writes
``gate.json`` and ``gate.md``; ``promote`` moves the registry alias ``champion`` to a candidate that
passed (and takes every step back if one fails; ``undo_promotion`` takes a finished one back). Registered models hold a compat model file, never a pickled MLflow model.
"""

from compat.gate.bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap_ci, resample_indices
from compat.gate.decide import CheckResult, GateVerdict, run_gate
from compat.gate.inputs import ExtractionSpec, SourceKind, load_source, source_kind
from compat.gate.policy import DEFAULT_POLICY, CheckKind, CheckSpec, GatePolicy, load_policy
from compat.gate.registry import (
    CHAMPION,
    PREVIOUS,
    ModelRef,
    Promotion,
    RegisteredVersion,
    check_model_name,
    download_model,
    parse_model_uri,
    promote,
    register_model,
    resolve_model_uri,
    undo_promotion,
)
from compat.gate.report import append_step_summary, remove_reports, render_markdown, write_reports

__all__ = [
    "CHAMPION",
    "DEFAULT_POLICY",
    "DEFAULT_RESAMPLES",
    "PREVIOUS",
    "CheckKind",
    "CheckResult",
    "CheckSpec",
    "ExtractionSpec",
    "GatePolicy",
    "GateVerdict",
    "Interval",
    "ModelRef",
    "Promotion",
    "RegisteredVersion",
    "SourceKind",
    "append_step_summary",
    "bootstrap_ci",
    "check_model_name",
    "download_model",
    "load_policy",
    "load_source",
    "parse_model_uri",
    "promote",
    "register_model",
    "remove_reports",
    "render_markdown",
    "resample_indices",
    "resolve_model_uri",
    "run_gate",
    "source_kind",
    "undo_promotion",
    "write_reports",
]
