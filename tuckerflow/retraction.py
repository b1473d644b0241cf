"""Retraction: from ``Y + xi`` back to the Tucker manifold by truncated HOSVD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ._checks import check_tucker, tucker_shape
from .hosvd import RankSpec, check_rank_rule, truncate_core
from .linalg import augment_basis
from .tangent import TangentVector, _check_tangent

__all__ = ["retract", "augmented_sum"]


def augmented_sum(
    core: Any, factors: Sequence[Any], tangent: TangentVector
) -> tuple[Any, list[Any]]:
    """Exact orthonormal Tucker form of ``Y + xi`` with ranks at most ``2 r``.

    With ``Uhat_i = orth([U_i, dU_i])``, ``E_i = Uhat_i^T U_i`` and
    ``B_i = Uhat_i^T dU_i``,

        Y + xi = [(C + dC) ×_j E_j + sum_i C ×_i B_i ×_{j != i} E_j] ×_j Uhat_j,

    which holds whether or not ``dU_i`` is orthogonal to ``U_i``. Cost
    ``O(sum_i n_i r_i^2 + d prod(2 r) r)``; nothing of full size is formed.
    """
    bases = [augment_basis(u, du) for u, du in zip(factors, tangent.factors)]
    embed = [tl.dot(tl.transpose(b), u) for b, u in zip(bases, factors)]
    coefficients = [
        tl.dot(tl.transpose(b), du) for b, du in zip(bases, tangent.factors)
    ]
    augmented = tl.tenalg.multi_mode_dot(core + tangent.core, embed)
    for mode, coefficient in enumerate(coefficients):
        matrices = list(embed)
        matrices[mode] = coefficient
        augmented = augmented + tl.tenalg.multi_mode_dot(core, matrices)
    return augmented, bases


def retract(
    tucker: Any,
    tangent: TangentVector,
    *,
    rank: RankSpec = None,
    tol: float | None = None,
    relative: bool = True,
    min_rank: RankSpec = 1,
    max_rank: RankSpec = None,
) -> TuckerTensor:
    """Truncated-HOSVD retraction ``R(Y, xi) = HOSVD_r(Y + xi)``.

    ``Y + xi`` is written exactly in orthonormal bases of ``[U_i, dU_i]`` with a core of
    size at most ``2 r`` per mode (:func:`augmented_sum`); the HOSVD of that small core
    gives the result. A first-order retraction:
    ``||R(Y, t xi) - (Y + t xi)|| = O(t^2)``.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point (orthonormal factors).
    tangent : TangentVector
        Tangent vector at ``tucker``.
    rank : int or sequence of int, optional
        Rank of the result. Default: the rank of ``tucker`` (fixed-rank retraction),
        unless ``tol`` is given.
    tol, relative, min_rank, max_rank
        Rank-adaptive retraction: keep the smallest ranks with total relative (or
        absolute) truncation error at most ``tol`` (see :func:`tuckerflow.hosvd`).

    Returns
    -------
    TuckerTensor

    Examples
    --------
    >>> from tuckerflow import random_tucker, random_tangent, retract
    >>> Y = random_tucker((6, 6, 6), 2, random_state=0)
    >>> retract(Y, 0.1 * random_tangent(Y, random_state=1)).rank
    (2, 2, 2)
    """
    core, factors = check_tucker(tucker, "tucker")
    tangent = _check_tangent(tangent, core, factors, "tangent")
    if rank is None and tol is None:
        rank = tuple(tl.shape(core))
    augmented_dims = tuple(
        min(n, 2 * r) for n, r in zip(tucker_shape(factors), tl.shape(core))
    )
    tol = check_rank_rule(
        augmented_dims,
        tucker_shape(factors),
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
        budget=None,
        augmented_from=tuple(tl.shape(core)),
    )
    return retract_unchecked(
        core,
        factors,
        tangent,
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
    )


def retract_unchecked(
    core: Any,
    factors: Sequence[Any],
    tangent: TangentVector,
    *,
    rank: RankSpec,
    tol: float | None,
    relative: bool,
    min_rank: RankSpec,
    max_rank: RankSpec,
) -> TuckerTensor:
    """:func:`retract` on inputs (and a rank rule) its caller has already validated."""
    augmented, bases = augmented_sum(core, factors, tangent)
    result, _, _ = truncate_core(
        augmented,
        bases,
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
    )
    return result
