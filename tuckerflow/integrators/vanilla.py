"""Vanilla factor training: one plain gradient step on the core and on each factor."""

from __future__ import annotations

from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import check_positive, check_tucker
from ..contractions import GradientContractions
from ._blocks import check_gradient

__all__ = ["vanilla_step"]


def vanilla_step(tucker: Any, grad: Any, lr: float) -> TuckerTensor:
    """SGD on ``(C, U_1, ..., U_d)`` by the chain rule (factorized-layer baseline).

    ``C1 = C - lr * G ×_j U_j^T`` and
    ``U_i1 = U_i - lr * unfold(G ×_{j != i} U_j^T, i) unfold(C, i)^T``, all from the
    same point. The factors lose orthonormality, the rank never changes, and the
    effective step along a direction scales with the core's singular values squared,
    so directions with small singular values barely move (docs/concepts.rst).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Any Tucker tensor (orthonormal factors are not required).
    grad : tensor
        Euclidean gradient with respect to the full tensor.
    lr : float

    Returns
    -------
    TuckerTensor
        With non-orthonormal factors in general.
    """
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
    return TuckerTensor((new_core, new_factors))
