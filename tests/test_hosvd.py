"""Truncated HOSVD and Tucker re-truncation (docs/concepts.rst, first section).

Tolerances: an SVD is backward stable, so the subspace it returns captures the tensor up
to ``c * eps * ||W||`` regardless of conditioning; we allow ``c = 100 d``. Comparisons
between two truncations of the same tensor also depend on the singular-value gap at the
cut (Wedin's theorem), which enters the tolerance explicitly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from helpers import dense, eps_of, mode_spectra, randn, shapes_and_ranks, to_np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tuckerflow as tf


@settings(max_examples=40)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_exact_on_tensors_of_lower_multilinear_rank(backend, dtype, data, seed):
    shape, rank = data
    W = tl.tucker_tensor.tucker_to_tensor(
        tf.random_tucker(shape, rank, random_state=seed, dtype=dtype)
    )
    result = tf.hosvd(W, rank=rank)
    assert result.rank == rank
    error = np.linalg.norm(dense(result) - to_np(W))
    assert error <= 100 * len(shape) * eps_of(dtype) * np.linalg.norm(to_np(W))
    for factor in result.factors:
        gram = to_np(factor).T @ to_np(factor)
        assert (
            np.abs(gram - np.eye(gram.shape[0])).max() <= 10 * eps_of(dtype) * shape[0]
        )


@settings(max_examples=40)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_error_bound_by_discarded_singular_values(backend, dtype, data, seed):
    shape, rank = data
    W = randn(shape, seed=seed, dtype=dtype)
    W_np = to_np(W)
    result = tf.hosvd(W, rank=rank)
    error2 = np.linalg.norm(dense(result) - W_np) ** 2
    bound2 = sum(float(np.sum(s[r:] ** 2)) for s, r in zip(mode_spectra(W_np), rank))
    rounding = (100 * len(shape) * eps_of(dtype) * np.linalg.norm(W_np)) ** 2
    assert error2 <= bound2 * (1 + 1e3 * eps_of(dtype)) + rounding


@settings(max_examples=40)
@given(
    data=shapes_and_ranks(),
    seed=st.integers(0, 2**16),
    tol=st.floats(0.0, 0.9),
)
def test_tolerance_rule_picks_minimal_ranks_and_bounds_total_error(
    backend, dtype, data, seed, tol
):
    shape, _ = data
    d = len(shape)
    W = randn(shape, seed=seed, dtype=dtype)
    W_np = to_np(W)
    norm = np.linalg.norm(W_np)
    result = tf.hosvd(W, tol=tol)
    threshold = tol * norm / math.sqrt(d)
    slack = 100 * d * eps_of(dtype) * norm  # spectra of the backend vs float64 NumPy
    for s, r in zip(mode_spectra(W_np), result.rank):
        assert math.sqrt(np.sum(s[r:] ** 2)) <= threshold + slack  # tail fits
        if r > 1:  # and one fewer would not
            assert math.sqrt(np.sum(s[r - 1 :] ** 2)) > threshold - slack
    # the documented guarantee: total error at most tol * ||W||
    assert np.linalg.norm(dense(result) - W_np) <= tol * norm + slack


def test_tolerance_zero_keeps_everything(backend, dtype):
    W = randn((4, 5, 6), seed=1, dtype=dtype)
    assert tf.hosvd(W, tol=0.0).rank == (4, 5, 6)
    assert tf.hosvd(W).rank == (4, 5, 6)


def test_small_tolerance_recovers_exact_ranks(backend):
    Y = tf.random_tucker((6, 7, 8), (2, 3, 4), random_state=3)
    W = tl.tucker_tensor.tucker_to_tensor(Y)
    assert tf.hosvd(W, tol=1e-10).rank == (2, 3, 4)


def test_min_and_max_rank_clip_the_tolerance_rule(backend):
    W = randn((5, 6, 7), seed=2, dtype=tl.backend.float64)
    free = tf.hosvd(W, tol=0.9).rank
    floor = (free[0] + 1, free[1] + 2, 1)
    clipped = tf.hosvd(W, tol=0.9, min_rank=floor).rank
    assert clipped == tuple(max(f, low) for f, low in zip(free, floor))
    assert tf.hosvd(W, tol=0.0, max_rank=3).rank == (3, 3, 3)
    assert tf.hosvd(W, tol=0.0, max_rank=(2, 6, 4)).rank == (2, 6, 4)


def test_integer_rank_is_capped_per_mode(backend):
    W = randn((3, 8, 8), seed=4, dtype=tl.backend.float64)
    assert tf.hosvd(W, rank=5).rank == (3, 5, 5)


def _gap_factor(spectra, ranks):
    """sigma_1 / (sigma_r - sigma_{r+1}) at each cut: Wedin's amplification."""
    worst = 1.0
    for s, r in zip(spectra, ranks):
        if r < len(s):
            gap = s[r - 1] - s[r]
            worst = max(worst, s[0] / max(gap, 1e-300))
    return worst


