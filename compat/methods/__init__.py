"""Training methods, one module each, built by name: ``build_method("hoc", lam=0.1)``."""

from compat.methods.base import Method, MethodLoss
from compat.methods.cl2r import CL2R, cosine_distillation, distillation_weight
from compat.methods.cores import CoReS
from compat.methods.hoc import HOC, HOCLoss
from compat.methods.independent import Independent
from compat.methods.registry import build_method, list_methods, register_method

__all__ = [
    "CL2R",
    "HOC",
    "CoReS",
    "HOCLoss",
    "Independent",
    "Method",
    "MethodLoss",
    "build_method",
    "cosine_distillation",
    "distillation_weight",
    "list_methods",
    "register_method",
]
