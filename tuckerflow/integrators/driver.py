"""``integrate``: run any of the steps on any tensor objective and record a history."""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Iterable
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from .._checks import check_objective_output, check_tucker
from ..autodiff import value_and_grad
from ..backend import is_finite
from ..ranks import RankRule, parameter_count
from ._search import gradient_norm, prepare, rule_of, to_dense
from .bug import bug_step, parallel_bug_step
from .growth import Monitor, RankGrowth, as_growth
from .linesearch import BETAS, Armijo, Searcher, as_line_search
from .rgd import rgd_step
from .state import OptimizerState
from .tdlrt import tdlrt_step
from .vanilla import vanilla_step

__all__ = [
    "integrate",
    "IntegrationResult",
    "History",
    "IntegrationError",
    "METHODS",
    "STOP_REASONS",
]

METHODS = ("tdlrt", "parallel_bug", "bug", "rgd", "vanilla", "rcg")

#: Values of :attr:`IntegrationResult.reason`.
STOP_REASONS = (
    "steps",
    "grad_tol",
    "grad_rtol",
    "loss_rtol",
    "max_time",
    "callback",
    "batches",
    "line_search",
    "error",
)


@dataclasses.dataclass
class History:
    """What happened at every step.

    Below, ``steps`` is the number of steps taken (:attr:`IntegrationResult.steps`).

    Attributes
    ----------
    loss : list of float
        Objective at the start of every step, then at the final point: one entry per
        iterate, ``steps + 1`` in all, like ``ranks`` and ``parameters``. With
        ``batches``, entry ``k`` is the objective on batch ``k``, the batch step ``k``
        uses, and the final point's entry reuses the last step's batch (no batch is
        drawn beyond one per step, and none is made up): ``loss[-2]`` and ``loss[-1]``
        compare that batch before and after the last step. The final point's loss
        is recorded as evaluated, even when it is not finite. With ``batches`` and no
        step taken (``steps=0`` or an empty iterable) there is no batch to evaluate
        on, and ``loss`` is empty. In the ``result`` of an :class:`IntegrationError`,
        ``loss`` holds one entry per completed step, one fewer than ``ranks``: the
        last good point's evaluation is the one that failed.
    ranks : list of tuple of int
        Rank of every iterate, the initial one included (``steps + 1`` entries).
    parameters : list of int
        ``prod(r) + sum(n_i r_i)`` of every iterate (``steps + 1`` entries).
    time : list of float
        Wall time of every step in seconds, gradient evaluations included (``steps``
        entries).
    lr : list of float
        Step size used at every step (``steps`` entries): the accepted trial step with
        a line search.
    grad_norm : list of float
        Riemannian gradient norm ``||P(Y_k) G_k||`` of every iterate, computed without
        any inverse (as :func:`tuckerflow.projected_norm`; for ``vanilla`` the norm of
        the core and factor gradients), ``steps + 1`` entries; recorded only when
        something needs it (a line search, ``method="rcg"``, ``grad_tol`` or
        ``grad_rtol``), empty otherwise: it costs a pass over the gradient.
    evaluations : list of int
        Objective calls made by every step (``steps`` entries): 1 per step for a fixed
        step size (2 for ``bug``); with a line search, one per trial step (two for
        ``bug``), the accepted trial's call giving the next step's gradient. The
        calls outside the steps (the start point with a line search, the final
        point without) are in :attr:`IntegrationResult.evaluations`.
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    ranks: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    parameters: list[int] = dataclasses.field(default_factory=list)
    time: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    grad_norm: list[float] = dataclasses.field(default_factory=list)
    evaluations: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class IntegrationResult:
    """Final point, history and optimizer state of :func:`integrate`.

    Parameters
    ----------
    tucker : TuckerTensor
        The final point: core of shape ``(r_1, ..., r_d)`` (the final ranks),
        factors of shapes ``(n_i, r_i)``.
    history : History
        What happened at every step.
    state : Momentum or Adam, optional
        The optimizer state at the final point, when one was passed in.
    reason : str, default 'steps'
        Why the run stopped (see :data:`STOP_REASONS`): ``'steps'`` (all ``steps``
        taken), ``'grad_tol'``, ``'grad_rtol'``, ``'loss_rtol'``, ``'max_time'``,
        ``'callback'`` (the callback returned true), ``'batches'`` (the ``batches``
        ran out), ``'line_search'`` (no trial step decreased the loss enough: a
        stationary point to rounding, or a rank rule that cannot descend) or
        ``'error'`` (in the ``result`` of an :class:`IntegrationError`).
    evaluations : int, default 0
        Objective calls in all, the second gradients of ``bug`` included.
    """

    tucker: TuckerTensor
    history: History
    state: OptimizerState | None = None
    reason: str = "steps"
    evaluations: int = 0

    @property
    def steps(self) -> int:
        """Number of steps taken."""
        return len(self.history.time)


class IntegrationError(RuntimeError):
    """A step failed; ``result`` holds everything up to the last good point.

    ``result.tucker`` is the point after ``result.steps`` completed steps (the one at
    which the failing evaluation or step started) and ``result.history`` the history
    up to it. When the failure was an exception, it is chained as ``__cause__``.

    Parameters
    ----------
    message : str
        What failed, at which step.
    result : IntegrationResult
        The last good point, the history so far and the optimizer state.
    """

    def __init__(self, message: str, result: IntegrationResult) -> None:
        super().__init__(message)
        self.result = result


def _record_point(history: History, tucker: Any) -> None:
    shape = tuple(tl.shape(f)[0] for f in tucker[1])
    rank = tuple(tl.shape(tucker[0]))
    history.ranks.append(rank)
    history.parameters.append(parameter_count(shape, rank))


def integrate(
    objective: Callable[..., tuple[Any, Any]] | None,
    tucker0: Any,
    *,
    method: str = "tdlrt",
    lr: float | Callable[[int], float] | None = None,
    steps: int,
    tol: float | None = None,
    rule: RankRule | None = None,
    callback: Callable[[int, TuckerTensor, float], Any] | None = None,
    progress: bool = False,
    value_fn: Callable[..., Any] | None = None,
    batches: Iterable[Any] | None = None,
    state: OptimizerState | None = None,
    line_search: str | Armijo | None = None,
    grad_tol: float | None = None,
    grad_rtol: float | None = None,
    loss_rtol: float | None = None,
    max_time: float | None = None,
    rank_growth: bool | RankGrowth | None = None,
    **method_options: Any,
) -> IntegrationResult:
    """Minimise a tensor objective (or integrate a gradient flow) in Tucker format.

    Runs up to ``steps`` steps of one integrator (TDLRT [1]_ by default, or parallel
    BUG [2]_, fixed-rank BUG [3]_, Riemannian gradient descent [4]_, Riemannian
    conjugate gradients [5]_ [6]_ or vanilla factor SGD), evaluating ``objective``
    once per step (twice for ``bug``), and records every iterate's loss, ranks and
    parameter count and every step's wall time. The step size is ``lr``, or is found
    by an Armijo line search [7]_ from a Barzilai-Borwein guess [8]_
    (``line_search="armijo"``); the run stops early on the stopping rules given
    (``grad_tol``, ``grad_rtol``, ``loss_rtol``, ``max_time``), and the result says
    why it stopped (:attr:`IntegrationResult.reason`).

    Parameters
    ----------
    objective : callable or None
        ``objective(tensor) -> (value, grad)`` on the active backend: ``value`` a real
        scalar (a number or a one-element tensor), ``grad`` the Euclidean gradient of
        the full tensor (same shape ``(n_1, ..., n_d)`` and dtype, a tensor of the
        active backend); ``objective(tensor, batch)`` when ``batches`` is given.
        ``None`` with ``value_fn`` on an autodiff backend.
    tucker0 : TuckerTensor or (core, factors)
        Starting point: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns (any factors for ``vanilla``).
    method : {'tdlrt', 'parallel_bug', 'bug', 'rgd', 'vanilla', 'rcg'}
        The step: :func:`tdlrt_step`, :func:`parallel_bug_step`, :func:`bug_step`,
        :func:`rgd_step`, :func:`vanilla_step`, or ``'rcg'``: Riemannian conjugate
        gradients, ``Y_{k+1} = R(Y_k + h_k eta_k)`` with
        ``eta_k = -xi_k + beta_k T(eta_{k-1})``, ``T`` the projection onto the new
        tangent space (vector transport by projection), ``beta`` Polak-Ribiere+
        (``beta="pr+"``, the default) or Fletcher-Reeves (``beta="fr"``), restarted
        (``eta_k = -xi_k``) when ``eta_k`` is no descent direction or the ranks
        changed; the retraction ``R`` truncates ``Y + h eta`` as
        :func:`parallel_bug_update` does (the rank by default, or ``tol``/``budget``
        for rank-adaptive CG). Always with a line search (Armijo unless one is
        given).
    lr : float or callable, optional
        Step size ``h > 0`` (the time step of the gradient flow), or
        ``lr(step) -> float`` for step ``0, 1, ...`` (e.g. a Robbins-Monro schedule).
        Needed without a line search; with one, the first trial step (and every
        step's with ``Armijo(initial="lr")``).
    steps : int
        Maximum number of steps (``>= 0``).
    tol : float, optional
        Truncation tolerance of the rank-adaptive methods (see :func:`tdlrt_step`).
    rule : RankRule, optional
        The rank rule of the rank-adaptive methods as one value
        (:class:`~tuckerflow.RankRule`), instead of ``tol`` and the rule keywords of
        ``method_options``.
    callback : callable, optional
        ``callback(step, tucker, loss)`` after every step; a true return value stops.
    progress : bool
        Show a tqdm progress bar.
    value_fn : callable, optional
        ``value_fn(tensor[, batch]) -> scalar`` differentiated by the backend's
        autodiff (pytorch), used when ``objective`` is None.
    batches : iterable, optional
        One item per step (e.g. a mini-batch); no more are drawn, and stopping early
        leaves the rest. Every gradient of a step uses the same item: TDLRT and
        parallel BUG need one gradient per step, BUG two. The final point's loss is
        taken on the last step's item (see :class:`History`). Not with a line search
        or the loss and gradient stopping rules, which compare values of one
        deterministic objective.
    state : Momentum or Adam, optional
        Optimizer state for ``tdlrt`` and ``parallel_bug`` (fixed step sizes only).
    line_search : {None, 'armijo'} or Armijo, optional
        ``'armijo'`` (:class:`Armijo` with its defaults) or an :class:`Armijo`: the
        step size of every step is searched (see :class:`Armijo`), for every method.
        Each trial step costs one objective evaluation, counted in
        :attr:`History.evaluations`.
    grad_tol : float, optional
        Stop (``reason="grad_tol"``) at the first iterate whose Riemannian gradient
        norm (:attr:`History.grad_norm`) is at most ``grad_tol`` (units of the
        gradient's entries).
    grad_rtol : float, optional
        Stop (``reason="grad_rtol"``) at the first iterate whose Riemannian gradient
        norm is at most ``grad_rtol`` times the starting point's.
    loss_rtol : float, optional
        Stop (``reason="loss_rtol"``) at the first iterate whose loss differs from the
        previous iterate's by at most ``loss_rtol * |previous loss|``.
    max_time : float, optional
        Stop (``reason="max_time"``) before the first step that would start later than
        ``max_time`` seconds after the call (wall time).
    rank_growth : bool or RankGrowth, optional
        Greedy rank growth for the rank-adaptive ``tdlrt``, ``parallel_bug`` and
        ``rcg`` (``tol`` or ``budget`` given) [9]_ [10]_: steps keep or reduce the
        ranks, and when the iterate is nearly stationary for its ranks compared with
        the gradient's steepest directions outside the tangent space, a growth step
        adds those directions to the bases (see :class:`RankGrowth`; ``True``: its
        defaults). The remedy for ranks that never grow from a point stationary for
        its rank, and for a tolerance that alone decides growth. Off by default
        (None): the steps are the step functions' own.
    **method_options
        Passed to the step (``min_rank``, ``max_rank``, ``rank``, ``budget``,
        ``relative``; ``retraction`` for ``rgd``; ``beta`` for ``rcg``).

    Returns
    -------
    IntegrationResult
        The final point, the :class:`History` (losses, ranks, parameter counts,
        per-step wall time in seconds, step sizes, gradient norms and objective
        calls), the final ``state``, why the run stopped (``reason``) and the number
        of objective calls (``evaluations``).

    Raises
    ------
    IntegrationError
        If the objective returns a non-finite value or gradient at the start of a
        step; or, once a step has completed, if the objective, the ``batches``
        iterable, the ``lr`` schedule or a step raises (the exception is chained as
        ``__cause__``). Its ``result`` holds the last good point and the history so
        far. (With a line search a trial with a non-finite value is only rejected.)
    TypeError
        If the objective does not return a ``(value, grad)`` pair of a real scalar
        and a tensor of the active backend (e.g. a NumPy gradient under pytorch), at
        step 0. Before the first step completes nothing has been computed, so what
        the objective or the step raises there propagates unchanged (e.g. the
        step's ``ValueError`` for a ``rank`` it cannot reach).
        Also if ``objective`` (or ``value_fn``) is not callable, and, from the check of
        ``tucker0``, if it is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if a
        stopping rule is not a real number.
    ValueError
        For an unknown ``method``, a ``steps`` that is not a non-negative int, ``tol``
        or ``rule`` with a fixed-rank method, ``state`` with a method that keeps none or
        with a line search, neither or both of ``objective`` and ``value_fn``; for a
        malformed ``tucker0`` (shapes, NaN or Inf) or one whose factors are not
        orthonormal (except with ``vanilla``); without ``lr`` and without a line
        search; for an unknown ``line_search`` or ``beta``; for ``rank_growth``
        with a method other than ``tdlrt``, ``parallel_bug`` and ``rcg``, without
        ``tol`` or ``budget`` (or a ``rule`` with one), or with ``state``; for a line
        search or a loss or gradient stopping rule with ``batches``; for a negative
        or non-finite stopping rule (``max_time`` must be positive).
    NotImplementedError
        At step 0, if ``value_fn`` is used on a backend without automatic
        differentiation (e.g. numpy).
    ImportError
        If ``progress=True`` and tqdm is not installed.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] G. Ceruti, J. Kusch, C. Lubich, "A parallel rank-adaptive integrator for
       dynamical low-rank approximation", SIAM J. Sci. Comput. 46(3), 2024.
    .. [3] G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical
       low-rank approximation", BIT Numer. Math. 62, 23-44, 2022.
    .. [4] D. Kressner, M. Steinlechner, B. Vandereycken, "Low-rank tensor completion
       by Riemannian optimization", BIT Numer. Math. 54(2), 447-468, 2014.
    .. [5] W. Ring, B. Wirth, "Optimization methods on Riemannian manifolds and their
       application to shape space", SIAM J. Optim. 22(2), 596-627, 2012.
    .. [6] H. Sato, "A Dai-Yuan-type Riemannian conjugate gradient method with the
       weak Wolfe conditions", Comput. Optim. Appl. 64, 101-118, 2016.
    .. [7] P.-A. Absil, R. Mahony, R. Sepulchre, "Optimization Algorithms on Matrix
       Manifolds", Princeton University Press, 2008.
    .. [8] J. Barzilai, J. M. Borwein, "Two-point step size gradient methods", IMA J.
       Numer. Anal. 8(1), 141-148, 1988.
    .. [9] A. Uschmajew, B. Vandereycken, "Greedy rank updates combined with
       Riemannian descent methods for low-rank optimization", SampTA 2015, 420-424.
    .. [10] B. Gao, P.-A. Absil, "A Riemannian rank-adaptive method for low-rank
       matrix completion", Comput. Optim. Appl. 81, 67-90, 2022.

    Examples
    --------
    >>> import numpy as np, tensorly as tl, tuckerflow as tf
    >>> A = tf.random_tucker((8, 8, 8), (2, 2, 2), random_state=0).to_tensor()
    >>> def objective(W):
    ...     return 0.5 * float(tl.sum((W - A) ** 2)), W - A
    >>> Y0 = tf.random_tucker((8, 8, 8), (1, 1, 1), random_state=1)
    >>> result = tf.integrate(objective, Y0, lr=0.5, steps=20, tol=1e-6)
    >>> result.tucker.rank, result.history.loss[-1] < 1e-6 * result.history.loss[0]
    ((2, 2, 2), True)

    Without a step size, stopping on the gradient norm:

    >>> result = tf.integrate(objective, Y0, method="rcg", steps=200, tol=1e-6,
    ...                       grad_rtol=1e-10)
    >>> result.reason, result.tucker.rank
    ('grad_rtol', (2, 2, 2))
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if objective is None:
        if value_fn is None:
            raise ValueError("give objective(tensor) -> (value, grad), or value_fn")
        objective = value_and_grad(value_fn)
    elif value_fn is not None:
        raise ValueError("give either objective or value_fn, not both")
    if not callable(objective):
        raise TypeError(f"objective must be callable, got {type(objective).__name__}")
    if state is not None and method not in ("tdlrt", "parallel_bug"):
        raise ValueError(
            f"optimizer state is supported by tdlrt and parallel_bug, not {method!r}"
        )
    options = dict(method_options)
    beta = None
    if method == "rcg":
        beta = options.pop("beta", "pr+")
        if beta not in BETAS:
            raise ValueError(f"beta must be one of {BETAS}, got {beta!r}")
        if line_search is None:
            line_search = "armijo"
    search_config = as_line_search(line_search)
    if search_config is not None and state is not None:
        raise ValueError(
            "a line search takes steps along the gradient (or a conjugate "
            "direction): it does not combine with an optimizer state"
        )
    if search_config is None and lr is None:
        raise ValueError(
            "give lr (a step size or a schedule), or line_search='armijo' to find "
            "the step sizes"
        )
    rules = _check_stopping(grad_tol, grad_rtol, loss_rtol, max_time)
    if batches is not None and (search_config is not None or rules.deterministic):
        raise ValueError(
            "a line search and the loss or gradient stopping rules compare values of "
            "one objective: they do not apply with batches"
        )
    schedule = None if lr is None else lr if callable(lr) else (lambda k, v=lr: v)
    for name, value in (("tol", tol), ("rule", rule)):
        if value is None:
            continue
        if method not in ("tdlrt", "parallel_bug", "rgd", "rcg"):
            raise ValueError(
                f"method {method!r} keeps a fixed rank: {name} does not apply"
            )
        options[name] = value

    growth = _check_growth(rank_growth, method, options, state)
    core, factors = check_tucker(tucker0, "tucker0", orthonormal=method != "vanilla")
    tucker = TuckerTensor((core, list(factors)))
    run = _Run(
        objective=objective,
        method=method,
        history=History(),
        state=state,
        batched=batches is not None,
        started=time.perf_counter(),
        growth=growth,
    )
    run.tucker = tucker
    run.record_point(tucker)
    bar = _progress_bar(steps) if progress else None
    try:
        if search_config is None:
            _fixed_steps(run, schedule, steps, options, rules, batches, callback, bar)
        else:
            searcher = Searcher(
                search_config,
                schedule=schedule,
                evaluate=run.evaluate,
                options=options,
                beta=beta,
            )
            _searched_steps(run, searcher, steps, options, rules, callback, bar)
    finally:
        if bar is not None:
            bar.close()
    return run.result()


def _check_growth(value, method, options, state) -> Monitor | None:
    """The growth monitor of a run, or None; raises for a method without one."""
    config = as_growth(value)
    if config is None:
        return None
    if method not in ("tdlrt", "parallel_bug", "rcg"):
        raise ValueError(
            f"rank_growth applies to tdlrt, parallel_bug and rcg, not {method!r}"
        )
    if rule_of(options).kind not in ("tol", "budget"):
        raise ValueError(
            "rank_growth needs a rank-adaptive rule: give tol or budget (or a "
            "RankRule with one)"
        )
    if state is not None:
        raise ValueError("rank_growth does not combine with an optimizer state")
    return Monitor(config)


@dataclasses.dataclass
class _Rules:
    """The stopping rules, validated."""

    grad_tol: float | None
    grad_rtol: float | None
    loss_rtol: float | None
    max_time: float | None

    @property
    def needs_gradient_norm(self) -> bool:
        return self.grad_tol is not None or self.grad_rtol is not None

    @property
    def deterministic(self) -> bool:
        return self.needs_gradient_norm or self.loss_rtol is not None

    def out_of_time(self, started: float) -> bool:
        return (
            self.max_time is not None and time.perf_counter() - started >= self.max_time
        )

    def reason(self, history: History, value: float) -> str | None:
        """Which rule stops at the current iterate (its loss ``value``), if any."""
        norms = history.grad_norm
        if self.grad_tol is not None and norms and norms[-1] <= self.grad_tol:
            return "grad_tol"
        if (
            self.grad_rtol is not None
            and norms
            and norms[-1] <= self.grad_rtol * (norms[0])
        ):
            return "grad_rtol"
        if self.loss_rtol is not None and history.loss:
            previous = history.loss[-1]
            if abs(previous - value) <= self.loss_rtol * abs(previous):
                return "loss_rtol"
        return None


def _check_stopping(grad_tol, grad_rtol, loss_rtol, max_time) -> _Rules:
    checked = {}
    for name, value in (
        ("grad_tol", grad_tol),
        ("grad_rtol", grad_rtol),
        ("loss_rtol", loss_rtol),
        ("max_time", max_time),
    ):
        if value is None:
            checked[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        value = float(value)
        if (
            not math.isfinite(value)
            or value < 0.0
            or (name == "max_time" and value == 0.0)
        ):
            bound = "> 0" if name == "max_time" else ">= 0"
            raise ValueError(f"{name} must be finite and {bound}, got {value}")
        checked[name] = value
    return _Rules(**checked)


@dataclasses.dataclass
class _Run:
    """The state of one :func:`integrate` call: point, history, evaluation count."""

    objective: Callable[..., Any]
    method: str
    history: History
    state: OptimizerState | None
    batched: bool
    started: float
    tucker: Any = None
    reason: str = "steps"
    evaluations: int = 0
    growth: Monitor | None = None

    def gradient_at(self, dense: Any, batch: Any = None) -> tuple[float, Any]:
        self.evaluations += 1
        if self.batched:
            output = self.objective(dense, batch)
        else:
            output = self.objective(dense)
        return check_objective_output(output)

    def evaluate(self, point: Any, batch: Any = None) -> tuple[float, Any]:
        # contiguous: the objective's elementwise work on it is several times cheaper
        return self.gradient_at(to_dense(point), batch)

    def record_point(self, tucker: Any) -> None:
        _record_point(self.history, tucker)

    def result(self, reason: str | None = None) -> IntegrationResult:
        return IntegrationResult(
            self.tucker,
            self.history,
            self.state,
            reason=reason or self.reason,
            evaluations=self.evaluations,
        )

    def fail(self, message: str) -> IntegrationError:
        done = len(self.history.time)
        return IntegrationError(
            f"{message}; error.result holds the point after {done} steps and the "
            "history so far",
            self.result("error"),
        )

    def failed(self, error: Exception, where: str) -> IntegrationError:
        """Re-raise ``error`` before any step completed; then wrap it.

        Nothing is lost at step 0, and the caller's own exception (e.g. a step's
        ValueError for a bad option) is the clearest report.
        """
        if not self.history.time:
            raise error
        return self.fail(f"{where} raised {type(error).__name__}: {error}")

    def check_finite(self, step: int, value: float, grad: Any) -> None:
        if not math.isfinite(value):
            raise self.fail(f"step {step}: the objective value is {value}")
        if not is_finite(grad):
            raise self.fail(f"step {step}: the gradient contains NaN or Inf entries")

    def gradient_norm(self, grad: Any) -> float:
        return gradient_norm(self.method, self.tucker, grad)

    def after_step(self, step, bar, callback, value) -> bool:
        """Progress and callback after a completed step; True to stop."""
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3e}", ranks=str(self.history.ranks[-1]))
        if callback is not None and callback(step, self.tucker, value):
            self.reason = "callback"
            return True
        return False


def _fixed_steps(run, schedule, steps, options, rules, batches, callback, bar):
    """The steps at the step sizes ``lr`` gives."""
    history, method = run.history, run.method
    batch_iter = iter(batches) if batches is not None else None
    batch = None
    final = None  # the final point's loss, when a stopping rule evaluated it
    for step in range(steps):
        if rules.out_of_time(run.started):
            run.reason = "max_time"
            break
        if batch_iter is not None:
            try:
                batch = next(batch_iter)
            except StopIteration:
                run.reason = "batches"
                break
            except Exception as error:
                raise run.failed(error, f"step {step}: the batches iterable") from error
        start = time.perf_counter()
        try:
            value, grad = run.evaluate(run.tucker, batch)
        except Exception as error:
            raise run.failed(error, f"step {step}: the objective") from error
        run.check_finite(step, value, grad)
        if rules.needs_gradient_norm:
            history.grad_norm.append(run.gradient_norm(grad))
        stop = rules.reason(history, value)
        if stop is not None:
            run.reason, final = stop, value
            break
        try:
            rate = float(schedule(step))
        except Exception as error:
            raise run.failed(error, f"step {step}: the lr schedule") from error
        calls = run.evaluations
        try:
            out = _take_step(run, method, grad, rate, options, batch)
        except Exception as error:
            raise run.failed(error, f"step {step}: {method}_step") from error
        run.tucker, run.state = out
        history.time.append(time.perf_counter() - start)
        history.loss.append(value)
        history.lr.append(rate)
        history.evaluations.append(1 + run.evaluations - calls)
        run.record_point(run.tucker)
        if run.after_step(step, bar, callback, value):
            break
    if final is None and (batch_iter is None or history.time):
        # with batches: the last step's batch, never one made up or drawn extra
        try:
            final, grad = run.evaluate(run.tucker, batch)
        except Exception as error:
            where = f"the final point (after {len(history.time)} steps): the objective"
            raise run.failed(error, where) from error
        if rules.needs_gradient_norm and math.isfinite(final) and is_finite(grad):
            history.grad_norm.append(run.gradient_norm(grad))
    if final is not None:
        history.loss.append(final)


def _take_step(run, method, grad, rate, options, batch):
    state = run.state
    if run.growth is not None:  # tdlrt or parallel_bug: their steps, to rounding
        prepared = prepare(method, run.tucker, grad, options, growth=run.growth)
        return prepared.trial(rate), state  # no state with growth: None
    if method == "tdlrt":
        return tdlrt_step(run.tucker, grad, rate, state=state, **options)
    if method == "parallel_bug":
        return parallel_bug_step(run.tucker, grad, rate, state=state, **options)
    if method == "bug":

        def second_gradient(dense: Any) -> Any:
            return run.gradient_at(dense, batch)[1]

        return bug_step(run.tucker, grad, rate, grad_fn=second_gradient, **options)
    if method == "rgd":
        return rgd_step(run.tucker, grad, rate, **options)
    return vanilla_step(run.tucker, grad, rate, **options)


def _searched_steps(run, searcher, steps, options, rules, callback, bar):
    """The steps whose sizes a line search finds (and the conjugate directions)."""
    history, method = run.history, run.method
    try:
        value, grad = run.evaluate(run.tucker)
    except Exception as error:
        raise run.failed(error, "step 0: the objective") from error
    prepared = None
    for step in range(steps):
        run.check_finite(step, value, grad)
        start = time.perf_counter()
        try:
            prepared = prepare(
                method,
                run.tucker,
                grad,
                options,
                second_gradient=lambda dense: run.gradient_at(dense)[1],
                growth=run.growth,
            )
        except Exception as error:
            raise run.failed(error, f"step {step}: {method} step") from error
        history.grad_norm.append(prepared.grad_norm)
        stop = rules.reason(history, value)
        if stop is None and rules.out_of_time(run.started):
            stop = "max_time"
        if stop is not None:
            run.reason = stop
            break
        calls = run.evaluations
        try:
            outcome = searcher.search(step, run.tucker, value, prepared)
        except Exception as error:
            raise run.failed(error, f"step {step}: the line search") from error
        if outcome is None:
            run.reason = "line_search"
            break
        history.time.append(time.perf_counter() - start)
        history.loss.append(value)
        history.lr.append(outcome.step)
        history.evaluations.append(run.evaluations - calls)
        run.tucker, value, grad = outcome.tucker, outcome.value, outcome.grad
        run.record_point(run.tucker)
        prepared = None
        if run.after_step(step, bar, callback, history.loss[-1]):
            break
    history.loss.append(value)
    if len(history.grad_norm) < len(history.loss) and math.isfinite(value):
        if is_finite(grad):
            history.grad_norm.append(run.gradient_norm(grad))


def _progress_bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - tqdm is a test dependency
        raise ImportError("progress=True needs tqdm: pip install tqdm") from error
    return tqdm(total=total, unit="step")
