"""Multi-tensor TDLRT: one update of many Tucker tensors with batched calls.

The analogue of ``torch.optim``'s ``_multi_tensor_*`` (foreach) paths: the tensors of a
step (the layers of a network) are grouped by their shapes (core, factors, optimizer
state), each group is stacked along a new leading axis, and every QR, SVD and
contraction of the step runs once per group on the stacks (``torch.linalg``,
``numpy.linalg`` and ``cupy.linalg`` factorize stacks of matrices; TensorLy passes them
through). The mathematics is that of :func:`~tuckerflow.integrators.tdlrt_step`
(docs/concepts.rst, "The TDLRT step"), which stays the readable reference; these
functions give the same iterates up to rounding.

The truncation reads the device once: :func:`decompose_multi` copies every singular
value and core norm the rank rules need (and any values of the caller, e.g. a
finiteness check) to the host in one transfer (:func:`to_host`); the ranks are
decided there (:mod:`tuckerflow.ranks` works on NumPy spectra), and
:func:`truncate_multi` truncates on the device, indexed by those Python ints.

Nothing is validated here (as in the optimizer's unchecked path): points orthonormal,
gradients finite, rules checked by the caller. Weight decay is the caller's: pass
``G + wd * W`` as the gradient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ..backend import plain_context
from ..hosvd import CoreDecomposition, pinned_modes
from ..linalg import thin_svd
from ..ranks import RankRule, as_rank_rule
from ._blocks import AugmentedStep
from .state import OptimizerState

__all__ = [
    "tdlrt_augment_multi",
    "parallel_augment_multi",
    "decompose_multi",
    "truncate_multi",
    "finish_multi",
    "to_host",
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
    size, width = tl.shape(r)[-2:]
    # diag(R) through a mask built on R's device (an index tensor would be built on
    # the host and copied over at every call)
    diagonal = tl.sum(r * tl.eye(size, width, **plain_context(r)), axis=-1)
    ones = tl.ones(tl.shape(diagonal), **plain_context(stack))
    signs = tl.where(diagonal < 0, -ones, ones)
    return q * signs[:, None, :], r * signs[:, :, None]


def _fix_signs(vectors: Any) -> Any:
    """:func:`~tuckerflow.linalg.fix_column_signs` of every matrix of a stack."""
    rows = tl.shape(vectors)[1]
    pivot_rows = tl.argmax(tl.abs(vectors), axis=1)  # (B, k)
    # one-hot rows of the pivots, on the device of the vectors: (B, k, rows)
    chosen = tl.eye(rows, **plain_context(vectors))[pivot_rows]
    pivots = tl.sum(chosen * _mt(vectors), axis=2)
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
def _batchable(state: OptimizerState) -> bool:
    """Whether the state's transport is the base class's (from its declared
    buffers), which the batched steps apply to stacked buffers."""
    cls = type(state)
    return all(
        getattr(cls, method) is getattr(OptimizerState, method)
        for method in ("lift", "transform_core", "transform_bases")
    )


def _state_key(state: OptimizerState | None) -> Any:
    """States of one class with equal hyper-parameters and counters stack."""
    if state is None:
        return None
    if not _batchable(state):
        return ("other", id(state))
    key = (type(state), state._hyper())
    try:
        hash(key)
    except TypeError:  # unhashable hyper-parameters: not grouped
        return ("other", id(state))
    return key


def _kinds(state: OptimizerState) -> dict[str, tuple[str, bool]]:
    """``name -> (kind, second_moment)`` of the state's declared buffers."""
    return {name: (kind, squared) for name, kind, squared in state._buffer_fields()}


def _stack_states(states: Sequence[OptimizerState]) -> OptimizerState:
    first = states[0]
    kinds = _kinds(first)
    fields = {}
    for name, value in first._buffers().items():
        if kinds[name][0] == "core":
            fields[name] = _stack([getattr(s, name) for s in states])
        else:
            fields[name] = tuple(
                _stack([getattr(s, name)[mode] for s in states])
                for mode in range(len(value))
            )
    return dataclasses.replace(first, **fields)


