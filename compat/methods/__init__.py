"""Training methods, one module each, built by name: ``build_method("hoc", lam=0.1)``."""

from compat.methods.base import Method, MethodLoss
from compat.methods.bct import (
    BCT,
    FeatureSpace,
    L2Regression,
    Synthesize,
    class_means,
    influence_loss,
    match_dim,
    synthesize_classifier,
)
from compat.methods.bt2 import BT2, Prototypes, bt2_loss, bt2_prototypes
from compat.methods.cl2r import CL2R, cosine_distillation, distillation_weight
from compat.methods.cores import CoReS
from compat.methods.hoc import HOC, HOCLoss, HOCVariant
from compat.methods.independent import Independent
from compat.methods.registry import build_method, list_methods, register_method

__all__ = [
    "BCT",
    "BT2",
    "CL2R",
    "HOC",
    "CoReS",
    "FeatureSpace",
    "HOCLoss",
    "HOCVariant",
    "Independent",
    "L2Regression",
    "Method",
    "MethodLoss",
    "Prototypes",
    "Synthesize",
    "bt2_loss",
    "bt2_prototypes",
    "build_method",
    "class_means",
    "cosine_distillation",
    "distillation_weight",
    "influence_loss",
    "list_methods",
    "match_dim",
    "register_method",
    "synthesize_classifier",
]
