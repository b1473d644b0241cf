"""Riemannian gradient descent: projected gradient, then the HOSVD retraction."""

from __future__ import annotations

from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import check_finite
from ..hosvd import RankSpec
from ..linalg import thin_qr
from ..retraction import retract_unchecked
from ..tangent import project_unchecked
from ._blocks import augmented_dims, check_rule, check_step_inputs

__all__ = ["rgd_step"]


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
) -> TuckerTensor:
    """``Y1 = R(Y0 - lr * P(Y0) G)``: explicit Euler on the projected flow + retraction.

    The factor components of ``xi = P(Y0) G`` contain ``pinv(unfold(C, i))``, of norm
    ``1 / sigma_min``: the projected flow is stiff when the core has small singular
    values. :func:`tdlrt_step` never inverts anything.

    Two retractions:

    * ``"hosvd"`` (default): truncated HOSVD of ``Y0 - lr xi`` written exactly in the
      bases ``orth([U_i, dU_i])`` (:func:`tuckerflow.retract`). Its result is a
      quasi-best approximation of ``Y0 - lr xi``, so it forgives large ``dU_i``.
    * ``"factors"``: the factored explicit Euler step of the projected flow
      (Koch and Lubich, 2010): ``C - lr dC`` and ``U_i - lr dU_i``, orthonormalized by
      QR with ``R`` absorbed into the core. Its second-order term is a product of
      ``dU`` terms, ``O((lr ||xi|| / sigma_min)^2)``: it breaks down on ill-conditioned
      cores (P4 in the docs' concepts page).

    Parameters
    ----------
    tucker, grad, lr
        As in :func:`tdlrt_step`.
    rank : int or sequence of int, optional
        Rank after the retraction; default the current rank unless ``tol`` is given.
    tol, relative, min_rank, max_rank
        Rank-adaptive retraction (see :func:`tuckerflow.retract`); ``"hosvd"`` only.
    retraction : {'hosvd', 'factors'}

    Returns
    -------
    TuckerTensor
    """
    core, factors, lr = check_step_inputs(tucker, grad, lr)
    check_finite(grad, "grad")  # the projection below does not check its input
    if retraction not in ("hosvd", "factors"):
        raise ValueError(f"retraction must be 'hosvd' or 'factors', got {retraction!r}")
    if retraction == "factors":
        if tol is not None or (rank is not None and tuple(rank) != tl.shape(core)):
            raise ValueError(
                "retraction='factors' keeps the rank: tol/rank do not apply"
            )
        tangent = project_unchecked(core, factors, grad)
        new_core = core - lr * tangent.core
        new_factors = []
        for mode, (factor, d_factor) in enumerate(
            zip(factors, tangent.factors, strict=True)
        ):
            q, r = thin_qr(factor - lr * d_factor)
            new_factors.append(q)
            new_core = tl.tenalg.mode_dot(new_core, r, mode)
        return TuckerTensor((new_core, new_factors))
    if rank is None and tol is None:
        rank = tuple(tl.shape(core))
    tol = check_rule(
        core,
        factors,
        augmented_dims(factors, tl.shape(core)),
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
        budget=None,
    )
    tangent = project_unchecked(core, factors, grad)
    return retract_unchecked(
        core,
        factors,
        -lr * tangent,
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
    )
