"""Rank growth (integrators/growth.py): growth from points stationary for their rank,
the normal directions against an independent SVD, the option off, the guards."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import eps_of, to_np, unfold_np

import tuckerflow as tf
from tuckerflow.integrators._search import to_dense
from tuckerflow.integrators.growth import Monitor


def _orthonormal(rng, rows, cols):
    return np.linalg.qr(rng.standard_normal((rows, cols)))[0]


def _diagonal_target(shape=(9, 8, 7), values=(3.0, 2.0, 0.8), seed=0):
    """``A = sum_k values[k] a_k x b_k x c_k`` with orthonormal a, b, c, and the
    exact best rank-1 fit ``values[0] a_0 x b_0 x c_0`` (a diagonal core: every
    K-gradient at that fit is zero, so it is stationary for rank (1, 1, 1))."""
    rng = np.random.default_rng(seed)
    rank = len(values)
    factors = [_orthonormal(rng, n, rank) for n in shape]
    core = np.zeros((rank,) * len(shape))
    for k, value in enumerate(values):
        core[(k,) * len(shape)] = value
    target = tl.tucker_to_tensor((tl.tensor(core), [tl.tensor(f) for f in factors]))
    start = (
        tl.tensor(np.full((1,) * len(shape), values[0])),
        [tl.tensor(f[:, :1]) for f in factors],
    )
    return tl.tensor(to_np(target)), start


def _least_squares(target):
    def objective(W):
        residual = W - target
        return 0.5 * float(tl.to_numpy(tl.sum(residual * residual))), residual

    return objective


@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug", "rcg"])
def test_grows_from_a_point_stationary_for_its_rank(backend, method):
    target, start = _diagonal_target()
    objective = _least_squares(target)
    _, grad = objective(tl.tucker_to_tensor(start))
    # stationary for rank 1: the Riemannian gradient vanishes, the gradient does not
    assert tf.projected_norm(start, grad) < 1e-12
    assert float(tl.norm(grad)) > 2.0
    options = {"method": method, "steps": 12, "tol": 1e-6}
    if method != "rcg":
        options["lr"] = 1.0
    old = tf.integrate(objective, start, **options)
    new = tf.integrate(objective, start, rank_growth=True, **options)
    if method != "tdlrt":
        # zero K-directions: the parallel-BUG blocks are zero, nothing can grow.
        # (TDLRT's Householder completion of the zero directions is arbitrary; on
        # this small tensor it happens to overlap the normal directions.)
        assert old.tucker.rank == (1, 1, 1)
        assert old.history.loss[-1] == pytest.approx(old.history.loss[0], rel=1e-10)
    assert new.tucker.rank == (3, 3, 3)
    assert new.history.loss[-1] < 1e-20 * new.history.loss[0]
    # normal spectrum (2, 0.8) then (0.8): the second direction is below the floor
    # (half the steepest) at the first growth, so each growth adds one direction
    for before, after in zip(new.history.ranks, new.history.ranks[1:]):
        assert all(0 <= b - a <= 1 for a, b in zip(before, after))


def test_normal_directions_match_numpy_svd(backend, dtype):
    rng = np.random.default_rng(1)
    eps = eps_of(dtype)
    shape, rank, count = (10, 6, 5), 2, 3
    grad_np = rng.standard_normal(shape)
    for mode in range(3):
        n = shape[mode]
        factor_np = _orthonormal(rng, n, rank)
        normal = (np.eye(n) - factor_np @ factor_np.T) @ unfold_np(grad_np, mode)
        left, values, _ = np.linalg.svd(normal)
        grad = tl.tensor(grad_np, dtype=dtype)
        factor = tl.tensor(factor_np, dtype=dtype)
        # oversampling to n - r columns: the subspace iteration is exact
        directions, estimates = tf.normal_directions(
            grad, factor, mode, count, oversampling=n
        )
        directions, estimates = to_np(directions), to_np(estimates)
        assert directions.shape == (n, count) and estimates.shape == (count,)
        # backward-stable products and factorizations: errors of eps * ||M||, the
        # vectors' divided by the gap to the next singular value (Wedin)
        scale = values[0] * 50 * eps
        np.testing.assert_allclose(estimates, values[:count], atol=scale)
        gap = min(values[k] - values[k + 1] for k in range(count))
        overlap = np.abs(directions.T @ left[:, :count])
        np.testing.assert_allclose(overlap, np.eye(count), atol=scale / gap)
        np.testing.assert_allclose(
            directions.T @ directions, np.eye(count), atol=20 * eps
        )
        assert np.abs(factor_np.T @ directions).max() < 20 * eps


def test_normal_directions_approximate_with_power_steps(backend):
    """Fewer columns than the rank: lower bounds that tighten with power steps."""
    rng = np.random.default_rng(2)
    grad_np = rng.standard_normal((40, 30))
    factor_np = _orthonormal(rng, 40, 3)
    values = np.linalg.svd((np.eye(40) - factor_np @ factor_np.T) @ grad_np)[1]
    errors = []
    for steps in (1, 4):
        estimates = to_np(
            tf.normal_directions(
                tl.tensor(grad_np),
                tl.tensor(factor_np),
                0,
                2,
                oversampling=2,
                power_steps=steps,
            )[1]
        )
        assert np.all(estimates <= values[:2] * (1 + 1e-12))
        errors.append(np.max(values[:2] - estimates))
    assert errors[1] < errors[0]


@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug"])
def test_off_is_bit_for_bit_the_step_functions(backend, method):
    target = tf.random_tucker((8, 7, 6), (3, 3, 2), random_state=0).to_tensor()
    objective = _least_squares(target)
    start = tf.random_tucker((8, 7, 6), (1, 1, 1), random_state=1)
    step = tf.tdlrt_step if method == "tdlrt" else tf.parallel_bug_step
    for off in (None, False):
        result = tf.integrate(
            objective, start, method=method, lr=0.7, steps=6, tol=0.05, rank_growth=off
        )
        point = start
        for _ in range(6):
            point, _ = step(point, objective(to_dense(point))[1], 0.7, tol=0.05)
        assert result.tucker.rank == point.rank
        assert np.array_equal(to_np(result.tucker.core), to_np(point.core))
        for a, b in zip(result.tucker.factors, point.factors, strict=True):
            assert np.array_equal(to_np(a), to_np(b))


def test_growth_respects_max_rank_and_matrix_ranks(backend):
    rng = np.random.default_rng(3)
    target = tl.tensor(rng.standard_normal((12, 5)) @ rng.standard_normal((5, 10)))
    start = tf.random_tucker((12, 10), (1, 1), random_state=4)
    result = tf.integrate(
        _least_squares(target),
        start,
        method="rcg",
        steps=60,
        tol=1e-8,
        max_rank=3,
        rank_growth=tf.RankGrowth(ratio=0.1),
    )
    assert all(r1 == r2 <= 3 for r1, r2 in result.history.ranks)
    assert result.tucker.rank == (3, 3)


def test_growth_guards():
    with pytest.raises(ValueError, match="ratio"):
        tf.RankGrowth(ratio=0.0)
    with pytest.raises(ValueError, match="power_steps"):
        tf.RankGrowth(power_steps=0)
    with pytest.raises(TypeError, match="stationarity"):
        tf.RankGrowth(stationarity="high")
    target = tf.random_tucker((6, 6, 6), (2, 2, 2), random_state=0).to_tensor()
    start = tf.random_tucker((6, 6, 6), (1, 1, 1), random_state=1)
    objective = _least_squares(target)
    with pytest.raises(ValueError, match="rgd"):
        tf.integrate(objective, start, method="rgd", lr=1.0, steps=1, tol=0.1,
                     rank_growth=True)  # fmt: skip
    with pytest.raises(ValueError, match="tol or budget"):
        tf.integrate(objective, start, lr=1.0, steps=1, rank=(1, 1, 1),
                     rank_growth=True)  # fmt: skip
    with pytest.raises(TypeError, match="rank_growth"):
        tf.integrate(objective, start, lr=1.0, steps=1, tol=0.1, rank_growth="yes")
    with pytest.raises(ValueError, match="count"):
        tf.normal_directions(start.to_tensor(), start.factors[0], 0, 6)


def test_monitor_does_not_grow_a_moving_point():
    """Far from stationary (the Riemannian gradient dominates): no growth."""
    target = tf.random_tucker((8, 8, 8), (2, 2, 2), random_state=0).to_tensor()
    start = tf.random_tucker((8, 8, 8), (2, 2, 2), random_state=1)
    _, grad = _least_squares(target)(start.to_tensor())
    plan = Monitor(tf.RankGrowth(stationarity=0.3)).plan(
        grad, start.factors, 1e6, (8, 8, 8)
    )
    assert not plan.grows


def _normal_plan(values, shape, config=None):
    """The growth plan at the exact rank-1 fit of a diagonal target."""
    target, start = _diagonal_target(shape=shape, values=values)
    _, grad = _least_squares(target)(tl.tucker_to_tensor(start))
    return Monitor(config or tf.RankGrowth()).plan(grad, start[1], 0.0, shape)


def test_growth_adds_every_direction_above_a_gap(backend):
    """Three equally steep missing directions, then nothing: one growth adds all
    three in every mode (the gap rule), not one at a time."""
    plan = _normal_plan((3.0, 1.0, 1.0, 1.0), (9, 8, 7))
    assert plan.extra == (3, 3, 3)
    for directions in plan.directions:
        assert to_np(directions).shape[1] == 3
    # a small second group below the floor (a tenth of the steepest): still three
    plan = _normal_plan((3.0, 1.0, 1.0, 1.0, 0.1, 0.1), (9, 8, 7))
    assert plan.extra == (3, 3, 3)


def test_growth_without_a_gap_stays_greedy(backend):
    """A smooth normal spectrum (ratio 1/0.93 between neighbours, below the gap
    1.1, down past the floor): only the directions within ``ratio`` of the
    steepest, as the greedy rule adds."""
    values = (3.0, *(0.93**k for k in range(11)))
    plan = _normal_plan(values, (14, 13, 12))
    assert plan.extra == (2, 2, 2)  # 1 and 0.93 >= 0.9; 0.865 is not
    # ratio near 1: one direction per mode (the greedy rank-one update)
    plan = _normal_plan(values, (14, 13, 12), tf.RankGrowth(ratio=0.99, gap=2.0))
    assert plan.extra == (1, 1, 1)


def test_undone_growth_is_not_retried_at_once():
    """A growth whose new directions the step drops again (the ranks come back):
    no growth at those ranks for ``refresh`` iterations, then twice as long."""
    target, start = _diagonal_target(values=(3.0, 1.0, 1.0, 1.0))
    _, grad = _least_squares(target)(tl.tucker_to_tensor(start))
    monitor = Monitor(tf.RankGrowth(refresh=3))
    caps = (9, 8, 7)
    assert monitor.plan(grad, start[1], 0.0, caps).grows
    grown = []
    for _ in range(12):  # the same point again: the growth was undone
        grown.append(monitor.plan(grad, start[1], 0.0, caps).grows)
    assert grown[:3] == [False] * 3 and grown[3]
    assert grown[4:10] == [False] * 6 and grown[10]