def _unstack_state(state: OptimizerState, index: int) -> OptimizerState:
    kinds = _kinds(state)
    fields = {}
    for name, value in state._buffers().items():
        if kinds[name][0] == "core":
            fields[name] = value[index]
        else:
            fields[name] = tuple(buffer[index] for buffer in value)
    return dataclasses.replace(state, **fields)


def _transform_core_state(
    state: OptimizerState, matrices: Sequence[Any | None]
) -> OptimizerState:
    """``state.transform_core`` on stacked buffers; a None matrix is the identity."""
    kinds = _kinds(state)
    fields = {}
    for name, value in state._buffers().items():
        kind, second_moment = kinds[name]
        if kind == "core":
            for mode, matrix in enumerate(matrices):
                if matrix is None:
                    continue
                if second_moment:
                    matrix = matrix * matrix
                value = _mode_dot(value, matrix, mode)
            fields[name] = value
    return dataclasses.replace(state, **fields)


def _transform_bases_state(
    state: OptimizerState, matrices: Sequence[Any]
) -> OptimizerState:
    """``state.transform_bases`` on stacked buffers (``b_i R_i``, squared for second
    moments)."""
    kinds = _kinds(state)
    fields = {}
    for name, value in state._buffers().items():
        kind, second_moment = kinds[name]
        if kind == "bases":
            fields[name] = tuple(
                tl.matmul(buffer, matrix * matrix if second_moment else matrix)
                for buffer, matrix in zip(value, matrices, strict=True)
            )
    return dataclasses.replace(state, **fields)


def _lift_state(state: OptimizerState, embeddings: Sequence[Any]) -> OptimizerState:
    """``state.lift`` on stacked buffers (first moments linearly, second squared)."""
    return _transform_core_state(state, embeddings)


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
    states : sequence of OptimizerState, optional
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
    states : sequence of OptimizerState, optional
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


def to_host(tensors: Sequence[Any]) -> list[np.ndarray]:
    """Copy many tensors to the host in one transfer.

    Every tensor is flattened, all are joined into one vector on their device (in
    their common dtype), and that vector alone is copied (``tl.to_numpy``): one
    device-to-host transfer (one synchronization on a GPU) however many tensors,
    instead of one each. The copies are widened to float64 on the host (exact for
    float32, float16 and booleans, which become 0 and 1).

    Parameters
    ----------
    tensors : sequence of tensors
        Of the active backend, on one device, any shapes, of dtypes NumPy holds
        (bool, integer, float16/32/64; not bfloat16).

    Returns
    -------
    list of numpy.ndarray
        Float64 copies, in order, with the tensors' shapes.
    """
    if not tensors:
        return []
    shapes = [tuple(tl.shape(t)) for t in tensors]
    # joined in their common dtype (the backend promotes), widened on the host
    flat = tl.concatenate([tl.reshape(t, (-1,)) for t in tensors], axis=0)
    host = np.asarray(tl.to_numpy(flat), dtype=np.float64)
    out, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(host[offset : offset + size].reshape(shape))
        offset += size
    return out