@settings(max_examples=40)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16), cut=st.integers(1, 3))
def test_truncate_equals_hosvd_of_the_dense_tensor(backend, dtype, data, seed, cut):
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed, dtype=dtype)
    W = tl.tucker_tensor.tucker_to_tensor(Y)
    target = tuple(max(1, r - cut + 1) for r in rank)
    spectra = mode_spectra(to_np(W))
    amplification = _gap_factor(spectra, target)
    assume(amplification < 1e4)
    via_core = dense(tf.truncate(Y, rank=target))
    via_dense = dense(tf.hosvd(W, rank=target))
    norm = np.linalg.norm(to_np(W))
    assert np.linalg.norm(via_core - via_dense) <= (
        100 * len(shape) * eps_of(dtype) * amplification * norm
    )


def test_truncate_with_tolerance_matches_hosvd_ranks(backend):
    Y = tf.random_tucker((6, 6, 6, 6), (4, 4, 4, 4), random_state=0)
    W = tl.tucker_tensor.tucker_to_tensor(Y)
    for tol in (0.05, 0.2, 0.5):
        assert tf.truncate(Y, tol=tol).rank == tf.hosvd(W, tol=tol).rank


def test_truncate_never_forms_the_full_tensor(backend, monkeypatch):
    """Only core-sized SVDs: patch tucker_to_tensor to fail if called."""
    Y = tf.random_tucker((30, 30, 30), (3, 3, 3), random_state=0)
    monkeypatch.setattr(
        tl.tucker_tensor,
        "tucker_to_tensor",
        lambda *a, **k: pytest.fail("truncate densified the tensor"),
    )
    seen = []
    original_svd = tl.svd

    def recording_svd(matrix, *args, **kwargs):
        seen.append(tl.shape(matrix))
        return original_svd(matrix, *args, **kwargs)

    monkeypatch.setattr(tl, "svd", recording_svd)
    tf.truncate(Y, rank=2)
    assert seen and all(max(shape) <= 9 for shape in seen)


class TestBudget:
    def test_budget_is_respected_and_maximal(self, backend):
        Y = tf.random_tucker((10, 9, 8), (6, 5, 4), random_state=1)
        shape = (10, 9, 8)
        for budget in (40, 80, 120, 200, 300):
            ranks = tf.truncate(Y, budget=budget).rank
            assert tf.parameter_count(shape, ranks) <= budget
            for mode in range(3):
                bigger = list(ranks)
                bigger[mode] += 1
                if bigger[mode] <= Y.rank[mode]:
                    assert tf.parameter_count(shape, bigger) > budget

    def test_budget_at_least_full_size_keeps_full_rank(self, backend):
        Y = tf.random_tucker((10, 9, 8), (6, 5, 4), random_state=1)
        full = tf.parameter_count((10, 9, 8), (6, 5, 4))
        assert tf.truncate(Y, budget=full).rank == (6, 5, 4)
        assert tf.truncate(Y, budget=10 * full).rank == (6, 5, 4)

    def test_hosvd_budget(self, backend):
        W = randn((8, 8, 8), seed=5, dtype=tl.backend.float64)
        ranks = tf.hosvd(W, budget=150).rank
        assert tf.parameter_count((8, 8, 8), ranks) <= 150
