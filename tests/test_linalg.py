"""Guarded thin SVD: the fallbacks used when a LAPACK SVD does not converge.

LAPACK's divide-and-conquer SVD fails only on rare inputs that cannot be constructed
portably, so the failure is injected by replacing ``tl.svd`` with a wrapper that raises
a ``LinAlgError`` for its first calls; the fallbacks themselves run the real backend.
Non-finite input needs no injection: every backend's SVD really fails on it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import eps_of, to_np

import tuckerflow as tf
from tuckerflow import linalg
from tuckerflow.linalg import (
    host_factorizations,
    left_singular,
    pseudo_inverse_rows,
    thin_qr,
    thin_svd,
)


class LinAlgError(Exception):
    """Stands for NumPy's and PyTorch's LinAlgError (matched by name)."""


def _failing_svd(monkeypatch, failures: int) -> list[int]:
    """Make the first ``failures`` calls of ``tl.svd`` raise; returns the call log.

    The backend's own routines are forced (on a GPU "auto" would use NumPy's)."""
    monkeypatch.setattr(linalg, "_on_host", lambda matrix, factorization: False)
    real_svd = tl.svd
    calls = []

    def svd(matrix, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise LinAlgError("SVD did not converge")
        return real_svd(matrix, *args, **kwargs)

    monkeypatch.setattr(tl, "svd", svd)
    return calls


def _matrix(shape, singular_values, *, seed, dtype):
    """``U diag(s) V^T`` with random orthonormal U, V: known singular values."""
    rng = np.random.default_rng(seed)
    k = len(singular_values)
    left = np.linalg.qr(rng.standard_normal((shape[0], k)))[0]
    right = np.linalg.qr(rng.standard_normal((shape[1], k)))[0]
    return tl.tensor(left * np.asarray(singular_values) @ right.T, dtype=dtype)


def _check_svd(matrix, result, *, tol):
    left, values, right_t = (to_np(x) for x in result)
    a = to_np(matrix)
    k = min(a.shape)
    assert left.shape == (a.shape[0], k) and right_t.shape == (k, a.shape[1])
    assert np.all(np.diff(values) <= tol * values[0]), "not decreasing"
    scale = np.linalg.norm(a)
    assert np.linalg.norm(left * values @ right_t - a) <= tol * scale
    assert np.linalg.norm(left.T @ left - np.eye(k)) <= tol
    assert np.linalg.norm(right_t @ right_t.T - np.eye(k)) <= tol
    expected = np.linalg.svd(a, compute_uv=False)
    assert np.max(np.abs(values - expected)) <= tol * scale


@pytest.mark.parametrize("shape", [(9, 5), (5, 9)])
def test_qr_fallback_is_a_backward_stable_svd(backend, dtype, monkeypatch, shape):
    # Householder QR + SVD of R: backward error O(max(m, n) eps ||A||), and by Weyl the
    # singular values move by at most that much; 10 absorbs the constants
    matrix = _matrix(shape, [9.0, 4.0, 1.0, 1e-3, 0.0], seed=0, dtype=dtype)
    calls = _failing_svd(monkeypatch, failures=1)
    result = thin_svd(matrix)
    assert len(calls) == 2  # the failed call, then the SVD of R
    _check_svd(matrix, result, tol=10 * max(shape) * eps_of(dtype))


@pytest.mark.parametrize("shape", [(9, 5), (5, 9)])
def test_gram_fallback_warns_and_is_accurate_for_well_conditioned(
    backend, dtype, monkeypatch, shape
):
    # eigh(A^T A) perturbs sigma_i^2 by O(n eps sigma_max^2): for condition number
    # kappa the relative errors grow like kappa^2 eps; here kappa = 4
    matrix = _matrix(shape, [4.0, 3.0, 2.0, 1.5, 1.0], seed=1, dtype=dtype)
    _failing_svd(monkeypatch, failures=2)
    with pytest.warns(RuntimeWarning, match="Gram matrix"):
        result = thin_svd(matrix)
    _check_svd(matrix, result, tol=10 * max(shape) * 4**2 * eps_of(dtype))


def test_gram_fallback_completes_the_null_space(backend, monkeypatch):
    # rank 2: the three zero singular values get orthonormal (arbitrary) left vectors
    matrix = _matrix((7, 5), [3.0, 1.0], seed=2, dtype=tl.backend.float64)
    _failing_svd(monkeypatch, failures=2)
    with pytest.warns(RuntimeWarning):
        left, values, _ = (to_np(x) for x in thin_svd(matrix))
    assert np.linalg.norm(left.T @ left - np.eye(5)) <= 1e-12
    np.testing.assert_allclose(values[:2], [3.0, 1.0], rtol=1e-12)
    assert np.all(np.abs(values[2:]) <= 1e-7)  # sqrt of O(eps) Gram eigenvalues


def test_callers_use_the_guarded_svd(backend, monkeypatch):
    matrix = _matrix((4, 12), [5.0, 2.0, 1.0, 0.5], seed=3, dtype=tl.backend.float64)
    expected_pinv = np.linalg.pinv(to_np(matrix))
    expected_left = np.linalg.svd(to_np(matrix))[0]
    _failing_svd(monkeypatch, failures=1)
    np.testing.assert_allclose(
        to_np(pseudo_inverse_rows(matrix)), expected_pinv, atol=1e-12
    )
    _failing_svd(monkeypatch, failures=1)
    left, _ = left_singular(matrix)
    np.testing.assert_allclose(
        np.abs(to_np(left).T @ expected_left), np.eye(4), atol=1e-12
    )


@pytest.mark.parametrize("host", [False, True])
def test_non_finite_input_is_named(backend, host):
    values = np.random.default_rng(4).standard_normal((6, 4))
    values[2, 1] = np.nan
    with host_factorizations(host), pytest.raises(ValueError, match="non-finite"):
        thin_svd(tl.tensor(values))


@pytest.mark.parametrize("shape", [(30, 6), (6, 30), (12, 12)])
def test_host_factorizations_compute_the_backends_factorization(backend, dtype, shape):
    # both paths are backward-stable factorizations of the same matrix: singular values
    # agree within O(max(m, n) eps ||A||) (Weyl), and Q, R of the unique QR with
    # diag(R) > 0 within O(max(m, n) eps cond(A)); cond <= 1e2 here, 10 absorbs
    # the constants
    matrix = _matrix(shape, np.geomspace(10.0, 0.1, min(shape)), seed=5, dtype=dtype)
    tol = 10 * max(shape) * eps_of(dtype)
    results = {}
    for host in (False, True):
        with host_factorizations(host):
            results[host] = (
                thin_svd(matrix),
                thin_qr(matrix) if shape[0] >= shape[1] else None,
            )
    for host, (svd, _) in results.items():
        _check_svd(matrix, svd, tol=tol)
        for factor in svd:
            assert tl.context(factor) == tl.context(matrix), host  # dtype, device
    if shape[0] >= shape[1]:
        for device_factor, host_factor in zip(results[False][1], results[True][1]):
            assert tl.context(host_factor) == tl.context(matrix)
            np.testing.assert_allclose(
                to_np(host_factor), to_np(device_factor), atol=100 * tol
            )


def test_host_factorizations_bypass_the_backend_and_are_scoped(backend, monkeypatch):
    def svd(matrix, *args, **kwargs):
        raise AssertionError("tl.svd called on the host path")

    matrix = _matrix((8, 4), [4.0, 3.0, 2.0, 1.0], seed=6, dtype=tl.backend.float64)
    monkeypatch.setattr(tl, "svd", svd)
    with host_factorizations():
        _check_svd(matrix, thin_svd(matrix), tol=1e-13)
        with host_factorizations(False), pytest.raises(AssertionError, match="host"):
            thin_svd(matrix)
        thin_svd(matrix)  # the inner block restored the outer setting
    with host_factorizations("auto"):  # small SVDs of GPU arrays only
        assert linalg._on_host(matrix, "svd") == (backend == "cupy")
        assert not linalg._on_host(matrix, "qr")
        large = tl.zeros((200, 100), **tl.context(matrix))  # 2e6 > 2^18
        assert not linalg._on_host(large, "svd")
    assert not linalg._on_host(matrix, "svd")  # default: the backend's routines


@pytest.mark.parametrize("mode", ["yes", None, 1.5])
def test_host_mode_is_checked(mode):
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        tf.set_host_factorizations(mode)


def test_a_tdlrt_step_is_the_same_with_host_factorizations(backend):
    # the two paths differ by rounding: the new tensors agree to O(eps / gap)
    Y = tf.random_tucker((12, 10, 8), (3, 3, 2), random_state=0)
    gradient = tl.tensor(np.random.default_rng(7).standard_normal((12, 10, 8)))
    steps = {}
    for host in (False, True):
        with host_factorizations(host):
            steps[host], _ = tf.tdlrt_step(Y, gradient, 0.1, tol=0.05)
    assert steps[True].rank == steps[False].rank
    dense = [to_np(tl.tucker_to_tensor(steps[h])) for h in (False, True)]
    np.testing.assert_allclose(
        dense[1], dense[0], atol=1e-10 * np.linalg.norm(dense[0])
    )


def test_other_errors_are_not_swallowed(backend, monkeypatch):
    def svd(matrix, *args, **kwargs):
        raise TypeError("unsupported dtype")

    monkeypatch.setattr(tl, "svd", svd)
    with pytest.raises(TypeError, match="unsupported dtype"):
        thin_svd(tl.tensor(np.eye(3)))