def decompose_multi(
    steps: Sequence[AugmentedStep],
    bounds: Sequence[dict[str, Any]],
    extra: Sequence[Any] = (),
    valid: Any = None,
) -> list[np.ndarray]:
    """Batched SVDs of the augmented cores, cached in each step; one host transfer.

    The core unfoldings of steps with equal augmented shapes and pinned modes are
    factorized by one batched SVD per mode. The singular values of every step and
    mode and the norms of the cores (all that a rank rule reads), together with the
    tensors in ``extra``, are copied to the host in one transfer (:func:`to_host`).
    Each step then holds the decomposition (singular vectors on the device, singular
    values as NumPy arrays, the norm as a float) that :meth:`AugmentedStep.select`,
    :meth:`AugmentedStep.finish` and :func:`truncate_multi` use when called with the
    same ``min_rank`` and ``max_rank``: ranks can be chosen (jointly, for a budget)
    and the steps truncated without another SVD or transfer.

    Parameters
    ----------
    steps : sequence of AugmentedStep
        From :func:`tdlrt_augment_multi` or :func:`parallel_augment_multi`.
    bounds : sequence of dict
        ``min_rank`` and ``max_rank`` of each step (other keys are ignored), as later
        passed to ``select`` and ``finish``.
    extra : sequence of tensors, optional
        More device values for the same transfer (a caller's finiteness check, say).
    valid : 0-d boolean tensor, optional
        Where false, the cores are factorized as zeros: a caller that checks its
        gradients in the same transfer, and drops the steps if one is not finite,
        never hands non-finite values to the SVD (whose failure would cost
        another transfer, or an error). No effect on the results when true.

    Returns
    -------
    list of numpy.ndarray
        Float64 host copies of ``extra``, in order.

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
    decomposed, device = [], []
    for (dims, pinned, _), members in groups.items():
        stack = _stack([steps[i].core for i in members])
        if valid is not None:
            stack = tl.where(valid, stack, tl.zeros_like(stack))
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
        norms = tl.sqrt(tl.sum(squares, axis=1))
        decomposed.append((members, bases, spectra))
        device += [norms, *(s for s in spectra if s is not None)]
    host = to_host([*device, *extra])
    position = 0
    for members, bases, spectra in decomposed:
        norms = host[position]
        position += 1
        host_spectra = []
        for values in spectra:
            host_spectra.append(None if values is None else host[position])
            position += values is not None
        for row, index in enumerate(members):
            rule = bounds[index]
            steps[index]._decomposition = CoreDecomposition(
                [None if b is None else b[row] for b in bases],
                [None if s is None else s[row] for s in host_spectra],
                float(norms[row]),
            )
            steps[index]._decomposed_for = (
                rule.get("min_rank", 1),
                rule.get("max_rank"),
            )
    return host[position:]


def truncate_multi(
    steps: Sequence[AugmentedStep],
    ranks: Sequence[Sequence[int]],
    bounds: Sequence[dict[str, Any]],
) -> list[Any]:
    """Truncate many decomposed steps to given ranks, batched; no host transfer.

    What ``[step.finish(rank=r, **b) for ...]`` returns, with every operation of the
    truncation run once per group of steps of equal shapes, new ranks and optimizer
    state: the core ``Chat ×_i P_i^T`` (``P_i`` the kept singular vectors), the
    factors ``Uhat_i P_i`` re-orthonormalized by a thin QR (``= Q_i R_i``, ``R_i``
    absorbed into the core, so orthonormality cannot drift over many steps), and the
    transport of the optimizer state into the new coordinates (core buffers by
    ``T_i = R_i P_i^T``, K-buffers by ``V_i^T V_i'``). The ranks are Python ints, so
    nothing is read back from the device. Steps whose state class overrides the
    transport of :class:`~tuckerflow.integrators.state.OptimizerState` are finished
    one by one.

    Parameters
    ----------
    steps : sequence of AugmentedStep
        Decomposed for their bounds (:func:`decompose_multi`; otherwise each step
        decomposes itself).
    ranks : sequence of sequences of int
        The new rank of each step, as chosen from its spectra (e.g. by
        :meth:`AugmentedStep.select`), within its bounds.
    bounds : sequence of dict
        ``min_rank`` and ``max_rank`` of each step, as given to
        :func:`decompose_multi`.

    Returns
    -------
    list of (TuckerTensor, OptimizerState or None)
        One ``(tucker, state)`` pair per step, ``state`` None for a step without
        optimizer state.

    Raises
    ------
    ValueError
        If the sequences differ in length, or a rank asks to cut a mode that the
        bounds pin.
    """
    if not len(steps) == len(ranks) == len(bounds):
        raise ValueError(
            f"{len(steps)} steps, {len(ranks)} ranks and {len(bounds)} bounds"
        )
    results: list[Any] = [None] * len(steps)
    groups: dict[Any, list[int]] = {}
    for index, (step, rank, rule) in enumerate(zip(steps, ranks, bounds)):
        rank = tuple(int(r) for r in rank)
        decomposition = step.decompose(rule.get("min_rank", 1), rule.get("max_rank"))
        if step.state is not None and not _batchable(step.state):
            results[index] = step.finish(
                rank=rank,
                min_rank=rule.get("min_rank", 1),
                max_rank=rule.get("max_rank"),
            )
            continue
        key = (
            tuple(tl.shape(step.core)),
            tuple(tuple(tl.shape(b)) for b in step.bases),
            tuple(tuple(tl.shape(f)) for f in step.old_factors),
            tuple(b is None for b in decomposition.bases),
            rank,
            str(step.core.dtype),
            _state_key(step.state),
            None if step.old_q is None else tuple(q is None for q in step.old_q),
        )
        groups.setdefault(key, []).append(index)
    for key, members in groups.items():
        pinned, rank = key[3], key[4]
        group = _truncate_group([steps[i] for i in members], rank, pinned)
        for index, result in zip(members, group, strict=True):
            results[index] = result
    return results


def _truncate_group(steps, rank, pinned):
    """:func:`~tuckerflow.integrators._blocks.truncate_step` of one group, stacked."""
    order = len(rank)
    core = _stack([s.core for s in steps])
    dims = tl.shape(core)[1:]
    new_factors: list[Any] = [None] * order  # stacked; None: pinned, kept as is
    changes: list[Any] = [None] * order  # None: the identity (pinned mode)
    for mode in range(order):
        if pinned[mode]:
            if rank[mode] != dims[mode]:
                raise ValueError(
                    f"mode {mode} was decomposed as pinned but is asked for rank "
                    f"{rank[mode]}"
                )
            continue
        kept = _stack([s._decomposition.bases[mode] for s in steps])
        kept = kept[:, :, : rank[mode]]
        core = _mode_dot(core, kept, mode, transpose=True)
        # as truncate_core: one more thin QR of Uhat_i P_i (P8, orthonormality
        # cannot accumulate errors over the steps)
        q, upper = _thin_qr(tl.matmul(_stack([s.bases[mode] for s in steps]), kept))
        new_factors[mode] = q
        core = _mode_dot(core, upper, mode)
        changes[mode] = tl.matmul(upper, _mt(kept))
    state = None
    if steps[0].state is not None:
        state = _transport_state(steps, core, new_factors, changes, pinned)
    out = []
    for b, step in enumerate(steps):
        factors = [
            step.bases[m] if new_factors[m] is None else new_factors[m][b]
            for m in range(order)
        ]
        tucker = TuckerTensor((core[b], factors))
        out.append((tucker, None if state is None else _unstack_state(state, b)))
    return out


def _transport_state(steps, core, new_factors, changes, pinned):
    """The state of a truncated group in its new coordinates (stacked
    :func:`~tuckerflow.integrators._blocks.truncate_step`)."""
    order = len(changes)
    state = _transform_core_state(_stack_states([s.state for s in steps]), changes)
    old_factors = [_stack([s.old_factors[m] for s in steps]) for m in range(order)]
    factors = [
        _stack([s.bases[m] for s in steps]) if f is None else f
        for m, f in enumerate(new_factors)
    ]
    # a mode at full rank before the step and pinned there takes no K-step: its
    # K-state is reset to zeros and no QR is computed for it (as truncate_step)
    idle = [
        pinned[m] and tl.shape(old_factors[m])[1] == tl.shape(old_factors[m])[2]
        for m in range(order)
    ]
    new_q = [
        None if idle[m] else _thin_qr(_mt(_unfold(core, m)))[0] for m in range(order)
    ]
    old_core = None
    old_q = []
    for mode in range(order):
        if idle[mode]:
            old_q.append(None)
        elif steps[0].old_q[mode] is not None:
            old_q.append(_stack([s.old_q[mode] for s in steps]))
        else:
            if old_core is None:
                old_core = _stack([s.old_core for s in steps])
            old_q.append(_thin_qr(_mt(_unfold(old_core, mode)))[0])
    k_changes = _k_coordinate_change(old_q, old_factors, new_q, factors)
    return _transform_bases_state(state, k_changes)


def _k_coordinate_change(old_q, old_factors, new_q, new_factors):
    """Stacked :func:`~tuckerflow.integrators.state.k_coordinate_change`."""
    order = len(old_factors)
    count = tl.shape(old_factors[0])[0]
    overlaps = [tl.matmul(_mt(u), u_new) for u, u_new in zip(old_factors, new_factors)]
    old_ranks = [tl.shape(u)[2] for u in old_factors]
    new_ranks = [tl.shape(u)[2] for u in new_factors]
    changes = []
    for mode in range(order):
        others = [j for j in range(order) if j != mode]
        q_new = new_q[mode]
        if q_new is None:
            shape = (
                count,
                min(old_ranks[mode], math.prod(old_ranks) // old_ranks[mode]),
                min(new_ranks[mode], math.prod(new_ranks) // new_ranks[mode]),
            )
            changes.append(tl.zeros(shape, **plain_context(old_factors[mode])))
            continue
        columns = tl.shape(q_new)[2]
        folded = tl.reshape(q_new, (count, *(new_ranks[j] for j in others), columns))
        for position, j in enumerate(others):
            folded = _mode_dot(folded, overlaps[j], position)
        rows = math.prod(old_ranks[j] for j in others)
        mapped = tl.reshape(folded, (count, rows, columns))
        changes.append(tl.matmul(_mt(old_q[mode]), mapped))
    return changes


def finish_multi(
    steps: Sequence[AugmentedStep], rules: Sequence[RankRule | dict[str, Any]]
) -> list[Any]:
    """Truncate many augmented steps, batched, with one host transfer.

    :func:`decompose_multi` (batched SVDs; every spectrum and norm copied to the
    host at once), the rank of each step from its rule on the host, then
    :func:`truncate_multi`. The same results as :meth:`AugmentedStep.finish` of each
    step with its rule, up to rounding.

    Parameters
    ----------
    steps : sequence of AugmentedStep
        From :func:`tdlrt_augment_multi` or :func:`parallel_augment_multi`.
    rules : sequence of RankRule or dict
        The rank rule of each step: a :class:`~tuckerflow.RankRule`, or the
        keyword arguments of :meth:`AugmentedStep.finish` (``rank``, ``tol``,
        ``relative``, ``min_rank``, ``max_rank``, ``budget``).

    Returns
    -------
    list of (TuckerTensor, OptimizerState or None)
        What each :meth:`AugmentedStep.finish` returns: one ``(tucker, state)`` pair
        per step, ``state`` None for a step without optimizer state.

    Raises
    ------
    ValueError
        If ``steps`` and ``rules`` differ in length, or a rule is invalid.
    """
    if len(steps) != len(rules):
        raise ValueError(f"{len(steps)} steps but {len(rules)} rules")
    checked = [
        rule if isinstance(rule, RankRule) else as_rank_rule(**rule) for rule in rules
    ]
    bounds = [{"min_rank": r.min_rank, "max_rank": r.max_rank} for r in checked]
    decompose_multi(steps, bounds)
    ranks = []
    for step, rule in zip(steps, checked):
        decomposition = step.decompose(rule.min_rank, rule.max_rank)
        ranks.append(
            rule.choose(
                decomposition.spectra,
                tl.shape(step.core),
                step.shape(),
                norm=decomposition.norm,
            )
        )
    return truncate_multi(steps, ranks, bounds)
