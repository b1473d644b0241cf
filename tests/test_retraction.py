"""Retraction: orthonormal output, first order, and P8 invariants over long chains."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import core_condition, dense, eps_of, shapes_and_ranks, to_np, unfold_np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow._checks import orthonormality_error


def _retraction_gap(Y, xi, t):
    moved = tf.retract(Y, t * xi)
    linear = dense(Y) + t * to_np(tf.tangent_to_tensor(Y, xi))
    return np.linalg.norm(dense(moved) - linear)


@settings(max_examples=25)
@given(data=shapes_and_ranks(min_size=3), seed=st.integers(0, 2**16))
def test_first_order_error_shrinks_like_t_squared(backend, data, seed):
    """||R(Y, t xi) - (Y + t xi)|| = O(t^2): halving t divides the gap by ~4.

    The expansion holds for ``t ||xi|| << sigma_min`` (the smallest singular value of
    the core unfoldings: the manifold's curvature is ``1 / sigma_min``), so the steps
    are ``t = c sigma_min`` with ``||xi|| = 1``. Consecutive ratios then lie within
    [3, 5] (4 plus the relative O(c) size of the third-order terms).
    """
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed)
    sigma_min = (
        1.0
        / core_condition(Y)
        * max(
            np.linalg.svd(unfold_np(to_np(Y.core), m), compute_uv=False)[0]
            for m in range(len(shape))
        )
    )
    assume(sigma_min > 1e-5 * np.linalg.norm(to_np(Y.core)))
    xi = tf.random_tangent(Y, random_state=seed + 1)
    scale = np.linalg.norm(to_np(tf.tangent_to_tensor(Y, xi)))
    xi = (1.0 / scale) * xi
    gaps = [_retraction_gap(Y, xi, c * sigma_min) for c in (4e-2, 2e-2, 1e-2)]
    if gaps[0] < 1e-13:  # xi happens to keep Y + t xi on the manifold
        assert max(gaps) < 1e-13
        return
    ratios = [gaps[0] / gaps[1], gaps[1] / gaps[2]]
    assert all(3.0 <= r <= 5.0 for r in ratios), (gaps, ratios)


@settings(max_examples=30)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16), step=st.floats(0, 10))
def test_output_is_orthonormal_with_requested_rank(backend, dtype, data, seed, step):
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed, dtype=dtype)
    xi = step * tf.random_tangent(Y, random_state=seed + 1)
    result = tf.retract(Y, xi)
    assert result.rank == rank
    for factor in result.factors:
        assert orthonormality_error(factor) <= 10 * max(shape) * eps_of(dtype)


def test_zero_step_returns_the_point(backend, dtype):
    Y = tf.random_tucker((5, 6, 7), (2, 3, 3), random_state=0, dtype=dtype)
    result = tf.retract(Y, 0.0 * tf.random_tangent(Y, random_state=1))
    scale = np.linalg.norm(dense(Y))
    assert np.linalg.norm(dense(result) - dense(Y)) <= 100 * eps_of(dtype) * scale


def test_rank_adaptive_retraction(backend):
    """Y + xi with xi pointing to a rank-(r+1) tensor: tol=0 keeps the growth."""
    Y = tf.random_tucker((6, 6, 6), (2, 2, 2), random_state=0)
    xi = tf.random_tangent(Y, random_state=1)
    grown = tf.retract(Y, xi, tol=0.0)
    assert all(r >= 2 for r in grown.rank)
    target = dense(Y) + to_np(tf.tangent_to_tensor(Y, xi))
    assert np.linalg.norm(dense(grown) - target) <= 1e-12 * np.linalg.norm(target)
    capped = tf.retract(Y, xi, tol=0.0, max_rank=3)
    assert max(capped.rank) <= 3
    coarse = tf.retract(Y, xi, tol=0.5)
    assert sum(coarse.rank) <= sum(grown.rank)


@pytest.mark.parametrize("precision,bound", [("float64", 1e-12), ("float32", 1e-5)])
def test_p8_invariants_after_1000_random_retractions(backend, precision, bound):
    dtype = getattr(tl.backend, precision)
    Y = tf.random_tucker((7, 6, 5), (3, 2, 3), random_state=0, dtype=dtype)
    rng = np.random.RandomState(1)
    for step in range(1000):
        xi = tf.random_tangent(Y, random_state=rng)
        Y = tf.retract(Y, 0.1 * xi)
        # rescale so the walk neither explodes nor collapses to zero
        Y = tl.tucker_tensor.TuckerTensor((Y.core / tl.norm(Y.core), Y.factors))
        if step % 100 == 99:
            assert Y.rank == (3, 2, 3)
            assert all(orthonormality_error(f) <= bound for f in Y.factors)
            assert np.all(np.isfinite(to_np(Y.core)))
    assert all(orthonormality_error(f) <= bound for f in Y.factors)
