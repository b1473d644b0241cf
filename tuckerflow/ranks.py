"""Rank selection: an explicit rank, a tolerance, or a parameter budget.

:class:`RankRule` holds the rule a truncation follows, validated once; its
:meth:`~RankRule.choose` applies it. The rules act on the per-mode singular-value
spectra of a tensor's unfoldings (for an orthonormal Tucker tensor, those of its core's
unfoldings). Spectra are short vectors (one value per rank), so the decisions are made
in NumPy on the host, in float64, and are identical whatever backend produced them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._checks import _as_int, check_rank, check_rank_bounds, check_tol

__all__ = [
    "RankRule",
    "parameter_count",
    "ranks_from_tolerance",
    "ranks_from_budget",
    "ranks_from_global_budget",
]


def parameter_count(shape: Sequence[int], rank: Sequence[int]) -> int:
    """Number of stored parameters of a Tucker tensor: ``prod(rank) + sum(n_i r_i)``.

    Parameters
    ----------
    shape : sequence of int
        Mode sizes ``(n_1, ..., n_d)`` of the full tensor.
    rank : sequence of int
        Tucker rank ``(r_1, ..., r_d)``.

    Returns
    -------
    int
        Entries of the core (``prod(rank)``) plus entries of the factors
        (``sum(n_i r_i)``).

    Raises
    ------
    ValueError
        If ``shape`` and ``rank`` have different lengths.

    Examples
    --------
    >>> parameter_count((10, 10, 10), (2, 3, 4))
    114
    """
    if len(shape) != len(rank):
        raise ValueError(
            f"shape {tuple(shape)} and rank {tuple(rank)} have different lengths"
        )
    return math.prod(rank) + sum(n * r for n, r in zip(shape, rank))


def _squared_tails(spectrum: np.ndarray) -> np.ndarray:
    """``tails[r] = sum_{k >= r} s_k^2`` for r = 0..len(s) (so tails[len(s)] = 0)."""
    squares = np.asarray(spectrum, dtype=np.float64) ** 2
    return np.concatenate([np.cumsum(squares[::-1])[::-1], [0.0]])


def ranks_from_tolerance(
    spectra: Sequence[np.ndarray],
    threshold: float,
    min_rank: Sequence[int],
    max_rank: Sequence[int],
) -> tuple[int, ...]:
    """Smallest rank per mode whose discarded tail is at most ``threshold``.

    Parameters
    ----------
    spectra : sequence of 1-D arrays
        Singular values of each mode's unfolding, in decreasing order.
    threshold : float
        Absolute bound on ``sqrt(sum_{k > r_i} sigma_{i,k}^2)`` for every mode.
    min_rank, max_rank : sequence of int
        Per-mode clipping bounds applied after the rule.

    Returns
    -------
    tuple of int
        One rank per mode, ``min_rank[i] <= r_i <= max_rank[i]``.
    """
    ranks = []
    limit = threshold**2
    for spectrum, low, high in zip(spectra, min_rank, max_rank):
        tails = _squared_tails(spectrum)
        # first r with tails[r] <= limit; tails is non-increasing and ends in 0
        rank = int(np.argmax(tails <= limit))
        ranks.append(int(min(max(rank, low), high)))
    return tuple(ranks)


def ranks_from_budget(
    spectra: Sequence[np.ndarray],
    shape: Sequence[int],
    budget: int,
    min_rank: Sequence[int],
    max_rank: Sequence[int],
) -> tuple[int, ...]:
    """Ranks that fit ``parameter_count(shape, ranks) <= budget`` keeping most energy.

    The kept energy is ``sum_i sum_{k <= r_i} sigma_{i,k}^2``. Choosing ranks is a
    small knapsack problem with a non-separable cost (the core size ``prod(r)``):

    1. two greedy passes from ``max_rank``, dropping the singular direction of least
       energy (``sigma^2``), respectively least energy per parameter saved, until the
       count fits, then adding back the most energetic directions that still fit;
       the better of the two is kept;
    2. exchange moves until none helps: lower one mode by up to 16, refill another,
       keep the change if more energy is kept.

    The result is maximal (no single-mode increase fits) and exchange-optimal. On
    random problems with d <= 3 and mode sizes <= 6 it kept at least 99.7% of the
    brute-force optimum's energy (mean 99.9999%).

    Parameters
    ----------
    spectra : sequence of 1-D arrays
        Singular values per mode, decreasing.
    shape : sequence of int
        Full tensor's mode sizes (the factors' row counts).
    budget : int
        Maximum parameter count.
    min_rank, max_rank : sequence of int
        Per-mode bounds (``max_rank`` at most the spectrum length).

    Returns
    -------
    tuple of int
        One rank per mode, within the bounds, with
        ``parameter_count(shape, ranks) <= budget``.

    Raises
    ------
    ValueError
        If even ``min_rank`` does not fit the budget.
    """
    smallest = parameter_count(shape, min_rank)
    if budget < smallest:
        raise ValueError(
            f"budget={budget} is smaller than {smallest}, the parameter count of the "
            f"smallest allowed Tucker tensor (ranks {tuple(min_rank)} for shape "
            f"{tuple(shape)})"
        )
    problem = _BudgetProblem(spectra, shape, budget, min_rank, max_rank)
    candidates = [
        problem.greedy(per_parameter=False),
        problem.greedy(per_parameter=True),
    ]
    best = max(candidates, key=problem.kept)  # ties: the first (plain energy)
    return tuple(problem.exchange(best))


class _BudgetProblem:
    """The budgeted rank choice: energies, bounds and the moves of the heuristics."""

    max_exchange = 16

    def __init__(self, spectra, shape, budget, min_rank, max_rank) -> None:
        self.shape = tuple(shape)
        self.budget = budget
        self.low = tuple(min_rank)
        self.high = tuple(max_rank)
        self.order = len(self.shape)
        # cumulative[m][r] = energy kept in mode m at rank r
        self.cumulative = []
        for spectrum, high in zip(spectra, self.high):
            energies = np.zeros(high)
            values = np.asarray(spectrum, dtype=np.float64)[:high] ** 2
            energies[: len(values)] = values
            self.cumulative.append(np.concatenate([[0.0], np.cumsum(energies)]))

    def energy(self, mode: int, index: int) -> float:
        """Energy of the ``index``-th (0-based) direction of ``mode``."""
        cumulative = self.cumulative[mode]
        return float(cumulative[index + 1] - cumulative[index])

    def kept(self, ranks: Sequence[int]) -> float:
        return float(sum(self.cumulative[m][r] for m, r in enumerate(ranks)))

    def fits(self, ranks: Sequence[int]) -> bool:
        return parameter_count(self.shape, ranks) <= self.budget

    def refill(self, ranks: list[int]) -> list[int]:
        """Add the most energetic next direction that fits, until none does."""
        while True:
            candidates = [
                m
                for m in range(self.order)
                if ranks[m] < self.high[m] and self.fits(_bumped(ranks, m))
            ]
            if not candidates:
                return ranks
            mode = max(candidates, key=lambda m: (self.energy(m, ranks[m]), -m))
            ranks[mode] += 1

    def greedy(self, *, per_parameter: bool) -> list[int]:
        ranks = list(self.high)
        while not self.fits(ranks):
            candidates = [m for m in range(self.order) if ranks[m] > self.low[m]]

            def cost(m: int) -> tuple[float, int]:
                lost = self.energy(m, ranks[m] - 1)
                saved = _saving(self.shape, ranks, m)
                return (lost / saved if per_parameter else lost, -saved, m)

            ranks[min(candidates, key=cost)] -= 1
        return self.refill(ranks)

    def exchange(self, ranks: list[int]) -> list[int]:
        improved = True
        while improved:
            improved = False
            current = self.kept(ranks)
            for source in range(self.order):
                for target in range(self.order):
                    if source == target:
                        continue
                    deepest = min(self.max_exchange, ranks[source] - self.low[source])
                    for drop in range(1, deepest + 1):
                        trial = list(ranks)
                        trial[source] -= drop
                        while trial[target] < self.high[target] and self.fits(
                            _bumped(trial, target)
                        ):
                            trial[target] += 1
                        if self.kept(trial) > current * (1 + 1e-12) + 1e-300:
                            ranks, improved = self.refill(trial), True
                            break
                    if improved:
                        break
                if improved:
                    break
        return ranks


def _bumped(ranks: Sequence[int], mode: int) -> list[int]:
    bumped = list(ranks)
    bumped[mode] += 1
    return bumped


def _saving(shape: Sequence[int], ranks: Sequence[int], mode: int) -> int:
    smaller = list(ranks)
    smaller[mode] -= 1
    return parameter_count(shape, ranks) - parameter_count(shape, smaller)


GLOBAL_CRITERIA = ("tolerance", "energy", "energy_per_parameter")


def ranks_from_global_budget(
    problems: Sequence[dict],
    budget: int,
    *,
    criterion: str = "tolerance",
) -> list[tuple[int, ...]]:
    """Ranks for several Tucker tensors sharing one parameter budget.

    Every tensor ``k`` is described by a dict with ``spectra`` (per mode, decreasing;
    ``None`` for a mode pinned to its size), ``shape``, ``min_rank``, ``max_rank`` and
    ``norm`` (its Frobenius norm). Singular values are compared relative to each
    tensor's norm, so a layer's scale does not decide its share.

    Criteria:

    * ``"tolerance"`` (default): the smallest common relative tolerance ``tau`` such
      that truncating every tensor to ``tau`` (the rule of :func:`tuckerflow.hosvd`)
      fits the budget, found by bisection. Every layer ends with about the same
      relative error (the budget may be a little under-used).
    * ``"energy"``: drop the direction of least relative energy ``sigma^2/||W_k||^2``
      over all tensors and modes until the count fits, then add back.
    * ``"energy_per_parameter"``: the same, ordered by relative energy per parameter
      saved (this minimises the sum of relative errors).

    The greedy energy orders sacrifice large layers with flat spectra: on LeNet-5 at
    95% compression from a random start both cut the 800 x 500 layer to rank 1, while
    ``"tolerance"`` shares the budget. Deterministic (ties: lower tensor index, then
    lower mode).

    Parameters
    ----------
    problems : sequence of dict
        One per tensor, with keys ``spectra`` (sequence of 1-D arrays or None),
        ``shape`` and ``min_rank``, ``max_rank`` (sequences of int, one per mode) and
        ``norm`` (float, the Frobenius norm, in the units of the entries).
    budget : int
        Maximum total parameter count ``sum_k (prod(r_k) + sum_i n_{k,i} r_{k,i})``.
    criterion : {'tolerance', 'energy', 'energy_per_parameter'}
        How to share the budget (see above).

    Returns
    -------
    list of tuple of int
        The ranks of every tensor, in the order of ``problems``.

    Raises
    ------
    ValueError
        If ``criterion`` is not one of the three names, or the minimum ranks of all
        tensors together exceed the budget.
    """
    if criterion not in GLOBAL_CRITERIA:
        raise ValueError(
            f"criterion must be one of {GLOBAL_CRITERIA}, got {criterion!r}"
        )
    shapes = [tuple(p["shape"]) for p in problems]
    lows = [tuple(p["min_rank"]) for p in problems]
    highs = [tuple(p["max_rank"]) for p in problems]
    smallest = sum(parameter_count(s, low) for s, low in zip(shapes, lows))
    if budget < smallest:
        raise ValueError(
            f"budget={budget} is smaller than {smallest}, the parameter count of all "
            "Tucker layers at their minimum ranks"
        )
    energies = []
    for problem, high in zip(problems, highs):
        scale = max(float(problem["norm"]) ** 2, 1e-300)
        per_mode = []
        for spectrum, size in zip(problem["spectra"], high):
            values = np.zeros(size)
            if spectrum is not None:
                s = np.asarray(spectrum, dtype=np.float64)[:size] ** 2 / scale
                values[: len(s)] = s
            per_mode.append(values)
        energies.append(per_mode)

    def total(ranks) -> int:
        return sum(parameter_count(s, r) for s, r in zip(shapes, ranks))

    if criterion == "tolerance":
        # no energy refill: it would hand the slack to the layers with the largest
        # relative energies per direction and undo the common tolerance
        ranks = _common_tolerance(problems, energies, shapes, lows, highs, budget)
        return [tuple(r) for r in ranks]
    else:
        ranks = [list(high) for high in highs]
        current = total(ranks)
        while current > budget:
            best, best_key = None, None
            for k in range(len(problems)):
                for mode in range(len(shapes[k])):
                    if ranks[k][mode] <= lows[k][mode]:
                        continue
                    lost = energies[k][mode][ranks[k][mode] - 1]
                    if criterion == "energy_per_parameter":
                        lost = lost / max(_saving(shapes[k], ranks[k], mode), 1)
                    key = (lost, k, mode)
                    if best_key is None or key < best_key:
                        best, best_key = (k, mode), key
            k, mode = best
            current -= _saving(shapes[k], ranks[k], mode)
            ranks[k][mode] -= 1
    # refill: the most energetic next directions that still fit
    current = total(ranks)
    while True:
        best, best_key = None, None
        for k in range(len(problems)):
            for mode in range(len(shapes[k])):
                if ranks[k][mode] >= highs[k][mode]:
                    continue
                grown = parameter_count(shapes[k], _bumped(ranks[k], mode))
                if current - parameter_count(shapes[k], ranks[k]) + grown > budget:
                    continue
                key = (-energies[k][mode][ranks[k][mode]], k, mode)
                if best_key is None or key < best_key:
                    best, best_key = (k, mode), key
        if best is None:
            break
        k, mode = best
        grown = parameter_count(shapes[k], _bumped(ranks[k], mode))
        current += grown - parameter_count(shapes[k], ranks[k])
        ranks[k][mode] += 1
    return [tuple(r) for r in ranks]


def _common_tolerance(problems, energies, shapes, lows, highs, budget):
    """Smallest common relative tolerance whose truncations fit the budget."""

    def ranks_at(tau: float) -> list[list[int]]:
        out = []
        for k, problem in enumerate(problems):
            free = sum(1 for s in problem["spectra"] if s is not None) or 1
            spectra = [np.sqrt(e) for e in energies[k]]  # relative singular values
            ranks = ranks_from_tolerance(
                spectra, tau / math.sqrt(free), lows[k], highs[k]
            )
            out.append(list(ranks))
        return out

    def count(ranks) -> int:
        return sum(parameter_count(s, r) for s, r in zip(shapes, ranks))

    if count(ranks_at(0.0)) <= budget:
        return ranks_at(0.0)
    # at tau = sqrt(#free modes) every mode may discard everything: minimum ranks
    widest = max(sum(1 for s in p["spectra"] if s is not None) for p in problems)
    low, high = 0.0, math.sqrt(max(widest, 1)) * (1 + 1e-9)
    if count(ranks_at(high)) > budget:  # spectra inconsistent with the norms
        return [list(r) for r in lows]
    for _ in range(50):
        middle = 0.5 * (low + high)
        if count(ranks_at(middle)) <= budget:
            high = middle
        else:
            low = middle
    return ranks_at(high)


RankSpec = int | Sequence[int] | None

_KINDS = ("rank", "tol", "budget")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankRule:
    """Which ranks a truncation keeps: a rank, a tolerance or a budget, within bounds.

    At most one of ``rank``, ``tol`` and ``budget`` decides the ranks; with none, every
    available direction is kept. ``tol`` and ``budget`` choose from the singular
    values of the unfoldings, clipped to ``[min_rank, max_rank]``. What can be checked
    without the tensor (types, signs, the range of ``tol``, that one rule is given) is
    checked when the rule is made; what depends on the tensor's shape (one entry per
    mode, ranks the tensor can reach, a budget its smallest ranks fit) by
    :meth:`check`. The functions that take these keywords (:func:`tuckerflow.hosvd`,
    :func:`tuckerflow.truncate`, the steps, :func:`tuckerflow.integrate`) accept a
    rule as ``rule=`` instead, so one rule can be built once and reused.

    Parameters
    ----------
    rank : int or sequence of int, optional
        Fixed target rank ``(r_1, ..., r_d)``; an int applies to every mode, capped at
        what each mode offers; a sequence is used as given. Every entry ``>= 1``.
    tol : float, optional
        Total truncation tolerance: the discarded part has norm at most ``tol`` times
        the norm of what is truncated (``relative``, a fraction in ``[0, 1)``), or at
        most ``tol`` (an absolute Frobenius norm, ``>= 0``, units of the entries).
    relative : bool, default True
        Whether ``tol`` is relative to the norm of what is truncated.
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the ranks chosen by ``tol`` or ``budget`` (an int applies to every
        mode; ``min_rank`` defaults to 1, ``max_rank`` to the mode sizes ``n_i``).
    budget : int, optional
        Maximum number of stored entries ``prod(r) + sum(n_i r_i)`` (core plus
        factors); the ranks keep the most singular-value energy that fits
        (:func:`ranks_from_budget`).

    Raises
    ------
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is not an int or a sequence of ints,
        ``tol`` not a real number or ``budget`` not an int.
    ValueError
        If more than one of ``rank``, ``tol`` and ``budget`` is given; if an entry of
        ``rank``, ``min_rank`` or ``max_rank`` is below 1; if ``tol`` is not finite,
        outside ``[0, 1)`` with ``relative=True``, or negative.

    Examples
    --------
    >>> import numpy as np
    >>> rule = RankRule(tol=0.1, max_rank=3)
    >>> rule.choose([np.array([3.0, 2.0, 0.1]), np.array([3.0, 0.1])], (3, 2), (3, 2))
    (2, 1)
    """

    rank: RankSpec = None
    tol: float | None = None
    relative: bool = True
    min_rank: RankSpec = 1
    max_rank: RankSpec = None
    budget: int | None = None

    def __post_init__(self) -> None:
        given = [name for name in _KINDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give at most one of rank, tol and budget, got {' and '.join(given)}"
            )
        normalized = {
            "rank": _rank_values(self.rank, "rank"),
            "min_rank": _rank_values(self.min_rank, "min_rank"),
            "max_rank": _rank_values(self.max_rank, "max_rank"),
        }
        if self.tol is not None:
            normalized["tol"] = check_tol(self.tol, self.relative)
        if self.budget is not None:
            budget = self.budget
            if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
                raise TypeError(f"budget must be an int, got {budget!r}")
            normalized["budget"] = int(budget)
        for name, value in normalized.items():
            object.__setattr__(self, name, value)

    @property
    def kind(self) -> str | None:
        """``'rank'``, ``'tol'`` or ``'budget'``: what decides; None keeps everything.

        Returns
        -------
        str or None
            The name of the given rule, or None when none of the three is given.
        """
        for name in _KINDS:
            if getattr(self, name) is not None:
                return name
        return None

    def check(
        self,
        dims: Sequence[int],
        shape: Sequence[int],
        *,
        augmented_from: Sequence[int] | None = None,
    ) -> RankRule:
        """Validate the rule against a tensor before any work; return it.

        Parameters
        ----------
        dims : sequence of int
            Sizes of what is truncated: the tensor itself, or a Tucker core (then
            its ranks, or the augmented sizes of a step).
        shape : sequence of int
            Mode sizes ``(n_1, ..., n_d)`` of the full tensor.
        augmented_from : sequence of int, optional
            The rank before an augmented step (or a retraction), when ``dims`` are
            the augmented sizes: a ``rank`` above them is then explained as the
            limit of one step.

        Returns
        -------
        RankRule
            ``self``, valid for this tensor.

        Raises
        ------
        ValueError
            If ``rank``, ``min_rank`` or ``max_rank`` has not one entry per mode, a
            ``rank[i]`` exceeds what mode ``i`` offers (its size ``n_i``, the current
            or augmented rank ``dims[i]``, or the product of the other modes'
            sizes), ``max_rank[i]`` exceeds ``n_i``, ``min_rank`` exceeds
            ``max_rank`` in a mode, or ``budget`` is smaller than the parameter count
            at ``min_rank``.
        """
        if self.rank is not None:
            check_rank(self.rank, dims, shape, augmented_from=augmented_from)
        lows, _ = self._bounds(dims, shape)
        if self.budget is not None:
            smallest = parameter_count(shape, lows)
            if self.budget < smallest:
                raise ValueError(
                    f"budget={self.budget} is smaller than {smallest}, the parameter "
                    f"count of the smallest allowed Tucker tensor (ranks {lows} for "
                    f"shape {tuple(shape)})"
                )
        return self

    def _bounds(
        self, dims: Sequence[int], shape: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``min_rank`` and ``max_rank`` per mode, capped at what ``dims`` offers."""
        return check_rank_bounds(self.min_rank, self.max_rank, dims, shape)

    def pinned(self, dims: Sequence[int], shape: Sequence[int]) -> list[bool]:
        """Modes whose new rank must equal their size ``dims[i]`` (no SVD needed).

        True where ``rank`` asks for ``dims[i]``, or where ``min_rank`` and
        ``max_rank`` both clip to ``dims[i]`` (e.g. a convolution's kernel modes, kept
        at full rank by a network layer).

        Parameters
        ----------
        dims : sequence of int
            Sizes of what is truncated (see :meth:`check`).
        shape : sequence of int
            Mode sizes of the full tensor.

        Returns
        -------
        list of bool
            One flag per mode.

        Raises
        ------
        ValueError
            If the rule does not fit the shape (as :meth:`check`).
        """
        if self.rank is not None:
            ranks = check_rank(self.rank, dims, shape)
            return [r == d for r, d in zip(ranks, dims)]
        lows, highs = self._bounds(dims, shape)
        return [low == high == d for low, high, d in zip(lows, highs, dims)]

    def choose(
        self,
        spectra: Sequence[Any],
        dims: Sequence[int],
        shape: Sequence[int],
        *,
        norm: float | None = None,
    ) -> tuple[int, ...]:
        """The ranks the rule keeps, from the singular values of every unfolding.

        A tolerance is split over the modes that can be truncated: a pinned mode
        (``spectra[i]`` None, see :meth:`pinned`) discards nothing, so each free mode
        may discard ``theta / sqrt(#free modes)`` with ``theta = tol * norm``
        (relative) or ``tol``; see :func:`tuckerflow.hosvd` for why.

        Parameters
        ----------
        spectra : sequence of 1-D tensors or None
            Singular values of each mode's unfolding, decreasing (any backend);
            None for a mode pinned to ``dims[i]``.
        dims : sequence of int
            Sizes of what is truncated (see :meth:`check`).
        shape : sequence of int
            Mode sizes of the full tensor.
        norm : float, optional
            Frobenius norm of what is truncated (units of the entries), for a
            relative ``tol``; default: from ``spectra[0]``, which must then be given.

        Returns
        -------
        tuple of int
            One rank per mode, within the bounds; every available rank when the
            rule gives none of ``rank``, ``tol`` and ``budget``.

        Raises
        ------
        ValueError
            If the rule does not fit the shape (as :meth:`check`), or the budget is
            below the parameter count at ``min_rank``.
        """
        if self.rank is not None:
            return check_rank(self.rank, dims, shape)
        lows, highs = self._bounds(dims, shape)
        host_spectra = [
            np.zeros(d) if s is None else tl.to_numpy(s) for s, d in zip(spectra, dims)
        ]
        if self.tol is not None:
            if norm is None:
                norm = math.sqrt(float((host_spectra[0].astype("float64") ** 2).sum()))
            theta = self.tol * norm if self.relative else self.tol
            free = sum(1 for s in spectra if s is not None)
            threshold = theta / math.sqrt(max(free, 1))
            return ranks_from_tolerance(host_spectra, threshold, lows, highs)
        if self.budget is not None:
            return ranks_from_budget(host_spectra, shape, self.budget, lows, highs)
        return highs


