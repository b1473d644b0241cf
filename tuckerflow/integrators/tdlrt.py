"""The TDLRT rank-adaptive step (docs/concepts.rst, 'The TDLRT step'), in one place.

Source: E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco, "Geometry-aware
training of factorized layers in tensor Tucker format", NeurIPS 2024.
"""

from __future__ import annotations

from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ..contractions import GradientContractions
from ..profiling import phase
from ..ranks import RankRule, RankSpec, rule_from_keywords
from ..retraction import augment_bases, augmented_dims, lift
from ..tangent import reparametrize
from ._blocks import (
    AugmentedStep,
    adaptive_reparametrizations,
    check_rule,
    check_step_inputs,
    is_full_rank,
    single_new_blocks,
)
from .state import OptimizerState

__all__ = ["tdlrt_step"]


@rule_from_keywords
def tdlrt_step(
    tucker: Any,
    grad: Any,
    lr: float,
    *,
    tol: float | None = None,
    relative: bool = True,
    min_rank: RankSpec = 1,
    max_rank: RankSpec = None,
    rank: RankSpec = None,
    budget: int | None = None,
    state: OptimizerState | None = None,
    rule: RankRule | None = None,
) -> tuple[TuckerTensor, OptimizerState | None]:
    """One rank-adaptive TDLRT step [1]_ from the Euclidean gradient at the point.

    The step of the Concepts page ("The TDLRT step"), with ``C``, ``U_i`` the core and
    factors of ``tucker`` and ``lr`` the step size:

    1. ``G = grad`` at ``Y0 = C ×_i U_i``.
    2. K-steps, every mode independently: ``unfold(C, i)^T = Q_i S_i^T`` and
       ``K_i1 = U_i S_i - lr * dL/dK_i`` with
       ``dL/dK_i = unfold(G ×_{j != i} U_j^T, i) Q_i`` (no inverse of ``S_i``).
    3. Augment: ``Uhat_i = orth([U_i, K_i1])``, old basis first.
    4. Lift: ``Chat0 = C ×_i (Uhat_i^T U_i)``, so ``Chat0 ×_i Uhat_i == Y0``.
    5. Galerkin step: ``Chat1 = Chat0 - lr * G ×_i Uhat_i^T``. The gradient there is
       the gradient at ``Chat0 ×_i Uhat_i = Y0``, i.e. ``G`` itself: one gradient
       (one forward/backward pass, one mini-batch) serves steps 2 and 5.
    6. Truncate ``Chat1`` by the HOSVD of this small core (``tol``, ``rank`` or
       ``budget``), clipped to ``[min_rank, max_rank]``.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Current point ``Y0``: core of shape ``(r_1, ..., r_d)``, ``d >= 2``, factors
        of shapes ``(n_i, r_i)`` with orthonormal columns (to ``sqrt(eps)`` of the
        dtype), one real floating-point dtype, finite entries.
    grad : tensor of shape (n_1, ..., n_d)
        Dense Euclidean gradient ``G`` of the objective at ``tucker``, in the point's
        dtype, finite.
    lr : float
        Step size ``h > 0``: the time step of the gradient flow ``dY/dt = -grad``,
        so the update moves the point by ``lr`` times a (projected) gradient.
    tol : float, optional
        Truncation tolerance: ``||Y1 - Y1_untruncated|| <= tol * ||Chat1||`` (relative,
        the default: a fraction in ``[0, 1)``) or ``<= tol`` (``relative=False``: an
        absolute Frobenius norm in the units of the entries); see
        :func:`tuckerflow.hosvd` and "What the tolerance means" on the Concepts page.
    relative : bool, default True
        Whether ``tol`` is relative to ``||Chat1||``.
    min_rank, max_rank : int or sequence of int, optional
        Bounds for the new ranks (``max_rank`` defaults to the mode sizes).
    rank : int or sequence of int, optional
        Fixed rank after the step instead of a tolerance (an "augmented BUG" step);
        at most ``min(n_i, r_i + k_i)`` per mode, ``k_i = min(r_i, prod_{j != i}
        r_j)``, so one step can at most double a rank. An int is capped at that per
        mode (``rank=3`` from rank 1 gives rank 2 in every mode); a sequence entry
        above it raises.
    budget : int, optional
        Parameter budget ``prod(r) + sum(n_i r_i)`` (stored entries) for the new ranks.
    state : Momentum or Adam, optional
        Optimizer state built for ``tucker`` (:meth:`Momentum.init`,
        :meth:`Adam.init`, or the state returned by the previous step); the K and core
        updates then use its directions. The state is carried into the new bases (see
        :mod:`tuckerflow.integrators.state`).
    rule : RankRule, optional
        ``rank``, ``tol``, ``relative``, ``min_rank``, ``max_rank`` and ``budget`` as
        one value (:class:`tuckerflow.RankRule`); with ``rule`` they keep their
        defaults.

    Returns
    -------
    (TuckerTensor, OptimizerState or None)
        The new point ``Y1``: core of shape ``(s_1, ..., s_d)`` with
        ``s_i <= min(n_i, 2 r_i)``, factors of shapes ``(n_i, s_i)`` with
        orthonormal columns; and the state belonging to the new point, None when no
        ``state`` was given. Always a pair: ``Y, state = tdlrt_step(Y, G, lr,
        tol=0.1, state=state)``.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if ``grad``
        is not a tensor of the active backend with a real floating-point dtype equal
        to the point's; if ``lr`` is not a real number; if ``state`` is not a
        Momentum or Adam state (or its buffers are not tensors); if ``rank``,
        ``min_rank`` or ``max_rank`` is not an int or a sequence of ints, ``tol`` not
        a real number, ``budget`` not an int, or ``rule`` not a RankRule.
    ValueError
        If ``tucker`` is malformed (core with fewer than 2 modes, not one factor per
        mode, mismatched shapes, NaN or Inf entries) or its factors are not
        orthonormal; if ``grad`` does not have the shape ``(n_1, ..., n_d)`` or holds
        NaN or Inf; if ``lr`` is not finite and positive; if the buffers of ``state``
        do not match the point's shapes (a state of another point); if not exactly
        one of ``tol``, ``rank`` and ``budget`` is given, or ``rule`` with any of the
        rule keywords; if ``rank[i]`` is below 1
        or above what one step can reach (see ``rank``); if ``min_rank`` or
        ``max_rank`` is out of range or ``min_rank > max_rank``; if ``tol`` is not
        finite, outside ``[0, 1)`` with ``relative=True``, or negative; if ``budget``
        is smaller than the parameter count at ``min_rank``.

    Notes
    -----
    ``span[U_i, K_i1] = span[U_i, dL/dK_i]`` because ``U_i S_i`` lies in ``span(U_i)``;
    the basis is built from the direction itself, which avoids the cancellation of
    ``U_i S_i - lr * dL/dK_i`` for small ``lr``.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """
    core, factors, lr = check_step_inputs(tucker, grad, lr, state)
    order = len(factors)
    # reparametrizations first: they fix the augmented sizes for validating the rule
    with phase("augmentation"):
        reparams = [reparametrize(core, mode) for mode in range(order)]
    dims = augmented_dims(factors, [tl.shape(q)[1] for q, _ in reparams])
    rule = check_rule(core, factors, dims, rule)
    return _tdlrt_update(core, factors, reparams, grad, lr, rule, state=state)


