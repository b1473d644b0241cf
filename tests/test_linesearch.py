"""Armijo line search with Barzilai-Borwein first trials (integrate(line_search=...)).

The descent guarantee is checked independently of the driver's bookkeeping: every
accepted step's point is kept by the callback, the loss and the Riemannian gradient
norm are recomputed there (NumPy loss, :func:`tuckerflow.projected_norm`), and

    L(Y_{k+1}) <= L(Y_k) - c h_k ||P(Y_k) G_k||^2

must hold to rounding, on weighted least squares with core singular values down to
1e-12, for every method and for the rank-adaptive rules. The trial steps of the line
search are the step functions' own steps (checked against them).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorly as tl
from helpers import LeastSquares, dense, eps_of, shapes_and_ranks, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.integrators._search import prepare


def _problem(data, seed, decades, dtype=None):
    dtype = tl.backend.float64 if dtype is None else dtype
    shape, rank = data
    values = np.logspace(0, -decades, max(rank))
    start = tf.random_tucker(
        shape, rank, random_state=seed, dtype=dtype, singular_values=values
    )
    rng = np.random.default_rng(seed + 1)
    target = tl.tensor(rng.standard_normal(shape), dtype=dtype)
    weights = tl.tensor(rng.uniform(0.5, 1.5, shape), dtype=dtype)
    return start, LeastSquares(target, weights)


RULES = {
    "tdlrt": [{"tol": 0.05}, {"rank": None}],
    "parallel_bug": [{"tol": 0.05}, {"rank": None}],
    "rgd": [{}, {"tol": 0.05}],
    "bug": [{}],
    "vanilla": [{}],
}


def _options(method, rule, start):
    if rule.get("rank", 0) is None:
        return {"rank": start.rank}
    return dict(rule)


@settings(max_examples=25)
@given(
    data=shapes_and_ranks(max_order=3, max_size=6),
    seed=st.integers(0, 2**16),
    decades=st.integers(0, 12),
    c=st.sampled_from([1e-4, 0.1, 0.5]),
    which=st.integers(0, 1),
)
@pytest.mark.parametrize("method", sorted(RULES))
def test_every_accepted_step_decreases_the_loss_by_the_armijo_fraction(
    backend, method, data, seed, decades, c, which
):
    start, objective = _problem(data, seed, decades)
    rule = RULES[method][which % len(RULES[method])]
    points = [start]
    result = tf.integrate(
        objective,
        start,
        method=method,
        steps=6,
        line_search=tf.Armijo(c=c),
        callback=lambda step, tucker, loss: points.append(tucker),
        **_options(method, rule, start),
    )
    history = result.history
    assert len(points) == result.steps + 1
    assert result.reason in ("steps", "line_search")
    for k in range(result.steps):
        W0, W1 = points[k].to_tensor(), points[k + 1].to_tensor()
        G0 = objective.grad(W0)
        if method == "vanilla":
            norm = history.grad_norm[k]
        else:
            norm = tf.projected_norm(points[k], G0)
            assert norm == pytest.approx(history.grad_norm[k], rel=1e-6, abs=1e-12)
        before, after = objective.value(W0), objective.value(W1)
        assert before == pytest.approx(history.loss[k], rel=1e-10)
        decrease = c * history.lr[k] * norm**2
        slack = 100 * eps_of(tl.backend.float64) * (abs(before) + decrease)
        assert after <= before - decrease + slack


@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug", "rgd", "rcg"])
def test_the_rank_adaptive_search_descends_from_an_ill_conditioned_start(
    backend, method
):
    start, objective = _problem(((6, 7, 8), (3, 3, 3)), seed=3, decades=12)
    result = tf.integrate(
        objective, start, method=method, steps=15, tol=0.1, line_search="armijo"
    )
    loss = result.history.loss
    assert all(b <= a for a, b in itertools.pairwise(loss))
    assert loss[-1] < loss[0]


def test_trial_steps_are_the_step_functions(backend):
    start, objective = _problem(((6, 7, 8), (2, 3, 3)), seed=5, decades=6)
    G = objective.grad(start.to_tensor())
    h = 0.3
    cases = {
        "tdlrt": ({"tol": 0.01}, lambda: tf.tdlrt_step(start, G, h, tol=0.01)[0]),
        "parallel_bug": (
            {"rank": (2, 3, 3)},
            lambda: tf.parallel_bug_step(start, G, h, rank=(2, 3, 3))[0],
        ),
        "rgd": ({}, lambda: tf.rgd_step(start, G, h)[0]),
        "vanilla": ({}, lambda: tf.vanilla_step(start, G, h)[0]),
    }
    for method, (options, reference) in cases.items():
        trial = prepare(method, start, G, options).trial(h)
        np.testing.assert_allclose(
            dense(trial), dense(reference()), atol=1e-10, err_msg=method
        )
    factors = prepare("rgd", start, G, {"retraction": "factors"}).trial(h)
    np.testing.assert_allclose(
        dense(factors),
        dense(tf.rgd_step(start, G, h, retraction="factors")[0]),
        atol=1e-10,
    )


def test_line_search_needs_no_step_size_and_counts_its_evaluations(backend):
    A = tf.random_tucker((10, 11, 12), (3, 3, 3), random_state=0).to_tensor()
    objective = LeastSquares(A)
    start = tf.random_tucker((10, 11, 12), (3, 3, 3), random_state=1)
    calls = []

    def counted(W):
        calls.append(1)
        return objective(W)

    result = tf.integrate(
        counted, start, method="rgd", steps=50, line_search="armijo", grad_rtol=1e-9
    )
    assert result.reason == "grad_rtol" and result.history.loss[-1] < 1e-12
    assert result.evaluations == len(calls) == 1 + sum(result.history.evaluations)
    assert len(result.history.grad_norm) == len(result.history.loss)
    assert min(result.history.evaluations) >= 1
    fixed = tf.integrate(counted, start, method="rgd", lr=0.5, steps=3)
    assert fixed.evaluations == sum(fixed.history.evaluations) + 1 == 4
    assert fixed.history.grad_norm == []


@pytest.mark.parametrize("initial", ["bb", "bb1", "bb2", "previous", "lr"])
def test_every_initial_step_rule_converges(backend, initial):
    A = tf.random_tucker((9, 10, 11), (2, 3, 2), random_state=0).to_tensor()
    weights = tl.tensor(
        np.random.default_rng(0).uniform(0.5, 2.0, (9, 10, 11)), dtype=A.dtype
    )
    objective = LeastSquares(A, weights)
    start = tf.random_tucker((9, 10, 11), (2, 3, 2), random_state=1)
    result = tf.integrate(
        objective,
        start,
        method="parallel_bug",
        rank=(2, 3, 2),
        lr=0.25,
        steps=300,
        line_search=tf.Armijo(initial=initial),
        grad_rtol=1e-6,
    )
    assert result.reason == "grad_rtol"
    if initial == "lr":
        assert set(result.history.lr) <= {0.25 * 0.5**j for j in range(26)}


def test_the_first_trial_is_lr_when_given(backend):
    A = tf.random_tucker((6, 6, 6), (2, 2, 2), random_state=0).to_tensor()
    start = tf.random_tucker((6, 6, 6), (2, 2, 2), random_state=1)
    result = tf.integrate(
        LeastSquares(A), start, method="rgd", lr=0.7, steps=1, line_search="armijo"
    )
    assert result.history.lr == [0.7]


def test_no_acceptable_step_stops_at_the_last_point(backend):
    objective, start = (
        LeastSquares(
            tf.random_tucker((6, 7, 8), (2, 2, 2), random_state=0).to_tensor()
        ),
        tf.random_tucker((6, 7, 8), (2, 2, 2), random_state=1),
    )
    calls = []

    def nan_elsewhere(W):
        calls.append(1)
        value, grad = objective(W)
        return (value if len(calls) == 1 else float("nan")), grad

    result = tf.integrate(
        nan_elsewhere,
        start,
        method="rgd",
        steps=5,
        line_search=tf.Armijo(max_backtracks=3),
    )
    assert result.reason == "line_search" and result.steps == 0
    assert len(calls) == 1 + 4  # the start, then 4 rejected trials
    np.testing.assert_array_equal(dense(result.tucker), dense(start))
    assert len(result.history.loss) == len(result.history.grad_norm) == 1


def test_bug_counts_its_second_gradients(backend):
    A = tf.random_tucker((6, 7, 8), (2, 2, 2), random_state=0).to_tensor()
    start = tf.random_tucker((6, 7, 8), (2, 2, 2), random_state=1)
    result = tf.integrate(
        LeastSquares(A), start, method="bug", steps=4, line_search="armijo"
    )
    # every trial: the second gradient, then the trial point's value
    assert all(count % 2 == 0 for count in result.history.evaluations)
    assert result.evaluations == 1 + sum(result.history.evaluations)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"c": 0.0}, ValueError, r"Armijo.c must lie in \(0, 1\)"),
        ({"shrink": 1.0}, ValueError, r"Armijo.shrink must lie in \(0, 1\)"),
        ({"c": "x"}, TypeError, "Armijo.c must be a real number"),
        ({"max_backtracks": -1}, ValueError, "max_backtracks must be >= 0"),
        ({"max_backtracks": 2.5}, TypeError, "max_backtracks must be an int"),
        ({"initial": "newton"}, ValueError, "Armijo.initial must be one of"),
    ],
)
def test_bad_armijo_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        tf.Armijo(**kwargs)


def test_float32_search_stays_in_float32():
    start, objective = _problem(((6, 7, 8), (2, 2, 2)), 0, 3, dtype=tl.float32)
    result = tf.integrate(
        objective, start, method="tdlrt", tol=0.05, steps=5, line_search="armijo"
    )
    assert to_np(result.tucker.core).dtype == np.float64  # to_np converts
    assert result.tucker.core.dtype == start.core.dtype
