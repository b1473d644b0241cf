"""Riemannian conjugate gradients (integrate(method="rcg")) and the K-form tangent
vectors behind it: the first step is steepest descent, the direction restarts when
the ranks change or it is no descent direction, and the vector transport is the
orthogonal projection onto the new tangent space."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import LeastSquares, dense, to_np

import tuckerflow as tf
from tuckerflow.contractions import GradientContractions
from tuckerflow.integrators._search import (
    Frame,
    KTangent,
    prepare,
    project_tucker,
    riemannian_gradient,
    tangent_tucker,
    tucker_inner,
)
from tuckerflow.integrators.linesearch import Armijo, Searcher


def _weighted(shape=(9, 10, 11), rank=(3, 3, 3), spread=10.0, seed=0):
    A = tf.random_tucker(shape, rank, random_state=seed).to_tensor()
    rng = np.random.default_rng(seed)
    weights = tl.tensor(
        np.exp(rng.uniform(-0.5, 0.5, shape) * np.log(spread)), dtype=A.dtype
    )
    return LeastSquares(A, weights), tf.random_tucker(
        shape, rank, random_state=seed + 1
    )


def _k_dense(frame, tangent):
    core, bases = tangent_tucker(frame, tangent)
    return tl.tucker_tensor.tucker_to_tensor((core, bases))


def test_k_form_gradient_is_the_projection(backend):
    objective, start = _weighted()
    G = objective.grad(start.to_tensor())
    frame = Frame.at(start.core, start.factors)
    xi = riemannian_gradient(frame, GradientContractions(G, start.factors))
    expected = tf.tangent_to_tensor(start, tf.project(start, G))
    np.testing.assert_allclose(to_np(_k_dense(frame, xi)), to_np(expected), atol=1e-10)
    assert np.sqrt(xi.sqnorm()) == pytest.approx(tf.projected_norm(start, G), rel=1e-12)
    pair = tangent_tucker(frame, xi)
    assert tucker_inner(pair, pair) == pytest.approx(xi.sqnorm(), rel=1e-10)


def test_transport_is_the_projection_onto_the_new_tangent_space(backend):
    objective, start = _weighted()
    G = objective.grad(start.to_tensor())
    frame = Frame.at(start.core, start.factors)
    xi = riemannian_gradient(frame, GradientContractions(G, start.factors))
    other = tf.random_tucker((9, 10, 11), (2, 4, 3), random_state=7)  # other ranks
    there = Frame.at(other.core, other.factors)
    moved = project_tucker(there, tangent_tucker(frame, xi))
    expected = tf.tangent_to_tensor(other, tf.project(other, _k_dense(frame, xi)))
    np.testing.assert_allclose(
        to_np(_k_dense(there, moved)), to_np(expected), atol=1e-10
    )


def test_the_first_step_is_steepest_descent(backend):
    objective, start = _weighted()
    options = {"steps": 1, "rank": (3, 3, 3)}
    cg = tf.integrate(objective, start, method="rcg", **options)
    sd = tf.integrate(
        objective, start, method="parallel_bug", line_search=Armijo(), **options
    )
    assert cg.history.lr == sd.history.lr
    np.testing.assert_allclose(dense(cg.tucker), dense(sd.tucker), atol=1e-12)


def _searcher(beta):
    return Searcher(
        Armijo(),
        schedule=None,
        evaluate=lambda point: (0.0, None),
        options={},
        beta=beta,
    )


def _prepared(tucker, objective):
    return prepare("rcg", tucker, objective.grad(tucker.to_tensor()), {})


@pytest.mark.parametrize("beta", ["pr+", "fr"])
def test_the_direction_restarts_when_the_ranks_change(backend, beta):
    objective, start = _weighted()
    searcher = _searcher(beta)
    searcher.evaluate = lambda point: objective(point.to_tensor())
    first = _prepared(start, objective)
    value = objective.value(start.to_tensor())
    outcome = searcher.search(0, start, value, first)
    assert outcome.restarted  # nothing to be conjugate to
    second = _prepared(outcome.tucker, objective)
    direction, slope, restarted = searcher._direction(
        second, *searcher._transported(second)
    )
    assert direction is not None and not restarted and slope < 0
    grown = tf.random_tucker((9, 10, 11), (4, 3, 3), random_state=3)
    other = _prepared(grown, objective)
    direction, slope, restarted = searcher._direction(
        other, *searcher._transported(other)
    )
    assert direction is None and restarted
    assert slope == pytest.approx(-other.grad_sqnorm)


def test_the_direction_restarts_when_it_is_no_descent_direction(backend):
    objective, start = _weighted()
    searcher = _searcher("fr")
    searcher.evaluate = lambda point: objective(point.to_tensor())
    value = objective.value(start.to_tensor())
    outcome = searcher.search(0, start, value, _prepared(start, objective))
    here = _prepared(outcome.tucker, objective)
    # the previous direction pointing uphill, with a huge Fletcher-Reeves beta
    memory = searcher.memory
    moved_gradient, _ = searcher._transported(here)
    uphill = 1.0 if here.gradient.dot(moved_gradient) > 0 else -1.0
    memory.direction = memory.gradient.scaled(uphill)
    memory.grad_sqnorm = 1e-12 * here.grad_sqnorm
    direction, slope, restarted = searcher._direction(
        here, *searcher._transported(here)
    )
    assert direction is None and restarted
    assert slope == pytest.approx(-here.grad_sqnorm)


def test_polak_ribiere_plus_never_goes_negative(backend):
    objective, start = _weighted()
    searcher = _searcher("pr+")
    searcher.evaluate = lambda point: objective(point.to_tensor())
    value = objective.value(start.to_tensor())
    outcome = searcher.search(0, start, value, _prepared(start, objective))
    here = _prepared(outcome.tucker, objective)
    # a previous gradient far larger than the current one along it: beta_PR < 0
    memory = searcher.memory
    moved_gradient, _ = searcher._transported(here)
    sign = 1.0 if here.gradient.dot(moved_gradient) > 0 else -1.0
    memory.gradient_tucker = (
        memory.gradient_tucker[0] * (1e3 * sign),
        memory.gradient_tucker[1],
    )
    moved_gradient, moved_direction = searcher._transported(here)
    assert here.grad_sqnorm - here.gradient.dot(moved_gradient) < 0
    direction, _, restarted = searcher._direction(here, moved_gradient, moved_direction)
    assert restarted  # beta clipped to 0: the steepest direction
    np.testing.assert_allclose(
        to_np(direction.core), -to_np(here.gradient.core), atol=1e-14
    )


def test_conjugate_gradients_beat_steepest_descent_on_an_ill_conditioned_fit(
    backend,
):
    objective, start = _weighted(spread=30.0)
    options = {"steps": 500, "rank": (3, 3, 3), "grad_rtol": 1e-8}
    cg = tf.integrate(objective, start, method="rcg", **options)
    sd = tf.integrate(
        objective,
        start,
        method="parallel_bug",
        line_search=Armijo(initial="previous"),
        **options,
    )
    assert cg.reason == "grad_rtol"
    assert cg.steps < sd.steps


@pytest.mark.parametrize("beta", ["pr+", "fr"])
def test_rank_adaptive_cg_finds_the_rank(backend, beta):
    A = tf.random_tucker((8, 9, 10), (3, 2, 3), random_state=0).to_tensor()
    start = tf.random_tucker((8, 9, 10), (1, 1, 1), random_state=1)
    result = tf.integrate(
        LeastSquares(A),
        start,
        method="rcg",
        beta=beta,
        tol=1e-6,
        steps=100,
        grad_rtol=1e-9,
    )
    assert result.reason == "grad_rtol" and result.tucker.rank == (3, 2, 3)
    assert isinstance(result.history.grad_norm[0], float)
    assert KTangent  # the K-form tangent is what the directions are stored in
