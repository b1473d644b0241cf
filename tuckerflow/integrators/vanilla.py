"""Vanilla factor training: one plain gradient step on the core and on each factor.

The baseline whose ill-conditioning motivates E. Zangrando, S. Schotthöfer, G. Ceruti,
J. Kusch, F. Tudisco, "Geometry-aware training of factorized layers in tensor Tucker
format", NeurIPS 2024.
"""

from __future__ import annotations

from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import check_positive, check_tucker
from ..contractions import GradientContractions
from ._blocks import check_gradient, refuse_state

__all__ = ["vanilla_step"]


def vanilla_step(
    tucker: Any, grad: Any, lr: float, *, state: None = None
) -> tuple[TuckerTensor, None]:
    """SGD on ``(C, U_1, ..., U_d)`` by the chain rule (factorized-layer baseline).

    ``C1 = C - lr * G ×_j U_j^T`` and
    ``U_i1 = U_i - lr * unfold(G ×_{j != i} U_j^T, i) unfold(C, i)^T``, all from the
    same point. The factors lose orthonormality, the rank never changes, and the
    effective step along a direction scales with the core's singular values squared,
    so directions with small singular values barely move: the ill-conditioning that
    motivates TDLRT [1]_ (see "Why training the factors directly is ill-conditioned"
    on the Concepts page).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Any Tucker tensor (orthonormal factors are not required): core of shape
        ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``.
    grad : tensor of shape (n_1, ..., n_d)
        Euclidean gradient with respect to the full tensor, in the point's dtype.
    lr : float
        Step size ``h > 0`` (the learning rate of SGD on the factors).
    state : None, optional
        Accepted so that a loop reads the same for every step function
        (``Y, state = step(Y, G, lr, state=state)``); this method keeps no optimizer
        state, so it must be None.

    Returns
    -------
    (TuckerTensor, None)
        The new point, same shapes as ``tucker``, with non-orthonormal factors in
        general; and None, the state (the method keeps none), as every step
        function returns ``(tucker, state)``.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if ``grad``
        is not a tensor of the active backend with the point's real floating-point
        dtype; if ``lr`` is not a real number.
    ValueError
        If ``tucker`` is malformed (core with fewer than 2 modes, not one factor per
        mode, ``factors[i].shape[1] != core.shape[i]``, NaN or Inf entries); if
        ``grad`` does not have the shape ``(n_1, ..., n_d)`` or holds NaN or Inf; if
        ``lr`` is not finite and positive; if ``state`` is not None (the method keeps
        no optimizer state: use :func:`tdlrt_step` or :func:`parallel_bug_step` for
        Momentum/Adam).

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """
    refuse_state(state, "vanilla_step")
    core, factors = check_tucker(tucker, "tucker", orthonormal=False)
    lr = check_positive(lr, "lr")
    check_gradient(grad, core, factors, finite=False)
    contractions = GradientContractions(grad, factors)
    contractions.check_finite("grad")
    new_core = core - lr * contractions.core_gradient()
    new_factors = [
        factor
        - lr
        * tl.dot(
            contractions.unfolded_partial(mode), tl.transpose(tl.unfold(core, mode))
        )
        for mode, factor in enumerate(factors)
    ]
    return TuckerTensor((new_core, new_factors)), None
