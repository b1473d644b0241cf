"""Riemannian gradient descent: projected gradient, then the HOSVD retraction.

Sources: D. Kressner, M. Steinlechner, B. Vandereycken, "Low-rank tensor completion by
Riemannian optimization", BIT Numer. Math. 54(2), 447-468, 2014 (Riemannian gradient
descent with the HOSVD retraction); O. Koch, C. Lubich, "Dynamical tensor
approximation", SIAM J. Matrix Anal. Appl. 31(5), 2360-2375, 2010 (the projected flow
and its factored equations).
"""

from __future__ import annotations

from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import _per_mode, check_finite
from ..linalg import thin_qr
from ..ranks import RankRule, RankSpec, rule_from_keywords
from ..retraction import retract_unchecked, retraction_rule
from ..tangent import TangentVector, project_unchecked
from ._blocks import check_step_inputs, refuse_state

__all__ = ["rgd_step"]


@rule_from_keywords
def rgd_step(
    tucker: Any,
    grad: Any,
    lr: float,
    *,
    rank: RankSpec = None,
    tol: float | None = None,
    relative: bool = True,
    min_rank: RankSpec = 1,
    max_rank: RankSpec = None,
    retraction: str = "hosvd",
    rule: RankRule | None = None,
    state: None = None,
) -> tuple[TuckerTensor, None]:
    """``Y1 = R(Y0 - lr * P(Y0) G)``: Riemannian gradient descent [1]_, retracted.

    The factor components of ``xi = P(Y0) G`` contain ``pinv(unfold(C, i))``, of norm
    ``1 / sigma_min``: the projected flow is stiff when the core has small singular
    values. :func:`tdlrt_step` never inverts anything.

    Two retractions:

    * ``"hosvd"`` (default): truncated HOSVD of ``Y0 - lr xi`` written exactly in the
      bases ``orth([U_i, dU_i])`` (:func:`tuckerflow.retract`). Its result is a
      quasi-best approximation of ``Y0 - lr xi``, so it forgives large ``dU_i``.
    * ``"factors"``: the factored explicit Euler step of the projected flow
      [2]_: ``C - lr dC`` and ``U_i - lr dU_i``, orthonormalized by
      QR with ``R`` absorbed into the core. Its second-order term is a product of
      ``dU`` terms, ``O((lr ||xi|| / sigma_min)^2)``: it breaks down on ill-conditioned
      cores (P4 in the docs' concepts page).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Current point ``Y0``: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns.
    grad : tensor of shape (n_1, ..., n_d)
        Dense Euclidean gradient ``G`` at ``tucker``, in the point's dtype.
    lr : float
        Step size ``h > 0`` (the time step of the gradient flow).
    rank : int or sequence of int, optional
        Rank after the retraction, at most ``min(n_i, 2 r_i)`` per mode; default the
        current rank unless ``tol`` is given. With ``"factors"`` only the current
        rank is accepted (an int or a sequence, as elsewhere).
    tol : float, optional
        Rank-adaptive retraction (see :func:`tuckerflow.retract`): total truncation
        error at most ``tol`` relative to ``||Y0 - lr xi||`` (a fraction in
        ``[0, 1)``) or absolute (``relative=False``); ``"hosvd"`` only.
    relative : bool, default True
        Whether ``tol`` is relative.
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the ranks chosen by ``tol``; ``"hosvd"`` only.
    retraction : {'hosvd', 'factors'}
        Which retraction (see above).
    rule : RankRule, optional
        ``rank``, ``tol``, ``relative``, ``min_rank`` and ``max_rank`` as one value
        (:class:`tuckerflow.RankRule`; with ``"hosvd"`` its ``budget`` applies too);
        with ``rule`` they keep their defaults.
    state : None, optional
        Accepted so that a loop reads the same for every step function
        (``Y, state = step(Y, G, lr, state=state)``); this method keeps no optimizer
        state, so it must be None.

    Returns
    -------
    (TuckerTensor, None)
        The new point: core of shape ``(s_1, ..., s_d)`` with
        ``s_i <= min(n_i, 2 r_i)`` (``s = r`` for ``"factors"`` and by default),
        factors of shapes ``(n_i, s_i)`` with orthonormal columns; and None, the
        state (the method keeps none), as every step function returns
        ``(tucker, state)``.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if ``grad``
        is not a tensor of the active backend with the point's real floating-point
        dtype; if ``lr`` is not a real number; if ``rank``, ``min_rank`` or
        ``max_rank`` is not an int or a sequence of ints, or ``tol`` not a real
        number (``"hosvd"``); if ``rule`` is not a RankRule.
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if ``grad``
        does not have the shape ``(n_1, ..., n_d)`` or holds NaN or Inf; if ``lr`` is
        not finite and positive; if ``retraction`` is neither ``"hosvd"`` nor
        ``"factors"``; with ``"factors"``, if ``tol`` (or a budget) is given or
        ``rank`` differs from the current rank; if ``rule`` is given with any of the
        rule keywords; with ``"hosvd"``, if both ``rank`` and ``tol`` are given or
        ``rank``, ``min_rank``, ``max_rank`` or ``tol`` is out of range (as in
        :func:`tuckerflow.retract`); if ``state`` is not None (the method keeps no
        optimizer state: use :func:`tdlrt_step` or :func:`parallel_bug_step` for
        Momentum/Adam).

    References
    ----------
    .. [1] D. Kressner, M. Steinlechner, B. Vandereycken, "Low-rank tensor completion
       by Riemannian optimization", BIT Numer. Math. 54(2), 447-468, 2014.
    .. [2] O. Koch, C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal.
       Appl. 31(5), 2360-2375, 2010.
    """
    refuse_state(state, "rgd_step")
    core, factors, lr = check_step_inputs(tucker, grad, lr)
    check_finite(grad, "grad")  # the projection below does not check its input
    rule = check_rgd_rule(core, factors, rule, retraction=retraction)
    tangent = project_unchecked(core, factors, grad)
    return rgd_retract(core, factors, tangent, lr, rule, retraction=retraction), None