def _rank_values(value: Any, name: str) -> int | tuple[int, ...] | None:
    """None, an int or a tuple of ints, each ``>= 1`` (what needs no shape)."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        return int(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be an int or a sequence of ints (one per mode), got {value!r}"
        )
    values = tuple(_as_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    for mode, entry in enumerate(values):
        if entry < 1:
            raise ValueError(f"{name}[{mode}] must be >= 1, got {entry}")
    return values


_DEFAULTS = {
    "rank": None,
    "tol": None,
    "relative": True,
    "min_rank": 1,
    "max_rank": None,
    "budget": None,
}


def as_rank_rule(rule: Any = None, **keywords: Any) -> RankRule:
    """The rule of a function that takes ``rule=`` or the six rule keywords.

    ``keywords`` are the function's ``rank``, ``tol``, ``relative``, ``min_rank``,
    ``max_rank`` and ``budget`` (those it has); with ``rule`` they must keep their
    defaults.
    """
    if rule is None:
        return RankRule(**keywords)
    if not isinstance(rule, RankRule):
        raise TypeError(
            f"rule must be a tuckerflow.RankRule, got {type(rule).__name__}; or pass "
            "the keywords rank, tol, relative, min_rank, max_rank, budget instead"
        )
    given = [name for name, value in keywords.items() if not _is_default(name, value)]
    if given:
        raise ValueError(
            f"give the rank rule either as rule=RankRule(...) or as keywords, not "
            f"both: got rule and {', '.join(given)}; move {', '.join(given)} into "
            "the RankRule"
        )
    return rule


def rule_from_keywords(function: Callable[..., Any]) -> Callable[..., Any]:
    """Let ``function`` take ``rule=`` or the rule keywords, and read only ``rule``.

    ``function`` has a ``rule`` parameter and some of ``rank``, ``tol``,
    ``relative``, ``min_rank``, ``max_rank``, ``budget`` (its public signature, kept
    for callers); the wrapper builds the validated :class:`RankRule` once, before
    ``function`` runs (:func:`as_rank_rule`), and passes it as ``rule``.
    """
    signature = inspect.signature(function)
    names = [name for name in _DEFAULTS if name in signature.parameters]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        given = bound.arguments  # only what the caller passed
        keywords = {name: given[name] for name in names if name in given}
        given["rule"] = as_rank_rule(given.get("rule"), **keywords)
        return function(*bound.args, **bound.kwargs)

    return wrapper


def _is_default(name: str, value: Any) -> bool:
    default = _DEFAULTS[name]
    if default is None or isinstance(default, bool):
        return value is default
    return isinstance(value, int) and not isinstance(value, bool) and value == default
