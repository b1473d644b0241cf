"""What a line search needs from one gradient: the Riemannian gradient, and trial steps.

:func:`prepare` does the passes over the dense gradient once per iteration (the
contractions of :class:`~tuckerflow.contractions.GradientContractions`); every trial
step size of the line search then costs only small factorizations and one objective
evaluation. The trial steps are those of the step functions, to rounding
(``tests/test_linesearch.py`` checks each against its step function).

Tangent vectors are kept in *K-form* at a point ``Y = C ×_i U_i``: with the QR
reparametrization ``unfold(C, i)^T = Q_i S_i^T`` (docs/concepts.rst, "The K-step
reparametrization"),

    xi = dC ×_i U_i + sum_i fold_i(N_i Q_i^T) ×_{j != i} U_j,    U_i^T N_i = 0,

so ``||xi||^2 = ||dC||^2 + sum_i ||N_i||^2`` (the blocks are orthogonal) and nothing is
inverted. For the Riemannian gradient ``N_i = (I - U_i U_i^T) dL/dK_i``; the factored
:class:`~tuckerflow.TangentVector` has ``dU_i = N_i S_i^{-1}`` instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ..backend import plain_context
from ..contractions import GradientContractions
from ..linalg import mode_product, thin_qr
from ..ranks import RankRule, as_rank_rule
from ..retraction import augment_bases, augmented_dims, lift
from ..tangent import project_unchecked, projected_norm, reparametrize
from ._blocks import AugmentedStep, check_rule, check_step_inputs, is_full_rank
from .bug import bug_step, parallel_bug_update
from .growth import Monitor, capped_rule, growth_step, rank_caps
from .rgd import check_rgd_rule, rgd_retract

RULE_KEYS = ("rank", "tol", "relative", "min_rank", "max_rank", "budget", "rule")


def _float(value: Any) -> float:
    return float(tl.to_numpy(value))


def _sum_squares(tensor: Any) -> float:
    return _float(tl.sum(tensor * tensor))


def to_dense(tucker: Any) -> Any:
    """``C ×_i U_i`` as a C-contiguous tensor (any factors).

    ``tl.tucker_tensor.tucker_to_tensor`` returns a strided view whose elementwise
    products with C-ordered data cost several times a contiguous pass (6.9 ms instead
    of 1.1 ms for a masked residual on 64 x 64 x 200); expanding the modes from the
    last to the first with :func:`~tuckerflow.linalg.mode_product` ends with one
    matrix product that writes the result in order, at no extra cost.
    """
    core, factors = tucker[0], tucker[1]
    dense = core
    for mode in reversed(range(len(factors))):
        dense = mode_product(dense, factors[mode], mode)
    return dense


# ---------------------------------------------------------------- K-form tangents


@dataclasses.dataclass
class Frame:
    """A point ``(core, factors)`` with orthonormal factors and its ``Q_i``."""

    core: Any
    factors: list[Any]
    qs: list[Any]

    @classmethod
    def at(cls, core: Any, factors: Sequence[Any]) -> Frame:
        qs = [reparametrize(core, mode)[0] for mode in range(len(factors))]
        return cls(core, list(factors), qs)

    @property
    def rank(self) -> tuple[int, ...]:
        return tuple(tl.shape(self.core))


@dataclasses.dataclass
class KTangent:
    """A tangent vector in K-form, ``(dC, [N_1, ..., N_d])`` (see the module notes)."""

    core: Any
    normals: list[Any]

    def dot(self, other: KTangent) -> float:
        total = tl.sum(self.core * other.core)
        for a, b in zip(self.normals, other.normals, strict=True):
            total = total + tl.sum(a * b)
        return _float(total)

    def sqnorm(self) -> float:
        return self.dot(self)

    def scaled(self, factor: float) -> KTangent:
        return KTangent(self.core * factor, [n * factor for n in self.normals])

    def plus(self, other: KTangent, factor: float = 1.0) -> KTangent:
        """``self + factor * other``."""
        return KTangent(
            self.core + factor * other.core,
            [a + factor * b for a, b in zip(self.normals, other.normals, strict=True)],
        )


def riemannian_gradient(frame: Frame, contractions: GradientContractions) -> KTangent:
    """``P(Y) G`` in K-form from the contractions of ``G`` (no inverse)."""
    normals = []
    for mode, (factor, q) in enumerate(zip(frame.factors, frame.qs, strict=True)):
        k_grad = tl.dot(contractions.unfolded_partial(mode), q)
        normals.append(k_grad - tl.dot(factor, tl.dot(tl.transpose(factor), k_grad)))
    return KTangent(contractions.core_gradient(), normals)


def _eye_columns(size: int, start: int, stop: int, like: Any) -> Any:
    return tl.eye(size, **plain_context(like))[:, start:stop]


def tangent_tucker(frame: Frame, tangent: KTangent) -> tuple[Any, list[Any]]:
    """The tangent vector as an ambient Tucker tensor ``D ×_i [U_i, N_i]``.

    ``D`` holds ``dC`` in the block where every mode is old and ``fold_i(Q_i^T)`` in the
    block where only mode ``i`` is new: ranks ``r_i + k_i``, nothing of full size.
    """
    ranks = frame.rank
    widths = [tl.shape(n)[1] for n in tangent.normals]
    sizes = [r + k for r, k in zip(ranks, widths, strict=True)]
    old = [_eye_columns(s, 0, r, frame.core) for s, r in zip(sizes, ranks, strict=True)]
    core = tl.tenalg.multi_mode_dot(tangent.core, old)
    for mode, q in enumerate(frame.qs):
        shape = list(ranks)
        shape[mode] = widths[mode]
        block = tl.fold(tl.transpose(q), mode, shape)
        placement = list(old)
        placement[mode] = _eye_columns(sizes[mode], ranks[mode], sizes[mode], q)
        core = core + tl.tenalg.multi_mode_dot(block, placement)
    bases = [
        tl.concatenate([u, n], axis=1)
        for u, n in zip(frame.factors, tangent.normals, strict=True)
    ]
    return core, bases


def tucker_inner(a: tuple[Any, Sequence[Any]], b: tuple[Any, Sequence[Any]]) -> float:
    """``<A, B>`` of two Tucker tensors ``(core, factors)`` (any factors)."""
    grams = [tl.dot(tl.transpose(fa), fb) for fa, fb in zip(a[1], b[1], strict=True)]
    return _float(tl.sum(a[0] * tl.tenalg.multi_mode_dot(b[0], grams)))


def project_tucker(frame: Frame, tucker: tuple[Any, Sequence[Any]]) -> KTangent:
    """``P(Y) Z`` in K-form for a Tucker tensor ``Z = D ×_i W_i`` (vector transport).

    ``Z ×_j U_j^T = D ×_j (U_j^T W_j)`` and
    ``unfold(Z ×_{j != i} U_j^T, i) = W_i unfold(D ×_{j != i} U_j^T W_j, i)``: small
    products only, the cost of a few ``n_i x 2 r_i`` matrix products.
    """
    core, bases = tucker
    small = [
        tl.dot(tl.transpose(u), w) for u, w in zip(frame.factors, bases, strict=True)
    ]
    d_core = tl.tenalg.multi_mode_dot(core, small)
    normals = []
    for mode, (u, w, q) in enumerate(zip(frame.factors, bases, frame.qs, strict=True)):
        others = [m for m in range(len(bases)) if m != mode]
        partial = tl.tenalg.multi_mode_dot(
            core, [small[m] for m in others], modes=others
        )
        coefficient = tl.dot(tl.unfold(partial, mode), q)
        normal = tl.dot(w - tl.dot(u, small[mode]), coefficient)
        normals.append(normal)
    return KTangent(d_core, normals)


def difference(
    a: tuple[Any, Sequence[Any]], b: tuple[Any, Sequence[Any]]
) -> tuple[Any, list[Any]]:
    """``A - B`` as a Tucker tensor with orthonormal factors, without cancellation
    beyond the rounding of the entries: ``[Ua, Ub] = Q R`` per mode, then the two
    cores written in ``Q`` are subtracted."""
    bases, left, right = [], [], []
    for fa, fb in zip(a[1], b[1], strict=True):
        q, r = thin_qr(tl.concatenate([fa, fb], axis=1))
        width = tl.shape(fa)[1]
        bases.append(q)
        left.append(r[:, :width])
        right.append(r[:, width:])
    core = tl.tenalg.multi_mode_dot(a[0], left) - tl.tenalg.multi_mode_dot(b[0], right)
    return core, bases


# ---------------------------------------------------------------- prepared steps


@dataclasses.dataclass
class Prepared:
    """One iteration's gradient work: the Riemannian gradient and the trial steps.

    ``trial(step, direction, rule)`` returns the point after a step of size ``step``
    along ``direction`` (None: steepest descent, the method's own step), truncated by
    ``rule`` (None: the caller's rule). ``gradient`` is the Riemannian gradient in
    K-form (None for ``vanilla``, whose gradient lives in the factors), and
    ``grad_sqnorm`` its squared norm (for ``vanilla``: the squared norm of the core
    and factor gradients).
    """

    frame: Frame | None
    gradient: KTangent | None
    grad_sqnorm: float
    trial: Callable[..., TuckerTensor]
    adaptive: bool
    params: list[Any] | None = None  # vanilla: (dL/dC, dL/dU_1, ...)
    growth_sqnorm: float | None = None
    """A rank-growth iteration (:mod:`~tuckerflow.integrators.growth`): the trial
    steps go along ``-Pi G`` in the augmented bases, whose first-order decrease per
    unit step is this ``||Pi G||^2``; the line search restarts (steepest descent)."""

    @property
    def grad_norm(self) -> float:
        return math.sqrt(max(self.grad_sqnorm, 0.0))


def rule_of(options: dict[str, Any]) -> RankRule:
    """The rank rule among a step's options (``rule=`` or the keywords)."""
    return as_rank_rule(**{key: options[key] for key in RULE_KEYS if key in options})


def keep_rank_rule(frame: Frame, rule: RankRule) -> RankRule:
    """A fixed-rank rule: the current ranks (capped by ``max_rank``)."""
    ranks = frame.rank
    high = rule.max_rank
    if high is not None:
        highs = [high] * len(ranks) if isinstance(high, int) else list(high)
        ranks = tuple(min(r, h) for r, h in zip(ranks, highs, strict=True))
    return RankRule(rank=ranks)


def prepare(
    method: str,
    tucker: Any,
    grad: Any,
    options: dict[str, Any],
    second_gradient: Callable[[Any], Any] | None = None,
    growth: Monitor | None = None,
) -> Prepared:
    """The gradient work of one iteration of ``method`` at ``tucker``; with a
    ``growth`` monitor (rank-adaptive tdlrt, parallel_bug, rcg), a growth iteration
    or the method's step at ranks that may only shrink."""
    if method == "vanilla":
        return _prepare_vanilla(tucker, grad)
    core, factors, _ = check_step_inputs(tucker, grad, 1.0)
    contractions = GradientContractions(grad, factors)
    contractions.check_finite("grad")
    frame = Frame.at(core, factors)
    gradient = riemannian_gradient(frame, contractions)
    rule = rule_of(options)
    adaptive = method not in ("bug", "vanilla") and rule.kind in ("tol", "budget")
    if growth is not None and adaptive:
        grown = _growth_iteration(frame, contractions, gradient, grad, rule, growth)
        if grown is not None:
            return grown
        rule = capped_rule(rule, frame.rank)  # may only shrink

    if method in ("parallel_bug", "rcg"):
        if method == "rcg" and rule.kind is None:
            rule = dataclasses.replace(rule, rank=frame.rank)

        _check_rule(frame, rule)  # before anything else: raises at step 0

        def trial(step, direction=None, rule=None, default=rule):
            move = gradient if direction is None else direction.scaled(-1.0)
            chosen = default if rule is None else rule
            tucker, _ = parallel_bug_update(
                (core, factors), move.core, move.normals, step, rule=chosen
            )
            return tucker

        return Prepared(frame, gradient, gradient.sqnorm(), trial, adaptive)

    if method == "rgd":
        retraction = options.get("retraction", "hosvd")
        checked = check_rgd_rule(core, factors, rule, retraction=retraction)
        tangent = project_unchecked(core, factors, grad, contractions)

        def trial(step, direction=None, rule=None):
            chosen = checked if rule is None else rule
            return rgd_retract(
                core, factors, tangent, step, chosen, retraction=retraction
            )

        return Prepared(frame, gradient, gradient.sqnorm(), trial, adaptive)

    if method == "tdlrt":
        return _prepare_tdlrt(frame, contractions, gradient, rule, adaptive)

    if method == "bug":

        def trial(step, direction=None, rule=None):
            tucker, _ = bug_step((core, factors), grad, step, grad_fn=second_gradient)
            return tucker

        return Prepared(frame, gradient, gradient.sqnorm(), trial, False)

    raise ValueError(f"no line search for method {method!r}")


def _check_rule(frame: Frame, rule: RankRule) -> RankRule:
    """Validate a rank rule for an augmented step at ``frame``, as the steps do."""
    dims = augmented_dims(frame.factors, [tl.shape(q)[1] for q in frame.qs])
    return check_rule(frame.core, frame.factors, dims, rule)


def _prepare_tdlrt(frame, contractions, gradient, rule, adaptive) -> Prepared:
    """Steps 2-5 of :func:`tdlrt_step` once: only ``Chat0 - h * galerkin`` and the
    truncation depend on the step size ``h`` (the augmented bases span
    ``[U_i, dL/dK_i]`` whatever ``h``)."""
    core, factors = frame.core, frame.factors
    rule = _check_rule(frame, rule)
    k_grads = [
        None if is_full_rank(factor) else tl.dot(contractions.unfolded_partial(mode), q)
        for mode, (factor, q) in enumerate(zip(factors, frame.qs, strict=True))
    ]
    bases, embeddings = augment_bases(factors, k_grads)
    lifted = lift(core, embeddings)
    galerkin = contractions.galerkin(bases, embeddings)

    def trial(step, direction=None, rule=None, default=rule):
        augmented = AugmentedStep(lifted - step * galerkin, bases, None, factors, None)
        tucker, _ = augmented.finish(rule=default if rule is None else rule)
        return tucker

    return Prepared(frame, gradient, gradient.sqnorm(), trial, adaptive)


def _growth_iteration(frame, contractions, gradient, grad, rule, monitor):
    """The growth step when the monitor's rule says grow, else None."""
    rule = _check_rule(frame, rule)  # before anything else: raises at step 0
    shape = tuple(tl.shape(f)[0] for f in frame.factors)
    sqnorm = gradient.sqnorm()
    plan = monitor.plan(
        grad, frame.factors, math.sqrt(max(sqnorm, 0.0)), rank_caps(rule, shape)
    )
    if not plan.grows:
        return None
    # the rule decided the growth: the trials keep it (a tolerance would discard
    # the new directions at small trial steps, where their core entries are small)
    grown = RankRule(
        rank=tuple(r + k for r, k in zip(frame.rank, plan.extra, strict=True))
    )
    step_to, growth_sqnorm = growth_step(
        frame.core, frame.factors, frame.qs, contractions, plan
    )

    def trial(step, direction=None, rule=None):
        return step_to(step, grown if rule is None else rule)

    return Prepared(
        frame, gradient, sqnorm, trial, True, growth_sqnorm=max(growth_sqnorm, sqnorm)
    )


def _prepare_vanilla(tucker: Any, grad: Any) -> Prepared:
    """The core and factor gradients of :func:`vanilla_step`, once."""
    from .._checks import check_tucker
    from ._blocks import check_gradient

    core, factors = check_tucker(tucker, "tucker", orthonormal=False)
    check_gradient(grad, core, factors, finite=False)
    contractions = GradientContractions(grad, factors)
    contractions.check_finite("grad")
    params = [contractions.core_gradient()] + [
        tl.dot(contractions.unfolded_partial(mode), tl.transpose(tl.unfold(core, mode)))
        for mode in range(len(factors))
    ]

    def trial(step, direction=None, rule=None):
        return TuckerTensor(
            (
                core - step * params[0],
                [f - step * g for f, g in zip(factors, params[1:], strict=True)],
            )
        )

    sqnorm = sum(_sum_squares(p) for p in params)
    return Prepared(None, None, sqnorm, trial, False, params=params)


def gradient_norm(method: str, tucker: Any, grad: Any) -> float:
    """The norm :attr:`History.grad_norm` records: ``||P(Y) G||`` without any
    inverse, or for ``vanilla`` the norm of the core and factor gradients."""
    if method == "vanilla":
        return _prepare_vanilla(tucker, grad).grad_norm
    return projected_norm(tucker, grad)
