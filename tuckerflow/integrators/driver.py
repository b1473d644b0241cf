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
from ..ranks import parameter_count
from .bug import bug_step, parallel_bug_step
from .rgd import rgd_step
from .state import OptimizerState
from .tdlrt import tdlrt_step
from .vanilla import vanilla_step

__all__ = ["integrate", "IntegrationResult", "History", "IntegrationError", "METHODS"]

METHODS = ("tdlrt", "parallel_bug", "bug", "rgd", "vanilla")


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
        Step size used at every step (``steps`` entries).
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    ranks: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    parameters: list[int] = dataclasses.field(default_factory=list)
    time: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)


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
    """

    tucker: TuckerTensor
    history: History
    state: OptimizerState | None = None

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
    lr: float | Callable[[int], float],
    steps: int,
    tol: float | None = None,
    callback: Callable[[int, TuckerTensor, float], Any] | None = None,
    progress: bool = False,
    value_fn: Callable[..., Any] | None = None,
    batches: Iterable[Any] | None = None,
    state: OptimizerState | None = None,
    **method_options: Any,
) -> IntegrationResult:
    """Minimise a tensor objective (or integrate a gradient flow) in Tucker format.

    Runs ``steps`` steps of one integrator (TDLRT [1]_ by default, or parallel BUG
    [2]_, fixed-rank BUG [3]_, Riemannian gradient descent [4]_ or vanilla factor
    SGD), evaluating ``objective`` once per step (twice for ``bug``), and records
    every iterate's loss, ranks and parameter count and every step's wall time.

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
    method : {'tdlrt', 'parallel_bug', 'bug', 'rgd', 'vanilla'}
        The step: :func:`tdlrt_step`, :func:`parallel_bug_step`, :func:`bug_step`,
        :func:`rgd_step` or :func:`vanilla_step`.
    lr : float or callable
        Step size ``h > 0`` (the time step of the gradient flow), or
        ``lr(step) -> float`` for step ``0, 1, ...`` (e.g. a Robbins-Monro schedule).
    steps : int
        Maximum number of steps (``>= 0``).
    tol : float, optional
        Truncation tolerance of the rank-adaptive methods (see :func:`tdlrt_step`).
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
        taken on the last step's item (see :class:`History`).
    state : Momentum or Adam, optional
        Optimizer state for ``tdlrt`` and ``parallel_bug``.
    **method_options
        Passed to the step (``min_rank``, ``max_rank``, ``rank``, ``budget``,
        ``relative``).

    Returns
    -------
    IntegrationResult
        The final point, the :class:`History` (losses, ranks, parameter counts,
        per-step wall time in seconds and step sizes) and the final ``state``.

    Raises
    ------
    IntegrationError
        If the objective returns a non-finite value or gradient at the start of a
        step; or, once a step has completed, if the objective, the ``batches``
        iterable, the ``lr`` schedule or a step raises (the exception is chained as
        ``__cause__``). Its ``result`` holds the last good point and the history so
        far.
    TypeError
        If the objective does not return a ``(value, grad)`` pair of a real scalar
        and a tensor of the active backend (e.g. a NumPy gradient under pytorch), at
        step 0. Before the first step completes nothing has been computed, so what
        the objective or the step raises there propagates unchanged (e.g. the
        step's ``ValueError`` for a ``rank`` it cannot reach).
        Also if ``objective`` (or ``value_fn``) is not callable, and, from the check of
        ``tucker0``, if it is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype.
    ValueError
        For an unknown ``method``, a ``steps`` that is not a non-negative int,
        ``tol`` with a fixed-rank method, ``state`` with a method that keeps none,
        neither or both of ``objective`` and ``value_fn``; for a malformed
        ``tucker0`` (shapes, NaN or Inf) or one whose factors are not orthonormal
        (except with ``vanilla``).
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
    schedule = lr if callable(lr) else (lambda step, value=lr: value)
    options = dict(method_options)
    if method in ("tdlrt", "parallel_bug", "rgd") and tol is not None:
        options["tol"] = tol
    elif tol is not None:
        raise ValueError(f"method {method!r} keeps a fixed rank: tol does not apply")

    core, factors = check_tucker(tucker0, "tucker0", orthonormal=method != "vanilla")
    tucker = TuckerTensor((core, list(factors)))
    history = History()
    _record_point(history, tucker)
    batch_iter = iter(batches) if batches is not None else None
    bar = _progress_bar(steps) if progress else None

    def gradient_at(dense: Any, batch: Any) -> tuple[float, Any]:
        output = objective(dense) if batch_iter is None else objective(dense, batch)
        return check_objective_output(output)

    def evaluate(point: Any, batch: Any) -> tuple[float, Any]:
        return gradient_at(tl.tucker_tensor.tucker_to_tensor(point), batch)

    def fail(message: str) -> IntegrationError:
        done = len(history.time)
        return IntegrationError(
            f"{message}; error.result holds the point after {done} steps and the "
            "history so far",
            IntegrationResult(tucker, history, state),
        )

    def failed(error: Exception, where: str) -> IntegrationError:
        """Re-raise ``error`` before any step completed; then wrap it.

        Nothing is lost at step 0, and the caller's own exception (e.g. a step's
        ValueError for a bad option) is the clearest report.
        """
        if not history.time:
            raise error
        return fail(f"{where} raised {type(error).__name__}: {error}")

    batch = None
    try:
        for step in range(steps):
            if batch_iter is not None:
                try:
                    batch = next(batch_iter)
                except StopIteration:
                    break
                except Exception as error:
                    raise failed(error, f"step {step}: the batches iterable") from error
            start = time.perf_counter()
            try:
                value, grad = evaluate(tucker, batch)
            except Exception as error:
                raise failed(error, f"step {step}: the objective") from error
            if not math.isfinite(value):
                raise fail(f"step {step}: the objective value is {value}")
            if not is_finite(grad):
                raise fail(f"step {step}: the gradient contains NaN or Inf entries")
            try:
                rate = float(schedule(step))
            except Exception as error:
                raise failed(error, f"step {step}: the lr schedule") from error
            try:
                if method == "tdlrt":
                    out = tdlrt_step(tucker, grad, rate, state=state, **options)
                elif method == "parallel_bug":
                    out = parallel_bug_step(tucker, grad, rate, state=state, **options)
                elif method == "bug":

                    def second_gradient(dense: Any, batch: Any = batch) -> Any:
                        return gradient_at(dense, batch)[1]

                    out = bug_step(
                        tucker, grad, rate, grad_fn=second_gradient, **options
                    )
                elif method == "rgd":
                    out = rgd_step(tucker, grad, rate, **options)
                else:
                    out = vanilla_step(tucker, grad, rate, **options)
            except Exception as error:
                raise failed(error, f"step {step}: {method}_step") from error
            if state is not None:
                tucker, state = out
            else:
                tucker = out
            history.time.append(time.perf_counter() - start)
            history.loss.append(value)
            history.lr.append(rate)
            _record_point(history, tucker)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3e}", ranks=str(history.ranks[-1]))
            if callback is not None and callback(step, tucker, value):
                break
        if batch_iter is None or history.time:
            # with batches: the last step's batch, never one made up or drawn extra
            try:
                final = evaluate(tucker, batch)[0]
            except Exception as error:
                where = (
                    f"the final point (after {len(history.time)} steps): the objective"
                )
                raise failed(error, where) from error
            history.loss.append(final)
    finally:
        if bar is not None:
            bar.close()
    return IntegrationResult(tucker, history, state)


def _progress_bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - tqdm is a test dependency
        raise ImportError("progress=True needs tqdm: pip install tqdm") from error
    return tqdm(total=total, unit="step")
