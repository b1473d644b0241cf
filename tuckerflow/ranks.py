"""Rank selection: from a tolerance, or from a parameter budget.

The rules act on the per-mode singular-value spectra of a tensor's unfoldings (for an
orthonormal Tucker tensor, those of its core's unfoldings). Spectra are short vectors
(one value per rank), so the decisions are made in NumPy on the host, in float64, and
are identical whatever backend produced them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
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
