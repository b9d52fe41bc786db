"""Reduced-precision candidate search (tensor cores) with an error bound that keeps the top-k exact.

The torch backend may score candidates with TF32, FP16 or BF16 inputs (``--search-precision``):
on CUDA the matrix product then runs on tensor cores. The exact answer does not change: candidates
are still re-scored in float64 and a query is searched again exactly whenever its cut lies within
the error bound of the backend's scores (:func:`compat.retrieval.knn.knn`); only that bound grows,
by :func:`extra_bound`. On the CPU the same rounding is emulated (inputs rounded to the format,
products accumulated in float32, FP16 / BF16 outputs rounded), which is how the bound is tested
without a GPU; it is slower there than float32 and only meant for tests.

The bound, for one score of L2-normalised rows (cosine; for ``l2`` the product term is scaled
by ``2 |q| max|g|``), on top of the float32 bound:

- inputs rounded with unit roundoff ``u_in``: ``|q'.g' - q.g| <= (2 u_in + u_in^2) |q| |g|``
  (TF32 taken as truncating to 10 bits, ``u_in = 2^-10``; FP16 ``2^-11`` plus ``2^-25`` per
  component below FP16's normal range; BF16 ``2^-8``);
- the product's own rounding for FP16 / BF16 outputs (``u_out``, same values);
- tensor-core accumulation taken as truncating, twice the float32 accumulation bound.

Everything is doubled, as the float32 bound is. Only the top-k search uses it; the counting of
ranks for mAP keeps float32 scores.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np

from compat.errors import CompatError

__all__ = ["Precision", "extra_bound", "reduced_scores"]

_U32 = 2.0**-24


class Precision(str, Enum):
    """Inputs of the candidate search's matrix product."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"


_INPUT = {Precision.FP32: 0.0, Precision.TF32: 2.0**-10, Precision.FP16: 2.0**-11, Precision.BF16: 2.0**-8}
_OUTPUT = {Precision.FP32: 0.0, Precision.TF32: 0.0, Precision.FP16: 2.0**-11, Precision.BF16: 2.0**-8}


def check_precision(precision: Precision, similarity_is_l2: bool, backend_is_torch: bool) -> None:
    if precision is Precision.FP32:
        return
    if not backend_is_torch:
        raise CompatError(f"search_precision: {precision.value!r} needs the torch backend (faiss scores in float32)")
    if precision is Precision.FP16 and similarity_is_l2:
        raise CompatError("search_precision: 'fp16' is for cosine only (squared distances overflow FP16); use tf32 or bf16")


def extra_bound(q_norms: np.ndarray, max_norm: float, dim: int, l2: bool, precision: Precision) -> np.ndarray:
    """What reduced-precision inputs add to the float32 bound of each query's scores (zero for fp32)."""
    if precision is Precision.FP32:
        return np.zeros(len(q_norms))
    u_in, u_out = _INPUT[precision], _OUTPUT[precision]
    relative = 2 * u_in + u_in**2 + u_out + 2 * (dim + 2) * _U32
    absolute = 2 * math.sqrt(dim) * 2.0**-25 if precision is Precision.FP16 else 0.0
    if not l2:
        return np.full(len(q_norms), 2.0 * (relative + absolute))
    return 2.0 * 2.0 * (relative + absolute) * q_norms * max_norm


def _round_tf32(x):
    """float32 tensor with the mantissa cut to TF32's 10 bits (toward zero, as the bound assumes)."""
    import torch

    bits = x.contiguous().view(torch.int32)
    return (bits & ~0x1FFF).view(torch.float32)


def reduced_scores(q, g, l2: bool, precision: Precision):
    """(r, b) float32 scores, higher better, of a query chunk against a gallery block at ``precision``."""
    import torch

    if q.is_cuda:
        dot = _cuda_product(q, g, precision)
    else:
        if precision is Precision.TF32:
            q_in, g_in = _round_tf32(q), _round_tf32(g)
        else:
            dtype = torch.float16 if precision is Precision.FP16 else torch.bfloat16
            q_in, g_in = q.to(dtype).float(), g.to(dtype).float()
        dot = q_in @ g_in.T
        if precision in (Precision.FP16, Precision.BF16):
            dot = dot.to(torch.float16 if precision is Precision.FP16 else torch.bfloat16).float()
    if not l2:
        return dot
    return 2 * dot - (g * g).sum(1)[None, :] - (q * q).sum(1)[:, None]


def _cuda_product(q, g, precision: Precision):
    import torch

    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
             matmul.allow_bf16_reduced_precision_reduction)
    try:
        matmul.allow_tf32 = precision is Precision.TF32
        matmul.allow_fp16_reduced_precision_reduction = False
        matmul.allow_bf16_reduced_precision_reduction = False
        if precision is Precision.TF32:
            return q @ g.T
        dtype = torch.float16 if precision is Precision.FP16 else torch.bfloat16
        return (q.to(dtype) @ g.to(dtype).T).float()
    finally:
        (matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
         matmul.allow_bf16_reduced_precision_reduction) = saved
