"""Multi-tensor TDLRT: one update of many Tucker tensors with batched calls.

The analogue of ``torch.optim``'s ``_multi_tensor_*`` (foreach) paths: the tensors of a
step (the layers of a network) are grouped by their shapes (core, factors, optimizer
state), each group is stacked along a new leading axis, and every QR, SVD and
contraction of the step runs once per group on the stacks (``torch.linalg``,
``numpy.linalg`` and ``cupy.linalg`` factorize stacks of matrices; TensorLy passes them
through). The mathematics is that of :func:`~tuckerflow.integrators.tdlrt_step`
(docs/concepts.rst, "The TDLRT step"), which stays the readable reference; these
functions give the same iterates up to rounding.

Nothing is validated here (as in the optimizer's unchecked path): points orthonormal,
gradients finite, rules checked by the caller. Weight decay is the caller's: pass
``G + wd * W`` as the gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorly as tl

from ..backend import plain_context
from ..hosvd import CoreDecomposition, pinned_modes
from ..linalg import thin_svd
from ._blocks import AugmentedStep
from .state import Adam, Momentum, OptimizerState

__all__ = [
    "tdlrt_augment_multi",
    "parallel_augment_multi",
    "decompose_multi",
    "finish_multi",
]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ------------------------------------------------------------------ stacked helpers
def _stack(tensors: Sequence[Any]) -> Any:
    return tl.stack(list(tensors), axis=0)


def _mt(matrices: Any) -> Any:
    """Transpose the last two axes of a stack of matrices."""
    return tl.moveaxis(matrices, -1, -2)


def _unfold(stack: Any, mode: int) -> Any:
    """``unfold(X_b, mode)`` for every ``b``: shape ``(B, n_mode, prod others)``."""
    moved = tl.moveaxis(stack, mode + 1, 1)
    shape = tl.shape(moved)
    return tl.reshape(moved, (shape[0], shape[1], -1))


def _fold(matrices: Any, mode: int, shape: Sequence[int]) -> Any:
    """Inverse of :func:`_unfold` (``shape`` without the batch axis)."""
    full = [shape[mode]] + [s for i, s in enumerate(shape) if i != mode]
    folded = tl.reshape(matrices, (tl.shape(matrices)[0], *full))
    return tl.moveaxis(folded, 1, mode + 1)


def _mode_dot(stack: Any, matrices: Any, mode: int, transpose: bool = False) -> Any:
    """``X_b ×_mode M_b`` (``M_b^T`` if ``transpose``) for every ``b``."""
    order = tl.ndim(stack) - 1
    letters = _LETTERS[1 : order + 1]
    out = letters[:mode] + "z" + letters[mode + 1 :]
    matrix = f"a{letters[mode]}z" if transpose else f"az{letters[mode]}"
    return tl.einsum(f"a{letters},{matrix}->a{out}", stack, matrices)


def _multi_mode_dot(stack: Any, matrices: Sequence[Any]) -> Any:
    for mode, matrix in enumerate(matrices):
        stack = _mode_dot(stack, matrix, mode)
    return stack


def _thin_qr(stack: Any) -> tuple[Any, Any]:
    """:func:`~tuckerflow.linalg.thin_qr` of every matrix of a stack (diag R >= 0)."""
    q, r = tl.qr(stack)
    size = tl.shape(r)[-2]
    index = tl.arange(size)
    diagonal = r[:, index, index]
    ones = tl.ones(tl.shape(diagonal), **plain_context(stack))
    signs = tl.where(diagonal < 0, -ones, ones)
    return q * signs[:, None, :], r * signs[:, :, None]


def _fix_signs(vectors: Any) -> Any:
    """:func:`~tuckerflow.linalg.fix_column_signs` of every matrix of a stack."""
    rows = tl.shape(vectors)[1]
    pivot_rows = tl.argmax(tl.abs(vectors), axis=1)  # (B, k)
    positions = tl.reshape(tl.arange(rows), (1, rows, 1))
    chosen = positions == tl.reshape(pivot_rows, (tl.shape(pivot_rows)[0], 1, -1))
    pivots = tl.sum(tl.where(chosen, vectors, vectors * 0), axis=1)
    ones = tl.ones(tl.shape(pivots), **plain_context(vectors))
    return vectors * tl.reshape(
        tl.where(pivots < 0, -ones, ones),
        (tl.shape(vectors)[0], 1, tl.shape(vectors)[2]),
    )


def _left_singular(stack: Any) -> tuple[Any, Any]:
    """Left singular vectors (sign-fixed) and values of every matrix of a stack.

    One batched SVD; if the backend's driver fails on the stack (LAPACK's rare
    non-convergence), every matrix goes through the guarded
    :func:`~tuckerflow.linalg.thin_svd` with its fallbacks.
    """
    try:
        left, values, _ = tl.svd(stack, full_matrices=False)
    except Exception:  # non-convergence: backend-specific classes
        parts = [thin_svd(stack[b]) for b in range(tl.shape(stack)[0])]
        left = _stack([p[0] for p in parts])
        values = _stack([p[1] for p in parts])
    return _fix_signs(left), values


# ------------------------------------------------------------------ state stacking
def _state_key(state: OptimizerState | None) -> Any:
    if state is None:
        return None
    if isinstance(state, Momentum):
        return ("momentum", state.beta, state.nesterov)
    if isinstance(state, Adam):
        return ("adam", state.beta1, state.beta2, state.eps, state.count)
    return ("other", id(state))


def _stack_states(states: Sequence[OptimizerState]) -> OptimizerState:
    first = states[0]
    fields = {}
    for name, value in first._buffers().items():
        if name.startswith("core"):
            fields[name] = _stack([getattr(s, name) for s in states])
        else:
            fields[name] = tuple(
                _stack([getattr(s, name)[mode] for s in states])
                for mode in range(len(value))
            )
    return dataclasses.replace(first, **fields)


def _unstack_state(state: OptimizerState, index: int) -> OptimizerState:
    fields = {}
    for name, value in state._buffers().items():
        if name.startswith("core"):
            fields[name] = value[index]
        else:
            fields[name] = tuple(buffer[index] for buffer in value)
    return dataclasses.replace(state, **fields)


def _lift_state(state: OptimizerState, embeddings: Sequence[Any]) -> OptimizerState:
    """``state.lift`` on stacked buffers (first moments linearly, second squared)."""
    fields = {}
    for name, value in state._buffers().items():
        if name.startswith("core"):
            squared = name == "core_v"
            matrices = [e * e for e in embeddings] if squared else embeddings
            fields[name] = _multi_mode_dot(value, matrices)
    return dataclasses.replace(state, **fields)


# ------------------------------------------------------------------ the step
def _groups(cores, factors_list, states, extra=()):
    groups: dict[Any, list[int]] = {}
    for index, (core, factors) in enumerate(zip(cores, factors_list, strict=True)):
        key = (
            tuple(tl.shape(core)),
            tuple(tuple(tl.shape(f)) for f in factors),
            str(core.dtype),
            _state_key(None if states is None else states[index]),
            *(e[index] for e in extra),
        )
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def _partials(grad: Any, factors: Sequence[Any]) -> list[Any]:
    """``G ×_{j != i} U_j^T`` for every mode (stacked), by divide and conquer."""
    order = len(factors)
    results: dict[int, Any] = {}

    def recurse(partial, subset):
        if len(subset) == 1:
            results[subset[0]] = partial
            return
        half = len(subset) // 2
        left, right = subset[:half], subset[half:]
        reduced = partial
        for m in right:
            reduced = _mode_dot(reduced, factors[m], m, transpose=True)
        recurse(reduced, left)
        reduced = partial
        for m in left:
            reduced = _mode_dot(reduced, factors[m], m, transpose=True)
        recurse(reduced, right)

    recurse(grad, list(range(order)))
    return [results[m] for m in range(order)]


def _new_blocks(directions, bases, factors, embeddings, qs, ranks):
    """Stacked :func:`~tuckerflow.integrators._blocks.single_new_blocks`."""
    total = None
    order = len(factors)
    for mode, direction in enumerate(directions):
        extra = tl.shape(bases[mode])[2] - ranks[mode]
        if direction is None or extra == 0:
            continue
        new = bases[mode][:, :, ranks[mode] :]
        block = tl.matmul(tl.matmul(_mt(new), direction), _mt(qs[mode]))
        shape = list(ranks)
        shape[mode] = extra
        folded = _fold(block, mode, shape)
        rhat = tl.shape(bases[mode])[2]
        eye = tl.eye(rhat, **plain_context(direction))[:, ranks[mode] :]
        selector = tl.stack([eye] * tl.shape(direction)[0], axis=0)
        placement = [embeddings[j] if j != mode else selector for j in range(order)]
        placed = _multi_mode_dot(folded, placement)
        total = placed if total is None else total + placed
    return total


def _augment_group(cores, factors_list, grads, lr, states, parallel):
    """Steps 1-5 (TDLRT) or the parallel BUG update, stacked, for one group."""
    order = len(factors_list[0])
    core = _stack(cores)
    factors = [_stack([f[mode] for f in factors_list]) for mode in range(order)]
    grad = _stack(grads)
    ranks = list(tl.shape(core)[1:])
    square = [tl.shape(f)[1] == tl.shape(f)[2] for f in factors]
    state = None
    if states is not None:
        state = _stack_states([s.begin_step() for s in states])

    qs = [
        None if square[mode] else _thin_qr(_mt(_unfold(core, mode)))[0]
        for mode in range(order)
    ]
    partials = _partials(grad, factors)
    k_grads = [
        None if qs[mode] is None else tl.matmul(_unfold(partials[mode], mode), qs[mode])
        for mode in range(order)
    ]
    core_grad = _mode_dot(partials[0], factors[0], 0, transpose=True)

    if parallel:
        direction = core_grad
        if state is not None:
            direction, state = state.core_direction(core_grad)
        updated = core - lr * direction

    memory = None if state is None or parallel else state.basis_memory()
    bases, embeddings, new_directions = [], [], []
    for mode in range(order):
        factor = factors[mode]
        if square[mode]:
            bases.append(factor)
            embeddings.append(tl.matmul(_mt(factor), factor))
            new_directions.append(None)
            continue
        k_direction = k_grads[mode]
        if state is not None:
            k_direction, state = state.basis_direction(mode, k_grads[mode])
        basis = _thin_qr(tl.concatenate([factor, k_direction], axis=2))[0]
        bases.append(basis)
        embeddings.append(tl.matmul(_mt(basis), factor))
        new_directions.append(-lr * k_direction)

    if parallel:
        augmented = _multi_mode_dot(updated, embeddings)
        blocks = _new_blocks(new_directions, bases, factors, embeddings, qs, ranks)
        if blocks is not None:
            augmented = augmented + blocks
        if state is not None:
            state = _lift_state(state, embeddings)
    else:
        lifted = _multi_mode_dot(core, embeddings)
        if state is not None:
            state = _lift_state(state, embeddings)
            if memory is not None:
                seeded = _new_blocks(memory, bases, factors, embeddings, qs, ranks)
                if seeded is not None:
                    state = state.with_new_directions(seeded)
        galerkin = grad
        for mode in range(order):
            galerkin = _mode_dot(galerkin, bases[mode], mode, transpose=True)
        direction = galerkin
        if state is not None:
            direction, state = state.core_direction(galerkin)
        augmented = lifted - lr * direction

    steps = []
    for b in range(len(cores)):
        steps.append(
            AugmentedStep(
                augmented[b],
                [
                    basis[b] if not square[m] else factors_list[b][m]
                    for m, basis in enumerate(bases)
                ],
                None if state is None else _unstack_state(state, b),
                list(factors_list[b]),
                None if state is None else [None if q is None else q[b] for q in qs],
                old_core=cores[b],
            )
        )
    return steps


def _augment_multi(cores, factors_list, grads, lr, states, parallel):
    lrs = list(lr) if isinstance(lr, Sequence) else [lr] * len(cores)
    steps: list[Any] = [None] * len(cores)
    for members in _groups(cores, factors_list, states, extra=(lrs,)):
        group_states = None if states is None else [states[i] for i in members]
        group = _augment_group(
            [cores[i] for i in members],
            [list(factors_list[i]) for i in members],
            [grads[i] for i in members],
            lrs[members[0]],
            group_states,
            parallel,
        )
        for index, step in zip(members, group, strict=True):
            steps[index] = step
    return steps


def tdlrt_augment_multi(
    cores: Sequence[Any],
    factors_list: Sequence[Sequence[Any]],
    grads: Sequence[Any],
    lr: float | Sequence[float],
    states: Sequence[OptimizerState] | None = None,
) -> list[AugmentedStep]:
    """Steps 1-5 of the TDLRT step [1]_ for many Tucker tensors at once.

    What ``[tdlrt_augment_unchecked(c, f, g, lr, state=s) for ...]`` returns, computed
    with one batched call per group of tensors of equal shapes (core, factors,
    optimizer state and step size): the QRs of the core unfoldings, the K-steps, the
    QRs of the augmented bases, the lift and the Galerkin step. Full-rank modes take
    no K-step and no QR. Nothing is validated.

    Parameters
    ----------
    cores : sequence of tensors of shape (r_1, ..., r_d)
        Cores ``C`` (each tensor may have its own order and shapes).
    factors_list : sequence of sequences of tensors of shape (n_i, r_i)
        Factors ``U_i`` of each tensor, orthonormal columns.
    grads : sequence of tensors of shape (n_1, ..., n_d)
        Dense Euclidean gradient of each tensor, finite (add weight decay
        ``wd * W`` here).
    lr : float or sequence of float
        Step size ``h > 0``, one for all or one per tensor.
    states : sequence of Momentum or Adam, optional
        Optimizer state of each tensor (all or none).

    Returns
    -------
    list of AugmentedStep
        One per tensor, in order; truncate with :func:`finish_multi` (or each with
        :meth:`AugmentedStep.finish`).

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """
    return _augment_multi(cores, factors_list, grads, lr, states, parallel=False)


def parallel_augment_multi(
    cores: Sequence[Any],
    factors_list: Sequence[Sequence[Any]],
    grads: Sequence[Any],
    lr: float | Sequence[float],
    states: Sequence[OptimizerState] | None = None,
) -> list[AugmentedStep]:
    """The parallel BUG update [1]_ up to its truncation, for many tensors at once.

    What ``[parallel_augment_unchecked(c, f, g, lr, state=s) for ...]`` returns,
    batched per group of equal shapes as in :func:`tdlrt_augment_multi`.

    Parameters
    ----------
    cores : sequence of tensors of shape (r_1, ..., r_d)
        Cores ``C``.
    factors_list : sequence of sequences of tensors of shape (n_i, r_i)
        Factors ``U_i`` of each tensor, orthonormal columns.
    grads : sequence of tensors of shape (n_1, ..., n_d)
        Dense Euclidean gradient of each tensor, finite.
    lr : float or sequence of float
        Step size ``h > 0``, one for all or one per tensor.
    states : sequence of Momentum or Adam, optional
        Optimizer state of each tensor (all or none).

    Returns
    -------
    list of AugmentedStep
        One per tensor, in order.

    References
    ----------
    .. [1] G. Ceruti, J. Kusch, C. Lubich, "A parallel rank-adaptive integrator for
       dynamical low-rank approximation", SIAM J. Sci. Comput. 46(3), 2024.
    """
    return _augment_multi(cores, factors_list, grads, lr, states, parallel=True)


def decompose_multi(
    steps: Sequence[AugmentedStep], bounds: Sequence[dict[str, Any]]
) -> None:
    """Batched SVDs of the augmented cores, cached in each step.

    The core unfoldings of steps with equal augmented shapes and pinned modes are
    factorized by one batched SVD per mode. Each step then holds the decomposition
    that :meth:`AugmentedStep.decompose`, :meth:`AugmentedStep.select` and
    :meth:`AugmentedStep.finish` use when called with the same ``min_rank`` and
    ``max_rank``, so ranks can be chosen (jointly, for a budget) and each step
    truncated without another SVD.

    Parameters
    ----------
    steps : sequence of AugmentedStep
        From :func:`tdlrt_augment_multi` or :func:`parallel_augment_multi`.
    bounds : sequence of dict
        ``min_rank`` and ``max_rank`` of each step (other keys are ignored), as later
        passed to ``select`` and ``finish``.

    Raises
    ------
    ValueError
        If ``steps`` and ``bounds`` differ in length.
    """
    if len(steps) != len(bounds):
        raise ValueError(f"{len(steps)} steps but {len(bounds)} bounds")
    groups: dict[Any, list[int]] = {}
    for index, (step, rule) in enumerate(zip(steps, bounds)):
        dims = tuple(tl.shape(step.core))
        pinned = tuple(
            pinned_modes(
                dims,
                step.shape(),
                rank=None,  # as AugmentedStep.decompose
                min_rank=rule.get("min_rank", 1),
                max_rank=rule.get("max_rank"),
            )
        )
        groups.setdefault((dims, pinned, str(step.core.dtype)), []).append(index)
    for (dims, pinned, _), members in groups.items():
        stack = _stack([steps[i].core for i in members])
        order = len(dims)
        bases, spectra = [None] * order, [None] * order
        if order == 2 and not any(pinned):
            left, values, right_t = tl.svd(stack, full_matrices=False)
            bases = [_fix_signs(left), _fix_signs(_mt(right_t))]
            spectra = [values, values]
        else:
            for mode in range(order):
                if not pinned[mode]:
                    bases[mode], spectra[mode] = _left_singular(_unfold(stack, mode))
        squares = tl.reshape(stack * stack, (len(members), -1))
        norms = tl.to_numpy(tl.sqrt(tl.sum(squares, axis=1)))
        for position, index in enumerate(members):
            rule = bounds[index]
            steps[index]._decomposition = CoreDecomposition(
                [None if b is None else b[position] for b in bases],
                [None if s is None else s[position] for s in spectra],
                float(norms[position]),
            )
            steps[index]._decomposed_for = (
                rule.get("min_rank", 1),
                rule.get("max_rank"),
            )


def finish_multi(
    steps: Sequence[AugmentedStep], rules: Sequence[dict[str, Any]]
) -> list[Any]:
    """Truncate many augmented steps; the SVDs of their cores batched.

    :func:`decompose_multi`, then :meth:`AugmentedStep.finish` of each step with its
    rule (the per-tensor truncation itself is not batched yet).

    Parameters
    ----------
    steps : sequence of AugmentedStep
        From :func:`tdlrt_augment_multi` or :func:`parallel_augment_multi`.
    rules : sequence of dict
        Keyword arguments of :meth:`AugmentedStep.finish` for each step
        (``rank``, ``tol``, ``relative``, ``min_rank``, ``max_rank``, ``budget``).

    Returns
    -------
    list
        What each :meth:`AugmentedStep.finish` returns: a TuckerTensor, or
        ``(TuckerTensor, state)`` for a step with optimizer state.

    Raises
    ------
    ValueError
        If ``steps`` and ``rules`` differ in length.
    """
    if len(steps) != len(rules):
        raise ValueError(f"{len(steps)} steps but {len(rules)} rules")
    decompose_multi(steps, rules)
    return [step.finish(**rule) for step, rule in zip(steps, rules)]
