"""Rank rules on spectra: tolerance minimality and budget feasibility/maximality."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerflow.ranks import parameter_count, ranks_from_budget, ranks_from_tolerance


def test_parameter_count_formula():
    assert parameter_count((10, 20), (3, 4)) == 12 + 30 + 80
    assert parameter_count((5, 5, 5, 5), (1, 1, 1, 1)) == 1 + 20
    with pytest.raises(ValueError, match="different lengths"):
        parameter_count((3, 3), (1, 1, 1))


@st.composite
def spectra_problem(draw):
    order = draw(st.integers(2, 3))
    shape = tuple(draw(st.integers(2, 6)) for _ in range(order))
    spectra = [
        np.sort(
            np.asarray(
                draw(st.lists(st.floats(1e-6, 10.0), min_size=n, max_size=n)), float
            )
        )[::-1]
        for n in shape
    ]
    return shape, spectra


@settings(max_examples=200)
@given(problem=spectra_problem(), fraction=st.floats(0.0, 1.0))
def test_budget_fits_and_no_single_increase_fits(problem, fraction):
    shape, spectra = problem
    low, high = (1,) * len(shape), shape
    smallest, largest = parameter_count(shape, low), parameter_count(shape, high)
    budget = int(smallest + fraction * (largest - smallest))
    ranks = ranks_from_budget(spectra, shape, budget, low, high)
    assert parameter_count(shape, ranks) <= budget
    assert all(lo <= r <= hi for lo, r, hi in zip(low, ranks, high))
    for mode in range(len(shape)):
        bigger = list(ranks)
        bigger[mode] += 1
        if bigger[mode] <= high[mode]:
            assert parameter_count(shape, bigger) > budget


@settings(max_examples=100)
@given(problem=spectra_problem(), fraction=st.floats(0.0, 1.0))
def test_budget_result_is_exchange_optimal(problem, fraction):
    """No move "lower one mode by k, raise another as far as the budget allows" keeps
    more energy than the returned ranks (the documented local-optimality guarantee)."""
    shape, spectra = problem
    low, high = (1,) * len(shape), shape
    smallest, largest = parameter_count(shape, low), parameter_count(shape, high)
    budget = int(smallest + fraction * (largest - smallest))

    def kept(ranks):
        return sum(float(np.sum(s[:r] ** 2)) for s, r in zip(spectra, ranks))

    chosen = ranks_from_budget(spectra, shape, budget, low, high)
    for source, target in itertools.permutations(range(len(shape)), 2):
        for drop in range(1, chosen[source]):
            trial = list(chosen)
            trial[source] -= drop
            while trial[target] < high[target]:
                trial[target] += 1
                if parameter_count(shape, trial) > budget:
                    trial[target] -= 1
                    break
            assert kept(trial) <= kept(chosen) * (1 + 1e-12)


def test_budget_is_deterministic_and_respects_bounds():
    spectra = [np.array([3.0, 2.0, 1.0, 0.5]), np.array([1.0, 1.0, 1.0, 1.0])]
    shape = (4, 4)
    first = ranks_from_budget(spectra, shape, 20, (2, 1), (3, 4))
    assert first == ranks_from_budget(spectra, shape, 20, (2, 1), (3, 4))
    assert 2 <= first[0] <= 3 and 1 <= first[1] <= 4
    with pytest.raises(ValueError, match="budget=5 is smaller than"):
        ranks_from_budget(spectra, shape, 5, (1, 1), (4, 4))


@settings(max_examples=200)
@given(
    spectrum=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=12),
    threshold=st.floats(0.0, 20.0),
)
def test_tolerance_rule_is_the_smallest_rank_whose_tail_fits(spectrum, threshold):
    s = np.sort(np.asarray(spectrum, float))[::-1]
    (rank,) = ranks_from_tolerance([s], threshold, (0,), (len(s),))
    # the rule compares squared tails with threshold**2 (no square roots)
    assert float(np.sum(s[rank:] ** 2)) <= threshold**2
    if rank > 0:
        assert float(np.sum(s[rank - 1 :] ** 2)) > threshold**2
