"""Pieces shared by the integrators: input checks, the K-step reparametrizations, the
new-direction blocks, and the final truncation that also carries optimizer state into
the new bases. The geometry they build on (:func:`~tuckerflow.tangent.reparametrize`,
:func:`~tuckerflow.retraction.augment_bases`, :func:`~tuckerflow.retraction.lift`) is
the core's."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import check_dense, check_positive, check_tucker, tucker_shape
from ..backend import plain_context
from ..hosvd import decompose_core, truncate_core
from ..ranks import RankRule, RankSpec, rule_from_keywords
from ..retraction import lift  # noqa: F401  (moved to the core; old import path)
from ..tangent import reparametrize
from .state import OptimizerState, k_coordinate_change


def refuse_state(state: Any, step: str) -> None:
    """The ``state=`` of a step function that keeps none must be None."""
    if state is not None:
        raise ValueError(
            f"{step} keeps no optimizer state, got state={type(state).__name__}: pass "
            "state=None, or use tdlrt_step or parallel_bug_step, which carry "
            "Momentum/Adam state through rank changes"
        )


def check_step_inputs(
    tucker: Any, grad: Any, lr: Any, state: OptimizerState | None = None
) -> tuple[Any, list[Any], float]:
    """Validate a step's point, gradient, learning rate and state; raise before work."""
    core, factors = check_tucker(tucker, "tucker")
    lr = check_positive(lr, "lr")
    check_gradient(grad, core, factors, finite=False)
    check_state(state, core, factors)
    return core, factors, lr


def check_state(state: Any, core: Any, factors: Sequence[Any]) -> None:
    """``None``, or a Momentum/Adam state whose buffers fit the point."""
    if state is None:
        return
    if not isinstance(state, OptimizerState):
        raise TypeError(
            "state must be an OptimizerState (tuckerflow.Momentum, tuckerflow.Adam, "
            "or another registered rule), got "
            f"{type(state).__name__}"
        )
    state.check(core, factors)


def check_gradient(
    grad: Any,
    core: Any,
    factors: Sequence[Any],
    name: str = "grad",
    finite: bool = True,
) -> None:
    """The gradient must be a dense tensor of the point's shape and dtype.

    With ``finite=False`` its values are checked later, on the first contraction
    (:meth:`GradientContractions.check_finite`), which costs ``r / n`` of a pass.
    """
    check_dense(grad, name, finite=finite)
    shape = tucker_shape(factors)
    if tuple(tl.shape(grad)) != shape:
        raise ValueError(
            f"{name} has shape {tuple(tl.shape(grad))} but the Tucker tensor has shape "
            f"{shape}: pass the Euclidean gradient of the full tensor"
        )
    if grad.dtype != core.dtype:
        raise TypeError(f"{name} has dtype {grad.dtype} but the point has {core.dtype}")


def check_rule(
    core: Any, factors: Sequence[Any], augmented_dims: Sequence[int], rule: RankRule
) -> RankRule:
    """Validate the truncation rule of a rank-adaptive step (exactly one is needed)."""
    if rule.kind is None:
        raise ValueError(
            "give one of tol (rank-adaptive), rank (fixed rank) or budget (parameter "
            "budget) to decide the ranks after the step"
        )
    return rule.check(
        augmented_dims, tucker_shape(factors), augmented_from=tuple(tl.shape(core))
    )


def is_full_rank(factor: Any) -> bool:
    """Whether a factor is square (``n_i == r_i``): its basis spans the whole mode, so
    the mode takes no K-step and its basis cannot grow."""
    rows, cols = tl.shape(factor)
    return rows == cols


def adaptive_reparametrizations(core: Any, factors: Sequence[Any]) -> list[Any]:
    """:func:`reparametrize` of every mode that takes a K-step; ``None`` for full-rank
    modes (the truncation computes their ``Q`` only if it must move their optimizer
    state)."""
    return [
        None if is_full_rank(factor) else reparametrize(core, mode)
        for mode, factor in enumerate(factors)
    ]


def single_new_blocks(
    directions: Sequence[Any | None],
    bases: Sequence[Any],
    factors: Sequence[Any],
    embeddings: Sequence[Any],
    reparams: Sequence[Any | None],
) -> Any | None:
    """The K-step directions written as a core in the augmented bases.

    ``sum_i`` of the block where only mode i is new, holding
    ``Utilde_i^T X_i Q_i^T`` folded in mode i (``Utilde_i``: the new columns of
    ``Uhat_i``), old bases elsewhere: the tensor ``sum_i fold_i(P_i X_i V_i^T)`` with
    ``P_i`` the projector onto the new directions. ``directions[i]`` of shape
    ``(n_i, k_i)``; None (or a mode without new columns) contributes nothing.
    Returns None when nothing contributes.
    """
    total = None
    ranks = [tl.shape(f)[1] for f in factors]
    for mode, direction in enumerate(directions):
        extra = tl.shape(bases[mode])[1] - ranks[mode]
        if direction is None or extra == 0:
            continue
        block = tl.dot(
            tl.dot(tl.transpose(bases[mode][:, ranks[mode] :]), direction),
            tl.transpose(reparams[mode][0]),
        )
        shape = list(ranks)
        shape[mode] = extra
        folded = tl.fold(block, mode, shape)
        placement = [
            embeddings[j] if j != mode else _selector(bases[mode], ranks[mode])
            for j in range(len(factors))
        ]
        placed = tl.tenalg.multi_mode_dot(folded, placement)
        total = placed if total is None else total + placed
    return total


