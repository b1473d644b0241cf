"""Basis-update & Galerkin (BUG) variants: fixed rank, and parallel rank-adaptive.

Both reuse the TDLRT pieces: the QR reparametrization, the K-step, the lift and the
truncation (THEORY.md section 5, variants).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ..contractions import GradientContractions
from ..hosvd import RankSpec
from ..linalg import augment_basis, orthonormal_basis
from ._blocks import (
    augmented_dims,
    check_gradient,
    check_rule,
    check_step_inputs,
    lift,
    reparametrize,
    truncate_step,
)
from .state import OptimizerState

__all__ = ["bug_step", "parallel_bug_step"]


def bug_step(
    tucker: Any,
    grad: Any,
    lr: float,
    *,
    grad_fn: Callable[[Any], Any],
) -> TuckerTensor:
    """Fixed-rank BUG step: new bases from the K-steps, then a Galerkin core step there.

    1. ``K_i1 = U_i S_i - lr * dL/dK_i`` (as in :func:`tdlrt_step`), ``Uhat_i =
       orth(K_i1)`` with the same number of columns as ``U_i``.
    2. ``Chat0 = C ×_i (Uhat_i^T U_i)``: the old point projected onto the new bases.
    3. ``C1 = Chat0 - lr * grad_fn(Chat0 ×_i Uhat_i) ×_i Uhat_i^T``: a *second*
       gradient, at the new point (unlike TDLRT, the lifted point is not ``Y0``).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
    grad : tensor
        Euclidean gradient at ``tucker``.
    lr : float
    grad_fn : callable
        ``grad_fn(dense_tensor) -> dense gradient``; called once, at the new basis.

    Returns
    -------
    TuckerTensor
        Same rank as ``tucker``.
    """
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
    return TuckerTensor((lifted - lr * galerkin, bases))


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
) -> TuckerTensor | tuple[TuckerTensor, OptimizerState]:
    """Parallel BUG step: every block from one gradient, then truncation.

    * core step in the old bases: ``C1 = C - lr * G ×_j U_j^T``;
    * new directions ``Utilde_i = orth((I - U_i U_i^T) K_i1)``;
    * augmented core: ``C1`` in the all-old block, ``Utilde_i^T K_i1 Q_i^T`` folded in
      mode ``i`` in the block where only mode ``i`` is new, zeros elsewhere;
    * truncation as in :func:`tdlrt_step`.

    It touches the gradient only through ``G ×_{j != i} U_j^T`` (no Galerkin
    contraction with the augmented bases), so it is cheaper than TDLRT per step.
    Parameters and return value as in :func:`tdlrt_step`. With an optimizer state, the
    core state drives the all-old block and the K state the new directions (the core
    state of new directions starts at zero).
    """
    core, factors, lr = check_step_inputs(tucker, grad, lr, state)
    order = len(factors)
    reparams = [reparametrize(core, mode) for mode in range(order)]
    tol = check_rule(
        core,
        factors,
        augmented_dims(factors, [tl.shape(q)[1] for q, _ in reparams]),
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
        budget=budget,
    )
    state = state.begin_step() if state is not None else None
    contractions = GradientContractions(grad, factors)
    contractions.check_finite("grad")

    core_grad = contractions.core_gradient()
    if state is not None:
        direction, state = state.core_direction(core_grad)
    else:
        direction = core_grad
    updated = core - lr * direction

    bases, embeddings, new_blocks = [], [], []
    for mode, (factor, (q, _)) in enumerate(zip(factors, reparams, strict=True)):
        k_grad = tl.dot(contractions.unfolded_partial(mode), q)
        k_direction = k_grad
        if state is not None:
            k_direction, state = state.basis_direction(mode, k_grad)
        basis = augment_basis(factor, k_direction)  # [U_i, Utilde_i]
        rank_i = tl.shape(factor)[1]
        bases.append(basis)
        embeddings.append(tl.dot(tl.transpose(basis), factor))
        # Utilde_i^T K_i1 = -lr Utilde_i^T direction (Utilde_i is orthogonal to U_i)
        new = -lr * tl.dot(tl.transpose(basis[:, rank_i:]), k_direction)
        new_blocks.append(tl.dot(new, tl.transpose(q)))

    augmented = lift(updated, embeddings)
    for mode, block in enumerate(new_blocks):
        rank_i = tl.shape(factors[mode])[1]
        extra = tl.shape(bases[mode])[1] - rank_i
        if extra == 0:
            continue
        shape = [tl.shape(f)[1] for f in factors]
        shape[mode] = extra
        folded = tl.fold(block, mode, shape)
        # place it in the block "only mode i new": rows rank_i: of mode i, old elsewhere
        placement = [
            tl.dot(tl.transpose(b), f) if j != mode else _selector(b, rank_i)
            for j, (b, f) in enumerate(zip(bases, factors, strict=True))
        ]
        augmented = augmented + tl.tenalg.multi_mode_dot(folded, placement)
    if state is not None:
        state = state.lift(embeddings)

    result, state = truncate_step(
        augmented,
        bases,
        rank=rank,
        tol=tol,
        relative=relative,
        min_rank=min_rank,
        max_rank=max_rank,
        budget=budget,
        state=state,
        old_factors=factors,
        old_q=[q for q, _ in reparams],
    )
    return result if state is None else (result, state)


def _selector(basis: Any, start: int) -> Any:
    """``(rhat, rhat - start)`` matrix embedding coordinates of ``basis[:, start:]``."""
    context = dict(tl.context(basis))
    context.pop("requires_grad", None)
    total = tl.shape(basis)[1]
    return tl.eye(total, **context)[:, start:]