def tdlrt_augment_unchecked(
    core: Any,
    factors: list[Any],
    grad: Any,
    lr: float,
    *,
    state: OptimizerState | None = None,
) -> AugmentedStep:
    """Steps 1-5 of :func:`tdlrt_step` without input validation; truncate with
    :meth:`AugmentedStep.finish`. The PyTorch optimizer's fast path: its points are
    orthonormal by construction, its rule is checked once and its gradients are
    checked for NaN and Inf before (no check here, no host synchronization).
    Full-rank modes (``n_i == r_i``) get no reparametrization, K-step or QR."""
    with phase("augmentation"):
        reparams = adaptive_reparametrizations(core, factors)
    return _tdlrt_augment(
        core, factors, reparams, grad, lr, state=state, check_finite=False
    )


def _tdlrt_update(core, factors, reparams, grad, lr, rule, *, state):
    """Steps 1-6 of :func:`tdlrt_step` on validated inputs."""
    augmented = _tdlrt_augment(core, factors, reparams, grad, lr, state=state)
    # 6. truncate the small augmented core
    with phase("truncation"):
        return augmented.finish(rule=rule)


def _tdlrt_augment(
    core, factors, reparams, grad, lr, *, state, check_finite=True
) -> AugmentedStep:
    """Steps 1-5 of :func:`tdlrt_step`: the augmented core, before truncation.

    ``reparams[i]`` may be None for a full-rank mode (``n_i == r_i``)."""
    state = state.begin_step() if state is not None else None

    # 1. the only passes over the dense gradient
    with phase("contractions"):
        contractions = GradientContractions(grad, factors)
        if check_finite:
            contractions.check_finite("grad")
        k_grads = [
            None
            if reparam is None or is_full_rank(factors[mode])  # full rank: no K-step
            else tl.dot(contractions.unfolded_partial(mode), reparam[0])  # dL/dK_i
            for mode, reparam in enumerate(reparams)
        ]

    # 2-3. K-steps and augmented bases, mode by mode
    with phase("augmentation"):
        memory = None if state is None else state.basis_memory()
        directions = []
        for mode, (factor, k_grad) in enumerate(zip(factors, k_grads, strict=True)):
            if is_full_rank(factor):  # U_i spans everything: nothing to add
                directions.append(None)
                continue
            direction = k_grad
            if state is not None:
                direction, state = state.basis_direction(mode, k_grad)
            directions.append(direction)
        bases, embeddings = augment_bases(factors, directions)  # orth([U_i, K_i1])

    # 4. lift the core (and the optimizer state) into the augmented bases
    with phase("core step"):
        lifted = lift(core, embeddings)
        if state is not None:
            state = state.lift(embeddings)
            if memory is not None:  # velocity of the new directions: the K-state's
                seeded = single_new_blocks(memory, bases, factors, embeddings, reparams)
                if seeded is not None:
                    state = state.with_new_directions(seeded)

    # 5. Galerkin step with the same gradient: the lifted point is Y0
    with phase("contractions"):
        core_grad = contractions.galerkin(bases, embeddings)
    with phase("core step"):
        direction = core_grad
        if state is not None:
            direction, state = state.core_direction(core_grad)
        augmented = lifted - lr * direction

    return AugmentedStep(
        augmented,
        bases,
        state,
        list(factors),
        None if state is None else [None if r is None else r[0] for r in reparams],
        old_core=core,
    )
