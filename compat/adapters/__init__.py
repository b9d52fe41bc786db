"""lambda-orthogonality adapters on frozen models, and partial backfilling (METHODS.md section 6)."""

from compat.adapters.adapter import Adapter, AdapterInfo, normalize_rows
from compat.adapters.backfill import (
    BackfillCurve,
    Ordering,
    backfill_curve,
    backfill_order,
    beta_grid,
    mix_gallery,
    trapezoid_area,
)
from compat.adapters.evaluate import AdaptedChainReport, AdapterCells, BackfillResult, evaluate_with_adapters
from compat.adapters.fit import AdapterConfig, align_by_id, fit_adapter
from compat.adapters.io import load_adapter, save_adapter
from compat.adapters.losses import lambda_orthogonality, orthogonality_gap, supervised_contrastive
from compat.adapters.modules import BackwardKind, ForwardKind, LambdaAdapter, LinearMap, PerpAdapter, procrustes
from compat.adapters.report import write_adapted_reports

__all__ = [
    "AdaptedChainReport",
    "Adapter",
    "AdapterCells",
    "AdapterConfig",
    "AdapterInfo",
    "BackfillCurve",
    "BackfillResult",
    "BackwardKind",
    "ForwardKind",
    "LambdaAdapter",
    "LinearMap",
    "Ordering",
    "PerpAdapter",
    "align_by_id",
    "backfill_curve",
    "backfill_order",
    "beta_grid",
    "evaluate_with_adapters",
    "fit_adapter",
    "lambda_orthogonality",
    "load_adapter",
    "mix_gallery",
    "normalize_rows",
    "orthogonality_gap",
    "procrustes",
    "save_adapter",
    "supervised_contrastive",
    "trapezoid_area",
    "write_adapted_reports",
]
