"""Basis-update & Galerkin (BUG) variants: fixed rank, and parallel rank-adaptive.

Both reuse the TDLRT pieces: the QR reparametrization, the K-step, the lift and the
truncation (docs/concepts.rst, section 'Variants').

Sources: G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical
low-rank approximation", BIT Numer. Math. 62, 23-44, 2022 (fixed-rank BUG);
G. Ceruti, J. Kusch, C. Lubich, "A parallel rank-adaptive integrator for dynamical
low-rank approximation", SIAM J. Sci. Comput. 46(3), 2024 (parallel BUG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import check_finite, check_positive, check_tensor, check_tucker
from ..contractions import GradientContractions
from ..linalg import augment_basis, orthonormal_basis, reciprocal_above, thin_svd
from ..profiling import phase
from ..ranks import RankRule, RankSpec, rule_from_keywords
from ..retraction import augment_bases, augmented_dims, lift
from ..tangent import reparametrize
from ._blocks import (
    AugmentedStep,
    adaptive_reparametrizations,
    check_gradient,
    check_rule,
    check_state,
    check_step_inputs,
    is_full_rank,
    refuse_state,
    single_new_blocks,
)
from .state import OptimizerState

__all__ = [
    "bug_step",
    "parallel_bug_step",
    "parallel_bug_update",
    "k_gradients_from_factor_gradients",
]


def bug_step(
    tucker: Any,
    grad: Any,
    lr: float,
    *,
    grad_fn: Callable[[Any], Any],
    state: None = None,
) -> tuple[TuckerTensor, None]:
    """Fixed-rank BUG step [1]_: new bases from the K-steps, then a Galerkin core step.

    1. ``K_i1 = U_i S_i - lr * dL/dK_i`` (as in :func:`tdlrt_step`), ``Uhat_i =
       orth(K_i1)`` with the same number of columns as ``U_i``.
    2. ``Chat0 = C ×_i (Uhat_i^T U_i)``: the old point projected onto the new bases.
    3. ``C1 = Chat0 - lr * grad_fn(Chat0 ×_i Uhat_i) ×_i Uhat_i^T``: a *second*
       gradient, at the new point (unlike TDLRT, the lifted point is not ``Y0``).

    No truncation: the rank never changes (see "Variants" on the Concepts page).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Current point: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns.
    grad : tensor of shape (n_1, ..., n_d)
        Dense Euclidean gradient at ``tucker``, in the point's dtype.
    lr : float
        Step size ``h > 0`` (the time step of the gradient flow).
    grad_fn : callable
        ``grad_fn(dense_tensor) -> dense gradient``: the Euclidean gradient at a
        dense tensor of shape ``(n_1, ..., n_d)``, returned with that shape and the
        point's dtype; called once, at the new basis.
    state : None, optional
        Accepted so that a loop reads the same for every step function
        (``Y, state = step(Y, G, lr, state=state)``); this method keeps no optimizer
        state, so it must be None.

    Returns
    -------
    (TuckerTensor, None)
        The new point, same rank as ``tucker``: core of shape ``(r_1, ..., r_d)``,
        factors of shapes ``(n_i, r_i)`` with orthonormal columns; and None, the
        state (the method keeps none), as every step function returns
        ``(tucker, state)``.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if ``grad``
        (or what ``grad_fn`` returns) is not a tensor of the active backend with the
        point's real floating-point dtype; if ``lr`` is not a real number; if
        ``grad_fn`` is not callable.
    ValueError
        If ``tucker`` is malformed (core with fewer than 2 modes, not one factor per
        mode, mismatched shapes, NaN or Inf entries) or its factors are not
        orthonormal; if ``grad`` (or what ``grad_fn`` returns) does not have the shape
        ``(n_1, ..., n_d)`` or holds NaN or Inf; if ``lr`` is not finite and
        positive; if ``state`` is not None (the method keeps no optimizer state:
        use :func:`tdlrt_step` or :func:`parallel_bug_step` for Momentum/Adam).

    References
    ----------
    .. [1] G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical
       low-rank approximation", BIT Numer. Math. 62, 23-44, 2022.
    """
    refuse_state(state, "bug_step")
    core, factors, lr = check_step_inputs(tucker, grad, lr)
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable, got {type(grad_fn).__name__}")
    contractions = GradientContractions(grad, factors)
    contractions.check_finite("grad")
    bases = []
    for mode, factor in enumerate(factors):
        q, s = reparametrize(core, mode)
        k_grad = tl.dot(contractions.unfolded_partial(mode), q)
        k_new = tl.dot(factor, s) - lr * k_grad
        basis = orthonormal_basis(k_new)
        if tl.shape(basis)[1] < tl.shape(factor)[1]:  # k_i < r_i: keep the rank
            basis = augment_basis(basis, factor)[:, : tl.shape(factor)[1]]
        bases.append(basis)
    lifted = lift(core, [tl.dot(tl.transpose(b), u) for b, u in zip(bases, factors)])
    moved = tl.tenalg.multi_mode_dot(lifted, bases)
    second = grad_fn(moved)
    check_gradient(second, core, factors, name="grad_fn(...)")
    galerkin = tl.tenalg.multi_mode_dot(second, bases, transpose=True)
    return TuckerTensor((lifted - lr * galerkin, bases)), None


@rule_from_keywords
def parallel_bug_step(
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
    """Parallel BUG step [1]_: every block from one gradient, then truncation.

    * core step in the old bases: ``C1 = C - lr * G ×_j U_j^T``;
    * new directions ``Utilde_i = orth((I - U_i U_i^T) K_i1)``;
    * augmented core: ``C1`` in the all-old block, ``Utilde_i^T K_i1 Q_i^T`` folded in
      mode ``i`` in the block where only mode ``i`` is new, zeros elsewhere;
    * truncation as in :func:`tdlrt_step`.

    It touches the gradient only through ``G ×_{j != i} U_j^T`` (no Galerkin
    contraction with the augmented bases), so it is cheaper than TDLRT per step (see
    "Variants" on the Concepts page). With an optimizer state, the core state drives
    the all-old block and the K state the new directions (the core state of new
    directions starts at zero).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Current point: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns.
    grad : tensor of shape (n_1, ..., n_d)
        Dense Euclidean gradient ``G`` at ``tucker``, in the point's dtype.
    lr : float
        Step size ``h > 0`` (the time step of the gradient flow).
    tol : float, optional
        Truncation tolerance, relative to the norm of the augmented core (a fraction
        in ``[0, 1)``) or absolute (``relative=False``, units of the entries), as in
        :func:`tdlrt_step`.
    relative : bool, default True
        Whether ``tol`` is relative.
    min_rank, max_rank : int or sequence of int, optional
        Bounds for the new ranks (``max_rank`` defaults to the mode sizes).
    rank : int or sequence of int, optional
        Fixed rank after the step instead of a tolerance, at most
        ``min(n_i, r_i + k_i)`` per mode as in :func:`tdlrt_step` (an int is capped
        at that per mode; a sequence entry above it raises).
    budget : int, optional
        Parameter budget ``prod(r) + sum(n_i r_i)`` for the new ranks.
    state : Momentum or Adam, optional
        Optimizer state built for ``tucker``.
    rule : RankRule, optional
        The rank rule as one value, as in :func:`tdlrt_step`.

    Returns
    -------
    (TuckerTensor, OptimizerState or None)
        The new point, core of shape ``(s_1, ..., s_d)`` with
        ``s_i <= min(n_i, 2 r_i)`` and orthonormal factors of shapes ``(n_i, s_i)``;
        and the state belonging to it, None when no ``state`` was given.

    Raises
    ------
    TypeError
        If ``tucker``, ``grad``, ``lr``, ``state`` or the rank rule have the wrong
        type, exactly as in :func:`tdlrt_step`: ``tucker`` not a Tucker tensor of the
        active backend with one real floating-point dtype, ``grad`` not such a tensor
        of the point's dtype, ``lr`` not a real number, ``state`` not a Momentum or
        Adam state, ``rank``/``min_rank``/``max_rank`` not ints, ``tol`` not a real
        number, ``budget`` not an int, ``rule`` not a RankRule.
    ValueError
        As in :func:`tdlrt_step`: a malformed or non-orthonormal ``tucker``; a
        ``grad`` of the wrong shape or with NaN or Inf; ``lr`` not finite and
        positive; ``state`` buffers of another point; not exactly one of ``tol``,
        ``rank`` and ``budget``, or ``rule`` with any of the rule keywords; a
        ``rank``, ``min_rank``, ``max_rank``, ``tol`` or ``budget`` out of range.

    References
    ----------
    .. [1] G. Ceruti, J. Kusch, C. Lubich, "A parallel rank-adaptive integrator for
       dynamical low-rank approximation", SIAM J. Sci. Comput. 46(3), 2024.
    """
    core, factors, lr = check_step_inputs(tucker, grad, lr, state)
    reparams = [reparametrize(core, mode) for mode in range(len(factors))]
    rule = _check_parallel_rule(core, factors, reparams, rule)
    contractions = GradientContractions(grad, factors)
    contractions.check_finite("grad")
    k_grads = [
        tl.dot(contractions.unfolded_partial(mode), q)
        for mode, (q, _) in enumerate(reparams)
    ]
    return _parallel_update(
        core,
        factors,
        reparams,
        contractions.core_gradient(),
        k_grads,
        lr,
        rule,
        state=state,
    )


@rule_from_keywords
def parallel_bug_update(
    tucker: Any,
    core_grad: Any,
    k_grads: Sequence[Any],
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
    """:func:`parallel_bug_step` [1]_ from the projected gradients, not the dense one.

    For callers that never form the dense gradient, e.g. a factorized network layer
    whose backward pass yields the factor gradients
    (:func:`k_gradients_from_factor_gradients` turns those into K-gradients).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Current point: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns.
    core_grad : tensor of shape (r_1, ..., r_d)
        ``dL/dC = G ×_j U_j^T``, shaped like the core.
    k_grads : sequence of tensors of shape (n_i, k_i)
        One per mode: ``dL/dK_i = unfold(G ×_{j != i} U_j^T, i) Q_i`` with
        ``k_i = min(r_i, prod_{j != i} r_j)`` and ``Q_i`` from the QR
        ``unfold(C, i)^T = Q_i S_i^T`` (see "The K-step reparametrization" on the
        Concepts page).
    lr, tol, relative, min_rank, max_rank, rank, budget, state, rule
        As in :func:`parallel_bug_step`.

    Returns
    -------
    (TuckerTensor, OptimizerState or None)
        As :func:`parallel_bug_step`: the new point and its state (None without
        ``state``).

    Raises
    ------
    TypeError
        If ``tucker`` is not a Tucker tensor of the active backend with one real
        floating-point dtype; if ``core_grad`` or a ``k_grads[i]`` is not a tensor of
        the active backend; if ``lr`` is not a real number; if ``state`` is not a
        Momentum or Adam state; if the rank rule has the wrong type (as in
        :func:`tdlrt_step`).
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if
        ``core_grad`` is not shaped like the core, ``k_grads`` does not hold one
        gradient per mode, a ``k_grads[i]`` is not of shape ``(n_i, k_i)``, or any of
        them holds NaN or Inf; if ``lr`` is not finite and positive; if ``state``
        belongs to another point; if the rank rule is missing or out of range (as in
        :func:`tdlrt_step`).

    References
    ----------
    .. [1] G. Ceruti, J. Kusch, C. Lubich, "A parallel rank-adaptive integrator for
       dynamical low-rank approximation", SIAM J. Sci. Comput. 46(3), 2024.
    """
    core, factors = check_tucker(tucker, "tucker")
    lr = check_positive(lr, "lr")
    check_state(state, core, factors)
    reparams = [reparametrize(core, mode) for mode in range(len(factors))]
    check_tensor(core_grad, "core_grad")
    if tuple(tl.shape(core_grad)) != tuple(tl.shape(core)):
        raise ValueError(
            f"core_grad has shape {tuple(tl.shape(core_grad))}, the core has "
            f"{tuple(tl.shape(core))}"
        )
    if len(k_grads) != len(factors):
        raise ValueError(
            f"give one K-gradient per mode ({len(factors)}), got {len(k_grads)}"
        )
    for mode, (k_grad, factor, (q, _)) in enumerate(
        zip(k_grads, factors, reparams, strict=True)
    ):
        check_tensor(k_grad, f"k_grads[{mode}]")
        expected = (tl.shape(factor)[0], tl.shape(q)[1])
        if tuple(tl.shape(k_grad)) != expected:
            raise ValueError(
                f"k_grads[{mode}] has shape {tuple(tl.shape(k_grad))}, "
                f"expected {expected}"
            )
    check_finite(core_grad, "core_grad")
    for mode, k_grad in enumerate(k_grads):
        check_finite(k_grad, f"k_grads[{mode}]")
    rule = _check_parallel_rule(core, factors, reparams, rule)
    return _parallel_update(
        core, factors, reparams, core_grad, list(k_grads), lr, rule, state=state
    )


def _check_parallel_rule(core, factors, reparams, rule: RankRule) -> RankRule:
    dims = augmented_dims(factors, [tl.shape(q)[1] for q, _ in reparams])
    return check_rule(core, factors, dims, rule)


def _parallel_update(core, factors, reparams, core_grad, k_grads, lr, rule, *, state):
    """The parallel BUG update itself, from validated projected gradients."""
    augmented = _parallel_augment(
        core, factors, reparams, core_grad, k_grads, lr, state=state
    )
    with phase("truncation"):
        return augmented.finish(rule=rule)


def _parallel_augment(
    core, factors, reparams, core_grad, k_grads, lr, *, state
) -> AugmentedStep:
    """Parallel BUG up to the truncation."""
    state = state.begin_step() if state is not None else None
    with phase("core step"):
        direction = core_grad
        if state is not None:
            direction, state = state.core_direction(core_grad)
        updated = core - lr * direction

    with phase("augmentation"):
        k_directions, new_directions = [], []
        for mode, (factor, k_grad) in enumerate(zip(factors, k_grads, strict=True)):
            if is_full_rank(factor):  # U_i spans everything
                k_directions.append(None)
                new_directions.append(None)
                continue
            k_direction = k_grad
            if state is not None:
                k_direction, state = state.basis_direction(mode, k_grad)
            k_directions.append(k_direction)
            # Utilde_i^T K_i1 = -lr Utilde_i^T direction (Utilde_i is orthogonal to U_i)
            new_directions.append(-lr * k_direction)
        bases, embeddings = augment_bases(factors, k_directions)  # [U_i, Utilde_i]

    with phase("core step"):
        augmented = lift(updated, embeddings)
        new_blocks = single_new_blocks(
            new_directions, bases, factors, embeddings, reparams
        )
        if new_blocks is not None:
            augmented = augmented + new_blocks
        if state is not None:
            state = state.lift(embeddings)

    return AugmentedStep(
        augmented,
        bases,
        state,
        list(factors),
        None if state is None else [None if r is None else r[0] for r in reparams],
        old_core=core,
    )


def _k_gradients(core, factors, factor_grads, reparams, rcond):
    eps = float(tl.finfo(core.dtype).eps)
    cutoff_ratio = eps**0.5 if rcond is None else float(rcond)
    k_grads = []
    for grad, reparam in zip(factor_grads, reparams, strict=True):
        if reparam is None:
            k_grads.append(None)
            continue
        # S_i comes from the QR of the (finite) core: no finiteness read here
        left, values, right_t = thin_svd(reparam[1], check_finite=False)
        cutoff = cutoff_ratio * values[0]
        inverse = reciprocal_above(values, cutoff)
        # pinv(S^T) = left diag(1 / values) right_t
        k_grads.append(
            tl.dot(grad, tl.dot(left * tl.reshape(inverse, (1, -1)), right_t))
        )
    return k_grads


def parallel_augment_from_factor_gradients(
    core: Any,
    factors: Sequence[Any],
    core_grad: Any,
    factor_grads: Sequence[Any],
    lr: float,
    *,
    rcond: float | None = None,
    state: OptimizerState | None = None,
) -> AugmentedStep:
    """Unchecked parallel BUG step up to its truncation, from ``dL/dC`` and ``dL/dU_i``
    (one backward pass).

    The fast path of the PyTorch optimizer for factorized layers: it trusts its inputs
    (orthonormal factors, finite gradients, a validated rule) and shares the QR
    reparametrizations between the K-gradient solve and the update. Public callers use
    :func:`k_gradients_from_factor_gradients` and :func:`parallel_bug_update`.
    """
    reparams = adaptive_reparametrizations(core, factors)
    k_grads = _k_gradients(core, factors, factor_grads, reparams, rcond)
    return _parallel_augment(
        core, factors, reparams, core_grad, k_grads, lr, state=state
    )


def parallel_augment_unchecked(
    core: Any,
    factors: Sequence[Any],
    grad: Any,
    lr: float,
    *,
    state: OptimizerState | None = None,
) -> AugmentedStep:
    """:func:`parallel_bug_step` up to the truncation, from a dense gradient, without
    input validation (the PyTorch optimizer's path for dense layers; its gradients
    are checked for NaN and Inf before). Full-rank modes get no reparametrization,
    K-step or QR."""
    reparams = adaptive_reparametrizations(core, factors)
    contractions = GradientContractions(grad, factors)
    k_grads = [
        None
        if reparam is None
        else tl.dot(contractions.unfolded_partial(mode), reparam[0])
        for mode, reparam in enumerate(reparams)
    ]
    return _parallel_augment(
        core, factors, reparams, contractions.core_gradient(), k_grads, lr, state=state
    )


def k_gradients_from_factor_gradients(
    tucker: Any, factor_grads: Sequence[Any], *, rcond: float | None = None
) -> list[Any]:
    """K-gradients from factor gradients: ``dL/dK_i = dL/dU_i pinv(S_i^T)``.

    Autograd through ``W = C ×_j U_j`` gives ``dL/dU_i = A_i C_(i)^T = A_i Q_i S_i^T``
    with ``unfold(C, i)^T = Q_i S_i^T``; the K-gradient ``A_i Q_i`` is recovered by a
    small ``k x k`` solve. The solve amplifies rounding by ``cond(S_i)``, so singular
    values of ``S_i`` below ``rcond * sigma_max`` (default ``sqrt(eps)``) are dropped:
    those directions of the core get no K-gradient. The dense-gradient route
    (:func:`parallel_bug_step`) has no such limit.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Current point: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns.
    factor_grads : sequence of tensors of shape (n_i, r_i)
        ``dL/dU_i``, one per mode, shaped like the factors.
    rcond : float, optional
        Relative cutoff (a fraction of ``sigma_max(S_i)``, dimensionless); default
        ``sqrt(eps)`` of the dtype. Not validated.

    Returns
    -------
    list of tensors of shape (n_i, k_i)
        ``dL/dK_i`` with ``k_i = min(r_i, prod_{j != i} r_j)``, as
        :func:`parallel_bug_update` takes them.

    Raises
    ------
    TypeError
        If ``tucker`` is not a Tucker tensor of the active backend with one real
        floating-point dtype, or a ``factor_grads[i]`` is not a tensor of the active
        backend.
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if
        ``factor_grads`` does not hold one gradient per mode or a
        ``factor_grads[i]`` is not shaped like ``factors[i]``.
    """
    core, factors = check_tucker(tucker, "tucker")
    if len(factor_grads) != len(factors):
        raise ValueError(
            f"give one factor gradient per mode ({len(factors)}), "
            f"got {len(factor_grads)}"
        )
    for mode, (factor, grad) in enumerate(zip(factors, factor_grads, strict=True)):
        check_tensor(grad, f"factor_grads[{mode}]")
        if tuple(tl.shape(grad)) != tuple(tl.shape(factor)):
            raise ValueError(
                f"factor_grads[{mode}] has shape {tuple(tl.shape(grad))}, "
                f"the factor has {tuple(tl.shape(factor))}"
            )
    reparams = [reparametrize(core, mode) for mode in range(len(factors))]
    return _k_gradients(core, factors, factor_grads, reparams, rcond)
