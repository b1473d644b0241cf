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

from tuckerflow.linalg import left_singular, pseudo_inverse_rows, thin_svd


class LinAlgError(Exception):
    """Stands for NumPy's and PyTorch's LinAlgError (matched by name)."""


def _failing_svd(monkeypatch, failures: int) -> list[int]:
    """Make the first ``failures`` calls of ``tl.svd`` raise; returns the call log."""
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


def test_non_finite_input_is_named(backend):
    values = np.random.default_rng(4).standard_normal((6, 4))
    values[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        thin_svd(tl.tensor(values))


def test_other_errors_are_not_swallowed(backend, monkeypatch):
    def svd(matrix, *args, **kwargs):
        raise TypeError("unsupported dtype")

    monkeypatch.setattr(tl, "svd", svd)
    with pytest.raises(TypeError, match="unsupported dtype"):
        thin_svd(tl.tensor(np.eye(3)))