def _selector(basis: Any, start: int) -> Any:
    """``(rhat, rhat - start)`` matrix embedding coordinates of ``basis[:, start:]``."""
    total = tl.shape(basis)[1]
    return tl.eye(total, **plain_context(basis))[:, start:]


@dataclasses.dataclass
class AugmentedStep:
    """A step up to its truncation: the core ``Chat1`` in the bases ``Uhat``.

    Split from the truncation so that ranks can be decided elsewhere: jointly for many
    tensors (a parameter budget for a whole network) or by one process for all
    (data-parallel training). :meth:`finish` truncates and returns what the step
    function returns: ``(TuckerTensor, OptimizerState or None)``.
    """

    core: Any
    bases: list[Any]
    state: OptimizerState | None
    old_factors: list[Any]
    old_q: list[Any] | None
    _decomposition: Any = None
    _decomposed_for: Any = None
    old_core: Any = None
    """The core before the step: the truncation computes from it the ``Q_i`` that
    ``old_q`` leaves out (None entries: full-rank modes, which take no K-step)."""

    @rule_from_keywords
    def decompose(
        self,
        min_rank: RankSpec = 1,
        max_rank: RankSpec = None,
        *,
        rule: RankRule | None = None,
    ):
        """SVDs of the core unfoldings (modes pinned by the bounds skipped), cached."""
        bounds = _bounds(rule)
        cached = self._decomposed_for
        if (
            self._decomposition is None
            or cached is None
            or _bounds_of(cached) != bounds
        ):
            self._decomposition = decompose_core(self.core, self.bases, bounds)
            self._decomposed_for = (bounds.min_rank, bounds.max_rank)
        return self._decomposition

    def shape(self) -> tuple[int, ...]:
        return tucker_shape(self.bases)

    @rule_from_keywords
    def select(
        self,
        *,
        tol: float | None = None,
        relative: bool = True,
        min_rank: RankSpec = 1,
        max_rank: RankSpec = None,
        budget: int | None = None,
        rule: RankRule | None = None,
    ) -> tuple[int, ...]:
        """The ranks the truncation rule picks (no truncation yet)."""
        decomposition = self.decompose(rule=rule)
        return rule.choose(
            decomposition.spectra,
            tl.shape(self.core),
            self.shape(),
            norm=decomposition.norm,
        )

    @rule_from_keywords
    def finish(
        self,
        *,
        rank: RankSpec = None,
        tol: float | None = None,
        relative: bool = True,
        min_rank: RankSpec = 1,
        max_rank: RankSpec = None,
        budget: int | None = None,
        rule: RankRule | None = None,
    ) -> tuple[TuckerTensor, OptimizerState | None]:
        """Truncate; returns ``(new point, state)``, the state None when the step
        has none."""
        result, state = truncate_step(
            self.core,
            self.bases,
            rule,
            state=self.state,
            old_factors=self.old_factors,
            old_q=self.old_q,
            decomposition=self.decompose(rule=rule),
            old_core=self.old_core,
        )
        return result, state


def _bounds(rule: RankRule) -> RankRule:
    """Only the bounds of ``rule``: what decides which modes are pinned for an SVD."""
    return RankRule(min_rank=rule.min_rank, max_rank=rule.max_rank)


def _bounds_of(key: tuple[Any, Any]) -> RankRule:
    """The bounds a cached decomposition was made for (``decompose_multi`` stores
    the ``(min_rank, max_rank)`` it was given)."""
    return RankRule(min_rank=key[0], max_rank=key[1])


def truncate_step(
    augmented_core: Any,
    bases: Sequence[Any],
    rule: RankRule,
    *,
    state: OptimizerState | None,
    old_factors: Sequence[Any],
    old_q: Sequence[Any] | None,
    decomposition: Any = None,
    old_core: Any = None,
) -> tuple[TuckerTensor, OptimizerState | None]:
    """Truncate the augmented core; move the optimizer state into the new bases.

    The K-state of a mode at full rank before the step and pinned there by the
    bounds (``min_rank_i = max_rank_i = n_i``: a convolution's kernel modes) is
    never read (such a mode takes no K-step); it is set to zeros of its new shape
    (as it stays when it was zero, its value from :meth:`Momentum.init`), and no QR
    of the old or the new core is computed for it. ``old_q[i]`` may be None for a
    full-rank mode; it is then computed from ``old_core`` when needed.
    """
    result, _, changes = truncate_core(
        augmented_core, bases, rule, decomposition=decomposition
    )
    if state is None:
        return result, None
    state = state.transform_core(changes)
    pinned = _bounds(rule).pinned(tl.shape(augmented_core), tucker_shape(bases))
    idle = [p and is_full_rank(f) for p, f in zip(pinned, old_factors, strict=True)]
    new_q = [
        None if idle[mode] else reparametrize(result.core, mode)[0]
        for mode in range(len(bases))
    ]
    old_q = [
        q if q is not None or idle[mode] else reparametrize(old_core, mode)[0]
        for mode, q in enumerate(old_q)
    ]
    k_changes = k_coordinate_change(old_q, old_factors, new_q, result.factors)
    return result, state.transform_bases(k_changes)
