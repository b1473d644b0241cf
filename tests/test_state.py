"""Optimizer state through basis changes and truncation (the rule in
:mod:`tuckerflow.integrators.state`)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import LeastSquares, dense, to_np

import tuckerflow as tf
from tuckerflow.integrators.state import k_coordinate_change


def _weighted_problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    target = tl.tensor(rng.standard_normal(shape), dtype=tl.backend.float64)
    weights = tl.tensor(rng.uniform(0.5, 1.5, shape), dtype=tl.backend.float64)
    return LeastSquares(target, weights)


@pytest.mark.parametrize("nesterov", [False, True])
def test_full_rank_momentum_is_dense_heavy_ball(backend, nesterov):
    """With r_i = n_i the manifold is the whole space: TDLRT + momentum reproduces dense
    momentum SGD step for step (the bases rotate every step; the state follows)."""
    shape = (4, 5, 6)
    objective = _weighted_problem(shape)
    Y = tf.random_tucker(shape, shape, random_state=3)
    state = tf.Momentum.init(Y, 0.8, nesterov=nesterov)
    W, buffer = to_np(Y.to_tensor()), np.zeros(shape)
    for _ in range(12):
        Y, state = tf.tdlrt_step(
            Y, objective.grad(Y.to_tensor()), 0.1, tol=0.0, state=state
        )
        g = to_np(objective.grad(tl.tensor(W)))
        buffer = 0.8 * buffer + g
        W = W - 0.1 * (g + 0.8 * buffer if nesterov else buffer)
    np.testing.assert_allclose(dense(Y), W, atol=1e-12)


def test_zero_beta_momentum_is_plain_sgd(backend):
    objective = _weighted_problem((6, 7, 8))
    Y = tf.random_tucker((6, 7, 8), (2, 3, 2), random_state=0)
    plain, with_state = Y, Y
    state = tf.Momentum.init(Y, 0.0)
    for _ in range(5):
        plain, _ = tf.tdlrt_step(
            plain, objective.grad(plain.to_tensor()), 0.2, tol=0.05
        )
        with_state, state = tf.tdlrt_step(
            with_state,
            objective.grad(with_state.to_tensor()),
            0.2,
            tol=0.05,
            state=state,
        )
    assert plain.rank == with_state.rank
    np.testing.assert_allclose(dense(plain), dense(with_state), atol=1e-12)


def test_core_momentum_is_the_step_taken_then_projected(backend):
    """TDLRT: without truncation (tol = 0) the ambient core momentum after a step is
    exactly (Y0 - Y1) / h; with truncation it is that tensor projected onto the new
    bases."""
    objective = _weighted_problem((7, 8, 9))
    Y = tf.random_tucker((7, 8, 9), (2, 3, 2), random_state=0)
    state = tf.Momentum.init(Y, 0.7)
    for _ in range(3):  # build up a history
        Y, state = tf.tdlrt_step(
            Y, objective.grad(Y.to_tensor()), 0.1, tol=0.1, max_rank=4, state=state
        )
    G = objective.grad(Y.to_tensor())
    h = 0.1
    exact, exact_state = tf.tdlrt_step(Y, G, h, tol=0.0, state=state)
    step = (dense(Y) - dense(exact)) / h
    ambient = to_np(tl.tenalg.multi_mode_dot(exact_state.core, exact.factors))
    np.testing.assert_allclose(ambient, step, atol=1e-10 * np.abs(step).max())

    cut, cut_state = tf.tdlrt_step(Y, G, h, rank=2, state=state)
    assert sum(cut.rank) < sum(exact.rank)
    projected = _project(step, cut.factors)
    ambient = to_np(tl.tenalg.multi_mode_dot(cut_state.core, cut.factors))
    np.testing.assert_allclose(ambient, projected, atol=1e-10 * np.abs(step).max())


def test_parallel_bug_core_momentum_is_the_old_block_of_the_step(backend):
    """Parallel BUG updates the core in the old bases only (new directions come from the
    K-steps), so its core momentum is the step projected onto the old bases."""
    objective = _weighted_problem((7, 8, 9))
    Y = tf.random_tucker((7, 8, 9), (2, 3, 2), random_state=0)
    state = tf.Momentum.init(Y, 0.7)
    for _ in range(3):
        Y, state = tf.parallel_bug_step(
            Y, objective.grad(Y.to_tensor()), 0.1, tol=0.1, max_rank=4, state=state
        )
    h = 0.1
    new, new_state = tf.parallel_bug_step(
        Y, objective.grad(Y.to_tensor()), h, tol=0.0, state=state
    )
    step = (dense(Y) - dense(new)) / h
    ambient = to_np(tl.tenalg.multi_mode_dot(new_state.core, new.factors))
    expected = _project(step, Y.factors)
    np.testing.assert_allclose(ambient, expected, atol=1e-10 * np.abs(step).max())


def _project(tensor, factors):
    projectors = [tl.tensor(to_np(U) @ to_np(U).T) for U in factors]
    return to_np(tl.tenalg.multi_mode_dot(tl.tensor(tensor), projectors))


def test_k_coordinate_change_matches_explicit_kronecker_products():
    rng = np.random.default_rng(0)
    shape, old_rank, new_rank = (5, 4, 3), (2, 3, 2), (3, 2, 2)

    def orth(rows, cols):
        return np.linalg.qr(rng.standard_normal((rows, cols)))[0]

    old_u = [orth(n, r) for n, r in zip(shape, old_rank)]
    new_u = [orth(n, r) for n, r in zip(shape, new_rank)]
    old_q, new_q = [], []
    for mode in range(3):
        m_old = int(np.prod([r for j, r in enumerate(old_rank) if j != mode]))
        m_new = int(np.prod([r for j, r in enumerate(new_rank) if j != mode]))
        old_q.append(orth(m_old, min(old_rank[mode], m_old)))
        new_q.append(orth(m_new, min(new_rank[mode], m_new)))
    changes = k_coordinate_change(old_q, old_u, new_q, new_u)
    for mode in range(3):
        others = [j for j in range(3) if j != mode]
        kron_old = np.kron(old_u[others[0]], old_u[others[1]])
        kron_new = np.kron(new_u[others[0]], new_u[others[1]])
        expected = (kron_old @ old_q[mode]).T @ (kron_new @ new_q[mode])
        np.testing.assert_allclose(to_np(changes[mode]), expected, atol=1e-13)


def test_second_moments_follow_as_diagonal_covariances():
    """v -> (T∘T) v: total variance kept by square orthogonal maps, zeros for new
    directions on a lift, and never negative."""
    from tuckerflow.integrators.state import _transform_core

    rng = np.random.default_rng(0)
    v = tl.tensor(rng.uniform(0, 1, (3, 4)))
    rotations = [np.linalg.qr(rng.standard_normal((n, n)))[0] for n in (3, 4)]
    rotated = to_np(_transform_core(v, [tl.tensor(R) for R in rotations], squared=True))
    assert abs(rotated.sum() - to_np(v).sum()) < 1e-12 and rotated.min() >= 0
    padding = [tl.tensor(np.eye(5, 3)), tl.tensor(np.eye(6, 4))]
    lifted = to_np(_transform_core(v, padding, squared=True))
    np.testing.assert_array_equal(lifted[:3, :4], to_np(v))
    assert np.all(lifted[3:] == 0) and np.all(lifted[:, 4:] == 0)


def test_adam_trains_and_keeps_consistent_state(backend):
    target = tf.random_tucker((8, 9, 10), (4, 4, 4), random_state=0).to_tensor()
    objective = LeastSquares(target)
    Y = tf.random_tucker((8, 9, 10), (2, 2, 2), random_state=1)
    state = tf.Adam.init(Y)
    start = objective.value(Y.to_tensor())
    for step in range(40):
        Y, state = tf.tdlrt_step(
            Y, objective.grad(Y.to_tensor()), 0.05, tol=0.05, max_rank=6, state=state
        )
        assert state.count == step + 1
        state.check(Y.core, Y.factors)  # buffers follow every rank change
        assert (
            min(to_np(state.core_v).min(), *(to_np(v).min() for v in state.bases_v))
            >= 0
        )
    assert objective.value(Y.to_tensor()) < 0.1 * start


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda Y: tf.Momentum.init(Y, 1.0), r"beta must lie in \[0, 1\)"),
        (lambda Y: tf.Adam.init(Y, betas=(0.9, -0.1)), r"betas\[1\] must lie in"),
        (lambda Y: tf.Adam.init(Y, eps=0.0), "eps must be finite and > 0"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build(tf.random_tucker((4, 5, 6), 2))
