"""Retraction: from ``Y + xi`` back to the Tucker manifold by truncated HOSVD.

The truncated-HOSVD retraction of Tucker tensors is analysed in D. Kressner,
M. Steinlechner, B. Vandereycken, "Low-rank tensor completion by Riemannian
optimization", BIT Numer. Math. 54(2), 447-468, 2014.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ._checks import check_tucker, tucker_shape
from .hosvd import truncate_core
from .linalg import augment_basis
from .ranks import RankRule, RankSpec, rule_from_keywords
from .tangent import TangentVector, _check_tangent

__all__ = ["retract", "augmented_sum"]


def augmented_dims(factors: Sequence[Any], k_ranks: Sequence[int]) -> tuple[int, ...]:
    """Column counts of ``orth([U_i, K_i])``: ``min(n_i, r_i + k_i)``."""
    return tuple(
        min(tl.shape(f)[0], tl.shape(f)[1] + k)
        for f, k in zip(factors, k_ranks, strict=True)
    )


def augment_bases(
    factors: Sequence[Any], directions: Sequence[Any | None]
) -> tuple[list[Any], list[Any]]:
    """Augmented bases ``Uhat_i = orth([U_i, directions[i]])`` and embeddings
    ``E_i = Uhat_i^T U_i``.

    ``Uhat_i`` starts with ``U_i`` (:func:`~tuckerflow.linalg.augment_basis`), so
    ``E_i = [I; 0]`` up to rounding. A None direction keeps ``Uhat_i = U_i`` (a mode
    that takes no K-step, e.g. one whose basis spans the whole mode).
    """
    bases = [
        factor if direction is None else augment_basis(factor, direction)
        for factor, direction in zip(factors, directions, strict=True)
    ]
    embeddings = [tl.dot(tl.transpose(b), f) for b, f in zip(bases, factors)]
    return bases, embeddings


def lift(core: Any, embeddings: Sequence[Any]) -> Any:
    """``C ×_i (Uhat_i^T U_i)``: the same tensor written in the augmented bases.

    ``Uhat_i`` contains ``U_i``, so ``lift(C) ×_i Uhat_i == C ×_i U_i`` up to rounding
    (the embeddings are ``[R11; 0]`` with ``R11`` the identity up to rounding).
    """
    return tl.tenalg.multi_mode_dot(core, embeddings)


def augmented_sum(
    core: Any, factors: Sequence[Any], tangent: TangentVector
) -> tuple[Any, list[Any]]:
    """Exact orthonormal Tucker form of ``Y + xi`` with ranks at most ``2 r``.

    With ``Uhat_i = orth([U_i, dU_i])``, ``E_i = Uhat_i^T U_i`` and
    ``B_i = Uhat_i^T dU_i``,

        Y + xi = [(C + dC) ×_j E_j + sum_i C ×_i B_i ×_{j != i} E_j] ×_j Uhat_j,

    which holds whether or not ``dU_i`` is orthogonal to ``U_i``. Cost
    ``O(sum_i n_i r_i^2 + d prod(2 r) r)``; nothing of full size is formed. Inputs
    are not validated (see :func:`retract`).

    Parameters
    ----------
    core : tensor of shape (r_1, ..., r_d)
        Core ``C`` of the point.
    factors : sequence of tensors of shape (n_i, r_i)
        Orthonormal factors ``U_i`` of the point.
    tangent : TangentVector
        ``xi = (dC, [dU_i])`` with ``dC`` of shape ``(r_1, ..., r_d)`` and ``dU_i`` of
        shape ``(n_i, r_i)``.

    Returns
    -------
    core : tensor of shape (rhat_1, ..., rhat_d)
        The bracket above, ``rhat_i = min(n_i, 2 r_i)``.
    bases : list of tensors of shape (n_i, rhat_i)
        ``Uhat_i``, orthonormal, first columns spanning ``U_i``.
    """
    bases, embed = augment_bases(factors, tangent.factors)
    coefficients = [
        tl.dot(tl.transpose(b), du) for b, du in zip(bases, tangent.factors)
    ]
    augmented = lift(core + tangent.core, embed)
    for mode, coefficient in enumerate(coefficients):
        matrices = list(embed)
        matrices[mode] = coefficient
        augmented = augmented + tl.tenalg.multi_mode_dot(core, matrices)
    return augmented, bases


@rule_from_keywords
def retract(
    tucker: Any,
    tangent: TangentVector,
    *,
    rank: RankSpec = None,
    tol: float | None = None,
    relative: bool = True,
    min_rank: RankSpec = 1,
    max_rank: RankSpec = None,
    rule: RankRule | None = None,
) -> TuckerTensor:
    """Truncated-HOSVD retraction ``R(Y, xi) = HOSVD_r(Y + xi)`` [1]_.

    ``Y + xi`` is written exactly in orthonormal bases of ``[U_i, dU_i]`` with a core of
    size at most ``2 r`` per mode (:func:`augmented_sum`); the HOSVD [2]_ of that
    small core gives the result. A first-order retraction:
    ``||R(Y, t xi) - (Y + t xi)|| = O(t^2)``; the result is a quasi-best
    approximation of ``Y + xi`` (within ``sqrt(d)`` of the best of its rank).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point: core of shape ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``
        with orthonormal columns.
    tangent : TangentVector
        Tangent vector at ``tucker``: ``dC`` of shape ``(r_1, ..., r_d)``, ``dU_i`` of
        shape ``(n_i, r_i)`` (the gauge ``U_i^T dU_i = 0`` is not required).
    rank : int or sequence of int, optional
        Rank of the result, at most ``min(n_i, 2 r_i)`` per mode. Default: the rank
        of ``tucker`` (fixed-rank retraction), unless ``tol`` is given.
    tol : float, optional
        Rank-adaptive retraction: keep the smallest ranks with total truncation error
        ``||R(Y, xi) - (Y + xi)||`` at most ``tol * ||Y + xi||`` (``relative``, a
        fraction in ``[0, 1)``) or ``tol`` (absolute, units of the entries); see
        :func:`tuckerflow.hosvd`.
    relative : bool, default True
        Whether ``tol`` is relative to ``||Y + xi||``.
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the ranks chosen by ``tol``.
    rule : RankRule, optional
        The keywords above as one value (:class:`tuckerflow.RankRule`; its
        ``budget`` applies too); with ``rule`` they keep their defaults.

    Returns
    -------
    TuckerTensor
        Core of shape ``(s_1, ..., s_d)``, ``s_i <= min(n_i, 2 r_i)``, and factors of
        shapes ``(n_i, s_i)`` with orthonormal columns.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if
        ``tangent`` is not a :class:`~tuckerflow.TangentVector` or its components
        are not tensors of the active backend; if ``rank``, ``min_rank`` or
        ``max_rank`` is not an int or a sequence of ints, ``tol`` not a real
        number, or ``rule`` not a RankRule.
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if the shapes of
        ``tangent`` do not match the point or it holds NaN or Inf; if both ``rank`` and
        ``tol`` are given, or ``rule`` with any of the keywords; if ``rank[i]`` is below
        1 or above ``min(n_i, 2 r_i)`` (one retraction can at most double a rank); if
        ``min_rank`` or ``max_rank`` is out of range or ``min_rank > max_rank``; if
        ``tol`` is not finite, outside ``[0, 1)`` with ``relative=True``, or negative.

    References
    ----------
    .. [1] D. Kressner, M. Steinlechner, B. Vandereycken, "Low-rank tensor completion
       by Riemannian optimization", BIT Numer. Math. 54(2), 447-468, 2014.
    .. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.

    Examples
    --------
    >>> from tuckerflow import random_tucker, random_tangent, retract
    >>> Y = random_tucker((6, 6, 6), 2, random_state=0)
    >>> retract(Y, 0.1 * random_tangent(Y, random_state=1)).rank
    (2, 2, 2)
    """
    core, factors = check_tucker(tucker, "tucker")
    tangent = _check_tangent(tangent, core, factors, "tangent")
    return retract_unchecked(
        core, factors, tangent, retraction_rule(core, factors, rule)
    )


def retraction_rule(core: Any, factors: Sequence[Any], rule: RankRule) -> RankRule:
    """``rule`` checked for a retraction at ``(core, factors)``; a rule that gives no
    rank, tolerance or budget keeps the current rank."""
    current = tuple(tl.shape(core))
    if rule.kind is None:
        rule = dataclasses.replace(rule, rank=current)
    dims = augmented_dims(factors, current)  # dU_i has r_i columns
    return rule.check(dims, tucker_shape(factors), augmented_from=current)


def retract_unchecked(
    core: Any, factors: Sequence[Any], tangent: TangentVector, rule: RankRule
) -> TuckerTensor:
    """:func:`retract` on inputs (and a rank rule) its caller has already validated."""
    augmented, bases = augmented_sum(core, factors, tangent)
    result, _, _ = truncate_core(augmented, bases, rule)
    return result