def check_rgd_rule(
    core: Any, factors: list[Any], rule: RankRule, *, retraction: str
) -> RankRule | None:
    """Validate the retraction and its rank rule; the rule for :func:`rgd_retract`
    (the current rank unless ``rule`` gives one; None for ``"factors"``)."""
    if retraction not in ("hosvd", "factors"):
        raise ValueError(f"retraction must be 'hosvd' or 'factors', got {retraction!r}")
    current = tuple(tl.shape(core))
    if retraction == "factors":
        # an int rank means that rank in every mode, as everywhere else
        wanted = (
            None if rule.rank is None else _per_mode(rule.rank, len(current), "rank")[0]
        )
        if rule.kind not in (None, "rank") or (
            wanted is not None and wanted != current
        ):
            raise ValueError(
                "retraction='factors' keeps the rank: tol/budget/rank do not apply "
                f"(rank may only repeat the current rank {current})"
            )
        return None
    return retraction_rule(core, factors, rule)


def rgd_retract(
    core: Any,
    factors: list[Any],
    tangent: TangentVector,
    lr: float,
    rule: RankRule | None,
    *,
    retraction: str = "hosvd",
) -> TuckerTensor:
    """``R(Y0 - lr * tangent)`` on validated inputs: the retraction of :func:`rgd_step`.

    ``rule`` is what :func:`check_rgd_rule` returned (None for ``"factors"``).
    """
    if retraction == "factors":
        new_core = core - lr * tangent.core
        new_factors = []
        for mode, (factor, d_factor) in enumerate(
            zip(factors, tangent.factors, strict=True)
        ):
            q, r = thin_qr(factor - lr * d_factor)
            new_factors.append(q)
            new_core = tl.tenalg.mode_dot(new_core, r, mode)
        return TuckerTensor((new_core, new_factors))
    return retract_unchecked(core, factors, -lr * tangent, rule)
