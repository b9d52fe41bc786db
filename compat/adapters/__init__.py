"""lambda-orthogonality adapters on frozen models, partial backfilling and backfill plans (docs/methods.md).

The names below are loaded from their modules on first use, so that ``compat.adapters.config``
(the training settings, which the command line reads) is importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AdaptedChainReport": "evaluate",
    "Adapter": "adapter",
    "AdapterCell": "evaluate",
    "AdapterCells": "evaluate",
    "AdapterConfig": "config",
    "AdapterInfo": "adapter",
    "BackfillCurve": "backfill",
    "BackfillPlan": "plan",
    "BackfillResult": "evaluate",
    "BackwardKind": "config",
    "Budget": "plan_goals",
    "ClassSums": "orderings",
    "ExternalSort": "external_sort",
    "ForwardKind": "config",
    "LambdaAdapter": "modules",
    "LinearMap": "modules",
    "Ordering": "config",
    "PerpAdapter": "modules",
    "PlanPoint": "plan",
    "PlanSettings": "plan",
    "Target": "plan_goals",
    "align_by_id": "fit",
    "backfill_curve": "backfill",
    "backfill_order": "orderings",
    "backfill_sweep": "backfill",
    "beta_grid": "backfill",
    "evaluate_with_adapters": "evaluate",
    "fit_adapter": "fit",
    "lambda_orthogonality": "losses",
    "load_adapter": "io",
    "matched_rows": "backfill",
    "mix_gallery": "backfill",
    "normalize_rows": "adapter",
    "order_keys": "orderings",
    "orthogonality_gap": "losses",
    "parse_budget": "plan_goals",
    "parse_target": "plan_goals",
    "plan_backfill": "plan",
    "procrustes": "modules",
    "random_keys": "orderings",
    "render_adapter_summary": "report",
    "save_adapter": "io",
    "summarize_adapters": "report",
    "supervised_contrastive": "losses",
    "trapezoid_area": "backfill",
    "write_adapted_reports": "report",
    "write_plan": "plan_report",
    "write_plan_order": "plan_order",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'compat.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compat.adapters.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
