"""P1: the tangent-space projection is an orthogonal projector (docs/concepts.rst).

Rounding: the factor components are ``(I - UU^T) A pinv(C_(i))``, so the error of a
projection is about ``eps * kappa * ||Z||`` with ``kappa`` the largest condition number
of the core unfoldings. Tolerances are ``100 d eps kappa ||Z||``; examples with
``kappa > 1e3`` are left to the ill-conditioning tests of the integrators.
"""

from __future__ import annotations

import numpy as np
import tensorly as tl
from helpers import core_condition, dense, eps_of, randn, shapes_and_ranks, to_np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tuckerflow as tf


def _setup(data, seed, dtype):
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed, dtype=dtype)
    kappa = core_condition(Y)
    assume(kappa < 1e3)
    tolerance = 100 * len(shape) * eps_of(dtype) * kappa
    return Y, tolerance


def _as_dense(Y, xi):
    return to_np(tf.tangent_to_tensor(Y, xi))


@settings(max_examples=30)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_idempotent_and_norm_non_increasing(backend, dtype, data, seed):
    Y, tolerance = _setup(data, seed, dtype)
    Z = randn(data[0], seed=seed + 1, dtype=dtype)
    PZ = tf.tangent_to_tensor(Y, tf.project(Y, Z))
    PPZ = tf.tangent_to_tensor(Y, tf.project(Y, PZ))
    norm_z = np.linalg.norm(to_np(Z))
    assert np.linalg.norm(to_np(PPZ) - to_np(PZ)) <= tolerance * norm_z
    assert np.linalg.norm(to_np(PZ)) <= norm_z * (1 + tolerance)


@settings(max_examples=30)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_self_adjoint(backend, dtype, data, seed):
    Y, tolerance = _setup(data, seed, dtype)
    Z1 = randn(data[0], seed=seed + 1, dtype=dtype)
    Z2 = randn(data[0], seed=seed + 2, dtype=dtype)
    left = float(np.sum(_as_dense(Y, tf.project(Y, Z1)) * to_np(Z2)))
    right = float(np.sum(to_np(Z1) * _as_dense(Y, tf.project(Y, Z2))))
    scale = np.linalg.norm(to_np(Z1)) * np.linalg.norm(to_np(Z2))
    assert abs(left - right) <= tolerance * scale


@settings(max_examples=30)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_fixes_the_point_and_tangent_vectors(backend, dtype, data, seed):
    Y, tolerance = _setup(data, seed, dtype)
    W = tl.tucker_tensor.tucker_to_tensor(Y)
    PY = _as_dense(Y, tf.project(Y, W))
    assert np.linalg.norm(PY - to_np(W)) <= tolerance * np.linalg.norm(to_np(W))

    xi = tf.random_tangent(Y, random_state=seed + 3)
    X = tf.tangent_to_tensor(Y, xi)
    PX = _as_dense(Y, tf.project(Y, X))
    assert np.linalg.norm(PX - to_np(X)) <= tolerance * np.linalg.norm(to_np(X))


@settings(max_examples=30)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_gauge_and_factored_inner_product(backend, dtype, data, seed):
    Y, tolerance = _setup(data, seed, dtype)
    Z1 = randn(data[0], seed=seed + 1, dtype=dtype)
    Z2 = randn(data[0], seed=seed + 2, dtype=dtype)
    a, b = tf.project(Y, Z1), tf.project(Y, Z2)
    for U, dU in zip(Y.factors, a.factors):
        gauge = to_np(U).T @ to_np(dU)
        assert np.abs(gauge).max() <= tolerance * np.linalg.norm(to_np(Z1))
    dense_inner = float(np.sum(_as_dense(Y, a) * _as_dense(Y, b)))
    scale = np.linalg.norm(to_np(Z1)) * np.linalg.norm(to_np(Z2))
    assert abs(tf.inner(Y, a, b) - dense_inner) <= tolerance * scale
    # and the projection is the closest tangent vector: <Z - PZ, PZ> = 0
    residual = to_np(Z1) - _as_dense(Y, a)
    assert abs(float(np.sum(residual * _as_dense(Y, a)))) <= tolerance * scale


def test_projection_of_the_gradient_is_the_riemannian_gradient(backend):
    """For f(W) = <A, W>, the Riemannian gradient's inner product with any tangent
    vector equals the directional derivative <A, xi>."""
    Y = tf.random_tucker((5, 6, 7), (2, 3, 2), random_state=0)
    A = randn((5, 6, 7), seed=1, dtype=tl.backend.float64)
    riemannian = tf.project(Y, A)
    for seed in range(3):
        xi = tf.random_tangent(Y, random_state=seed)
        directional = float(np.sum(to_np(A) * _as_dense(Y, xi)))
        assert abs(tf.inner(Y, riemannian, xi) - directional) <= 1e-10 * (
            1 + abs(directional)
        )


def test_tangent_vector_arithmetic(backend):
    Y = tf.random_tucker((4, 5, 6), (2, 2, 3), random_state=0)
    a = tf.random_tangent(Y, random_state=1)
    b = tf.random_tangent(Y, random_state=2)
    combined = _as_dense(Y, 2.0 * a - b + (-a))
    expected = _as_dense(Y, a) - _as_dense(Y, b)
    np.testing.assert_allclose(combined, expected, atol=1e-12)
    assert dense(Y).shape == (4, 5, 6)
