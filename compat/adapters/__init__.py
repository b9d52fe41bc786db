"""lambda-orthogonality adapters on frozen models, and partial backfilling (docs/methods.md).

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
    "BackfillResult": "evaluate",
    "BackwardKind": "config",
    "ForwardKind": "config",
    "LambdaAdapter": "modules",
    "LinearMap": "modules",
    "Ordering": "config",
    "PerpAdapter": "modules",
    "align_by_id": "fit",
    "backfill_curve": "backfill",
    "backfill_order": "backfill",
    "beta_grid": "backfill",
    "evaluate_with_adapters": "evaluate",
    "fit_adapter": "fit",
    "lambda_orthogonality": "losses",
    "load_adapter": "io",
    "mix_gallery": "backfill",
    "normalize_rows": "adapter",
    "orthogonality_gap": "losses",
    "procrustes": "modules",
    "render_adapter_summary": "report",
    "save_adapter": "io",
    "summarize_adapters": "report",
    "supervised_contrastive": "losses",
    "trapezoid_area": "backfill",
    "write_adapted_reports": "report",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'compat.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compat.adapters.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
