"""One evaluation cell: a query set searches a gallery set, whatever their feature sizes.

Every place that evaluates a cell (the chain's matrix, the gate's checks, the adapter cells) goes
through :func:`evaluate_cell`, so that the same two feature sets always give the same values:

1. an optional transform maps the query and gallery features first (an adapter's ``B`` and ``F``);
2. when the sizes still differ, the query set's declared ``compatible_dim`` decides (the leading
   coordinates a version was trained to share with older ones), else the :class:`DimPolicy`;
3. the evaluator ranks, with per-query values kept for pairing (the gate's bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import numpy as np

from compat.choices import parse_choice
from compat.errors import CompatError
from compat.features import FeatureSet
from compat.retrieval.evaluator import Protocol, RetrievalEvaluator
from compat.retrieval.metrics import RetrievalResult
from compat.retrieval.qrels import check_qrels_ids
from compat.retrieval.query_gallery import Exclude

__all__ = [
    "ArrayTransform",
    "DimPolicy",
    "apply_dim_policy",
    "cell_arrays",
    "check_cell_inputs",
    "compatible_dim",
    "evaluate_cell",
]

# (query features (Nq, Dq), gallery features (Ng, Dg)) -> transformed (query, gallery).
ArrayTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DimPolicy(str, Enum):
    """What to do when query and gallery features differ in size.

    ``error``: refuse. ``truncate``: keep the first min(d_q, d_g) coordinates of both (BT^2 / FCT
    evaluation: a longer new feature's first coordinates are the old-compatible part).
    ``pad``: zero-pad the shorter one to the longer size.
    """

    ERROR = "error"
    TRUNCATE = "truncate"
    PAD = "pad"


def apply_dim_policy(
    query: np.ndarray,
    gallery: np.ndarray,
    policy: DimPolicy,
    *,
    where: str = "cell",
    compatible_dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bring query (Nq, Dq) and gallery (Ng, Dg) to one feature size.

    When the query's version declares ``compatible_dim`` c (the leading coordinates it was trained
    to share with older versions: BT^2's old dimension, BCT's truncated prefix), that statement
    decides: the first min(c, Dg) query coordinates meet the gallery, zero-padded to Dg when c < Dg.
    Otherwise ``policy`` does. Equal sizes are never changed (a version against itself uses its
    whole feature).
    """
    dq, dg = query.shape[1], gallery.shape[1]
    if dq == dg:
        return query, gallery
    if compatible_dim is not None:
        c = min(compatible_dim, dq)
        return (query[:, :dg], gallery) if c >= dg else (_zero_pad(query[:, :c], dg), gallery)
    if policy is DimPolicy.ERROR:
        raise CompatError(
            f"{where}: feature sizes differ (queries {dq}, gallery {dg}); pass a dimension policy "
            "(--dim-policy truncate or pad) or an adapter"
        )
    if policy is DimPolicy.TRUNCATE:
        d = min(dq, dg)
        return query[:, :d], gallery[:, :d]
    d = max(dq, dg)
    return _zero_pad(query, d), _zero_pad(gallery, d)


def compatible_dim(features: FeatureSet) -> int | None:
    """The ``compatible_dim`` a feature set's metadata declares (validated), or None."""
    value = features.meta.get("compatible_dim")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CompatError(f"{features.source}: meta field compatible_dim: expected a positive integer, got {value!r}")
    return value


def _zero_pad(x: np.ndarray, d: int) -> np.ndarray:
    if x.shape[1] == d:
        return x
    out = np.zeros((x.shape[0], d), dtype=np.float32)
    out[:, : x.shape[1]] = x
    return out


def evaluate_cell(
    evaluator: RetrievalEvaluator,
    query: FeatureSet,
    gallery: FeatureSet,
    *,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    transform: ArrayTransform | None = None,
    where: str | None = None,
) -> RetrievalResult:
    """Evaluate ``query`` against ``gallery``: transform, dimension declaration or policy, ranking.

    Args:
        evaluator: configured once (metrics, protocol, similarity, backend, device, budget).
        query, gallery: the two feature sets (items matched by id, leave-one-out by id for ``loo``).
        dim_policy: when the sizes differ and the query set declares no ``compatible_dim``.
        transform: maps (query, gallery) features before the sizes are compared (adapters).
        where: names the cell in messages (default: the two sources).

    Returns:
        The cell's values, with per-query values and the mask of queries that have a positive.
    """
    where = where or f"{query.source} on {gallery.source}"
    q, g = cell_arrays(query, gallery, dim_policy=dim_policy, transform=transform, where=where)
    return evaluator.evaluate_arrays(q, query.labels, query.ids, g, gallery.labels, gallery.ids, where=where,
                                     query_groups=query.groups, gallery_groups=gallery.groups)


def cell_arrays(
    query: FeatureSet,
    gallery: FeatureSet,
    *,
    dim_policy: DimPolicy | str = DimPolicy.ERROR,
    transform: ArrayTransform | None = None,
    where: str = "cell",
) -> tuple[np.ndarray, np.ndarray]:
    """The features a cell compares: ``transform`` first, then ``compatible_dim`` or the policy.

    Shared by :func:`evaluate_cell` and the index cell
    (:func:`compat.compatibility.indexed.evaluate_index_cell`), so both see the same arrays.
    """
    policy = parse_choice(DimPolicy, dim_policy, "dim_policy")
    q, g = query.features, gallery.features
    if transform is not None:
        q, g = transform(q, g)
    return apply_dim_policy(q, g, policy, where=where, compatible_dim=compatible_dim(query))


def check_cell_inputs(evaluator: RetrievalEvaluator, queries: Sequence[FeatureSet], galleries: Sequence[FeatureSet]) -> None:
    """What the evaluator's protocol needs of the feature sets, checked before any cell is evaluated.

    ``same-group`` exclusion needs ``groups`` in every set; a relevance file's ids must each be in one
    of the query sets (query ids) or galleries (gallery ids).

    Raises:
        CompatError: naming the feature set (or the relevance file and its line).
    """
    if evaluator.protocol is not Protocol.QUERY_GALLERY:
        return
    if evaluator.exclude is Exclude.SAME_GROUP:
        for fs in (*queries, *galleries):
            if fs.groups is None:
                raise CompatError(f"{fs.source}: field 'groups' is missing; --exclude same-group needs the group "
                                  "(e.g. camera) of every query and gallery item")
    if evaluator.qrels is not None:
        check_qrels_ids(evaluator.qrels, [fs.ids for fs in queries], [fs.ids for fs in galleries])
