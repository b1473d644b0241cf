"""Step sizes without tuning: Armijo backtracking from a Barzilai-Borwein guess.

:class:`Armijo` configures the line search of :func:`~tuckerflow.integrate`
(``line_search="armijo"`` or ``line_search=Armijo(...)``); the search itself runs in
the driver, which calls the steps with trial step sizes (see the Concepts page,
"Step sizes without tuning"). The steps stay pure: a rejected trial leaves nothing
behind.

Sources: L. Armijo, "Minimization of functions having Lipschitz continuous first
partial derivatives", Pacific J. Math. 16(1), 1-3, 1966; P.-A. Absil, R. Mahony,
R. Sepulchre, "Optimization Algorithms on Matrix Manifolds", Princeton University
Press, 2008 (Riemannian Armijo search, Section 4.2; Riemannian conjugate gradients,
Section 8.3); J. Barzilai, J. M. Borwein, "Two-point step size gradient methods",
IMA J. Numer. Anal. 8(1), 141-148, 1988; H. Sato, "A Dai-Yuan-type Riemannian
conjugate gradient method with the weak Wolfe conditions", Comput. Optim. Appl. 64,
101-118, 2016; W. Ring, B. Wirth, "Optimization methods on Riemannian manifolds and
their application to shape space", SIAM J. Optim. 22(2), 596-627, 2012.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import tensorly as tl

from ._search import (
    Frame,
    KTangent,
    Prepared,
    keep_rank_rule,
    project_tucker,
    rule_of,
    tangent_tucker,
    tucker_inner,
)

__all__ = ["Armijo", "BETAS", "INITIAL_STEPS"]

INITIAL_STEPS = ("bb", "bb1", "bb2", "previous", "lr")
BETAS = ("pr+", "fr")


@dataclasses.dataclass(frozen=True)
class Armijo:
    """Armijo backtracking line search [1]_ with a Barzilai-Borwein first trial [2]_.

    At a point ``Y`` with Riemannian gradient ``xi = P(Y) G`` (norm computed without
    any inverse, as :func:`tuckerflow.projected_norm`) and a search direction ``eta``
    (``-xi``, or the conjugate direction of ``method="rcg"``), the trial step sizes are
    ``h0, shrink * h0, shrink^2 * h0, ...``; the first trial ``Y1(h)`` (the method's
    step: retracted, or truncated by the rank rule) with

        ``L(Y1(h)) <= L(Y) + c * h * <xi, eta>``    (``= L(Y) - c h ||xi||^2`` for
        steepest descent)

    is accepted. The decrease is measured on the point the step returns, truncation
    included. Every trial costs one objective evaluation (two for ``bug``, whose step
    takes a second gradient); the accepted trial's gradient starts the next step.
    Trials with a non-finite objective value are rejected like any other.

    Parameters
    ----------
    c : float, default 1e-4
        Sufficient-decrease fraction, in ``(0, 1)``.
    shrink : float, default 0.5
        Backtracking factor, in ``(0, 1)``.
    max_backtracks : int, default 25
        At most ``max_backtracks`` reductions of the step, so at most
        ``max_backtracks + 1`` trial step sizes per step. With a rank-adaptive rule
        (``tol`` or ``budget``) each step size is tried with the rule and, if that
        trial fails (its truncation dropped more than the step gained), once more
        at the current ranks (capped by ``max_rank``): a fixed-rank step, which
        decreases the loss for small enough steps. So at most
        ``2 * (max_backtracks + 1)`` evaluations per step. When no trial passes,
        :func:`~tuckerflow.integrate` stops with ``reason="line_search"`` at the last
        point.
    initial : {'bb', 'bb1', 'bb2', 'previous', 'lr'}, default 'bb'
        The first trial of every step after the first. ``'bb1'``: the long
        Barzilai-Borwein step ``<s, s> / <s, y>``, ``'bb2'``: the short one
        ``<s, y> / <y, y>``, ``'bb'``: alternating them (even steps long, odd steps
        short), with ``s = h_{k-1} eta_{k-1}`` the last step and
        ``y = xi_k - xi_{k-1}`` the change of the Riemannian gradient, both moved to
        the new tangent space by projection (cheap: the vectors are low rank);
        along a conjugate direction the same curvature ``<s, y> / <s, s>`` (or
        ``<y, y> / <s, y>``) gives the minimiser of the quadratic model. Where the
        curvature is not positive (far from a minimum the fixed-rank problem is
        often concave along the last step) the previous step divided by ``shrink``
        is tried instead. ``'previous'``: the last
        accepted step divided by ``shrink`` (one step longer). ``'lr'``: the ``lr`` of
        :func:`~tuckerflow.integrate` (a float or a schedule) every step. The first
        step's trial is always ``lr`` when given, else ``||Y_0|| / ||xi_0||`` (a step
        as long as the point itself).

    Raises
    ------
    TypeError
        If ``c`` or ``shrink`` is not a real number or ``max_backtracks`` not an int.
    ValueError
        If ``c`` or ``shrink`` is outside ``(0, 1)``, ``max_backtracks`` is negative,
        or ``initial`` is not one of the names above.

    References
    ----------
    .. [1] P.-A. Absil, R. Mahony, R. Sepulchre, "Optimization Algorithms on Matrix
       Manifolds", Princeton University Press, 2008, Section 4.2 (L. Armijo, Pacific
       J. Math. 16(1), 1-3, 1966, in the Euclidean case).
    .. [2] J. Barzilai, J. M. Borwein, "Two-point step size gradient methods", IMA J.
       Numer. Anal. 8(1), 141-148, 1988.

    Examples
    --------
    >>> import tensorly as tl, tuckerflow as tf
    >>> A = tf.random_tucker((8, 8, 8), (2, 2, 2), random_state=0).to_tensor()
    >>> def objective(W):
    ...     return 0.5 * float(tl.sum((W - A) ** 2)), W - A
    >>> Y0 = tf.random_tucker((8, 8, 8), (2, 2, 2), random_state=1)
    >>> result = tf.integrate(objective, Y0, method="rgd", steps=100,
    ...                       line_search=tf.Armijo(c=1e-4), grad_rtol=1e-8)
    >>> result.reason
    'grad_rtol'
    """

    c: float = 1e-4
    shrink: float = 0.5
    max_backtracks: int = 25
    initial: str = "bb"

    def __post_init__(self) -> None:
        for name in ("c", "shrink"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"Armijo.{name} must be a real number, got {value!r}")
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"Armijo.{name} must lie in (0, 1), got {value}")
        backtracks = self.max_backtracks
        if isinstance(backtracks, bool) or not isinstance(backtracks, numbers.Integral):
            raise TypeError(f"Armijo.max_backtracks must be an int, got {backtracks!r}")
        if backtracks < 0:
            raise ValueError(f"Armijo.max_backtracks must be >= 0, got {backtracks}")
        if self.initial not in INITIAL_STEPS:
            raise ValueError(
                f"Armijo.initial must be one of {INITIAL_STEPS}, got {self.initial!r}"
            )


def as_line_search(value: Any) -> Armijo | None:
    """``None``, ``"armijo"`` or an :class:`Armijo` -> the configuration."""
    if value is None or isinstance(value, Armijo):
        return value
    if isinstance(value, str) and value.lower() == "armijo":
        return Armijo()
    raise ValueError(
        f"line_search must be None, 'armijo' or a tuckerflow.Armijo, got {value!r}"
    )


@dataclasses.dataclass
class Outcome:
    """What one searched step returns to the driver."""

    tucker: Any
    value: float
    grad: Any
    step: float
    restarted: bool = False


@dataclasses.dataclass
class _Memory:
    frame: Frame | None
    gradient: KTangent | None
    gradient_tucker: Any
    grad_sqnorm: float
    direction: KTangent | None
    params: list[Any] | None
    step: float
    growth: bool = False


class Searcher:
    """The line search (and the conjugate directions of ``rcg``) across iterations."""

    def __init__(
        self,
        config: Armijo,
        *,
        schedule: Callable[[int], float] | None,
        evaluate: Callable[[Any], tuple[float, Any]],
        options: dict[str, Any],
        beta: str | None = None,
    ) -> None:
        self.config = config
        self.schedule = schedule
        self.evaluate = evaluate
        self.options = options
        self.beta = beta
        self.memory: _Memory | None = None

    # ------------------------------------------------------------ directions
    def _transported(self, prepared: Prepared) -> tuple[Any, Any]:
        """The previous gradient and direction, projected onto the new tangent
        space (vector transport by projection), in K-form; None at the start."""
        memory = self.memory
        if memory is None or prepared.gradient is None or memory.gradient is None:
            return None, None
        gradient = project_tucker(prepared.frame, memory.gradient_tucker)
        if memory.direction is None:  # steepest descent: eta = -xi
            return gradient, gradient.scaled(-1.0)
        direction = project_tucker(
            prepared.frame, tangent_tucker(memory.frame, memory.direction)
        )
        return gradient, direction

    def _direction(
        self, prepared: Prepared, moved_gradient: Any, moved_direction: Any
    ) -> tuple[KTangent | None, float, bool]:
        """Search direction (None: steepest descent), slope ``<xi, eta>`` and whether
        the conjugate direction was restarted."""
        xi = prepared.gradient
        if prepared.growth_sqnorm is not None:  # a growth step: along -Pi G
            return None, -prepared.growth_sqnorm, True
        steepest = -prepared.grad_sqnorm
        if self.beta is None:
            return None, steepest, False
        memory = self.memory
        if (
            moved_direction is None
            or memory.frame.rank != prepared.frame.rank
            or memory.grad_sqnorm <= 0.0
        ):
            return None, steepest, True
        if self.beta == "fr":
            beta = prepared.grad_sqnorm / memory.grad_sqnorm
        else:  # Polak-Ribiere+
            beta = max(
                0.0,
                (prepared.grad_sqnorm - xi.dot(moved_gradient)) / memory.grad_sqnorm,
            )
        direction = moved_direction.scaled(beta).plus(xi, -1.0)
        slope = xi.dot(direction)
        if not (math.isfinite(slope) and slope < 0.0):  # not a descent direction
            return None, steepest, True
        return direction, slope, beta == 0.0

    # ------------------------------------------------------------ step sizes
    def _curvature(
        self, prepared: Prepared, moved_gradient: Any, moved_direction: Any, long: bool
    ) -> float:
        """Barzilai-Borwein curvature ``<s, y> / <s, s>`` (long) or
        ``<y, y> / <s, y>`` (short), NaN where not positive. ``s`` is the last step
        ``h eta`` and ``y`` the change of the gradient, the old vectors transported
        by projection onto the new tangent space."""
        memory = self.memory
        if prepared.params is not None:  # vanilla: s and y in the parameters
            s = [-memory.step * p for p in memory.params]
            y = [a - b for a, b in zip(prepared.params, memory.params, strict=True)]
            ss = sum(_dot(a, a) for a in s)
            sy = sum(_dot(a, b) for a, b in zip(s, y, strict=True))
            yy = sum(_dot(b, b) for b in y)
        else:
            s = moved_direction.scaled(memory.step)
            y = prepared.gradient.plus(moved_gradient, -1.0)
            ss, sy, yy = s.sqnorm(), s.dot(y), y.sqnorm()
        if not (sy > 0.0 and ss > 0.0 and yy > 0.0):
            return math.nan
        return sy / ss if long else yy / sy

    def _initial(
        self,
        index: int,
        tucker: Any,
        prepared: Prepared,
        direction: KTangent | None,
        slope: float,
        moved: tuple[Any, Any],
    ) -> float:
        kind = self.config.initial
        growth = prepared.growth_sqnorm
        if self.memory is None or kind == "lr":
            if self.schedule is not None:
                return float(self.schedule(index))
            scale = math.sqrt(max(tucker_inner(tucker, tucker), 0.0))
            norm = prepared.grad_norm if growth is None else math.sqrt(growth)
            return scale / max(norm, 1e-300)
        longer = self.memory.step / self.config.shrink
        if growth is not None or self.memory.growth:
            # no curvature along the new directions (the last gradient, at a point
            # nearly stationary for its ranks, says nothing about them)
            return longer
        if kind == "previous":
            return longer
        long = kind == "bb1" or (kind == "bb" and index % 2 == 0)
        curvature = self._curvature(prepared, *moved, long)
        if not (math.isfinite(curvature) and curvature > 0.0):
            # no positive curvature along the last step: try a longer one
            return longer
        sqnorm = prepared.grad_sqnorm if direction is None else direction.sqnorm()
        guess = -slope / (curvature * sqnorm)
        return guess if math.isfinite(guess) and guess > 0.0 else longer

    # ------------------------------------------------------------ the search
    def search(
        self, index: int, tucker: Any, value: float, prepared: Prepared
    ) -> Outcome | None:
        """One step: direction, first trial, backtracking. None if nothing passed."""
        moved = self._transported(prepared)
        direction, slope, restarted = self._direction(prepared, *moved)
        first = self._initial(index, tucker, prepared, direction, slope, moved)
        rules = [None]
        if prepared.adaptive:
            rules.append(keep_rank_rule(prepared.frame, rule_of(self.options)))
        accepted = self._backtrack(prepared, direction, slope, value, first, rules)
        if accepted is not None:
            point, new_value, grad, step = accepted
            self.memory = _Memory(
                frame=prepared.frame,
                gradient=prepared.gradient,
                gradient_tucker=None
                if prepared.gradient is None
                else tangent_tucker(prepared.frame, prepared.gradient),
                grad_sqnorm=prepared.grad_sqnorm,
                direction=direction,
                params=prepared.params,
                step=step,
                growth=prepared.growth_sqnorm is not None,
            )
            return Outcome(point, new_value, grad, step, restarted)
        return None

    def _backtrack(self, prepared, direction, slope, value, first, rules):
        """Trials ``first, shrink * first, ...``; at each step size every rule in turn
        (the caller's, then the current ranks for a rank-adaptive rule)."""
        config = self.config
        step = first
        for _ in range(config.max_backtracks + 1):
            if not (math.isfinite(step) and step > 0.0):
                return None
            bound = value + config.c * step * slope
            for rule in rules:
                point = prepared.trial(step, direction, rule)
                new_value, grad = self.evaluate(point)
                if math.isfinite(new_value) and new_value <= bound:
                    return point, new_value, grad, step
            step *= config.shrink
        return None


def _dot(a: Any, b: Any) -> float:
    return float(tl.to_numpy(tl.sum(a * b)))
