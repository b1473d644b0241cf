"""P8: after any number of steps, factors are orthonormal (1e-12 in float64, 1e-6 in
float32), ranks stay within [min_rank, max_rank], and nothing is NaN.

The factors of every rank-adaptive step are products of freshly orthonormalized
matrices (Householder QR of [U, K], SVD of the small core), so the orthonormality defect
does not accumulate with the number of steps; the checks use long random chains.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import shapes_and_ranks, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow._checks import orthonormality_error

BOUNDS = {"float64": 1e-12, "float32": 1e-6}


def _check(tucker, low, high, precision):
    assert all(lo <= r <= hi for lo, r, hi in zip(low, tucker.rank, high))
    assert all(orthonormality_error(f) <= BOUNDS[precision] for f in tucker.factors)
    assert np.all(np.isfinite(to_np(tucker.core)))


@settings(max_examples=15)
@given(
    data=shapes_and_ranks(min_size=3, max_size=8),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["tdlrt", "parallel_bug"]),
    tol=st.floats(0.0, 0.5),
    optimizer=st.sampled_from([None, "momentum", "adam"]),
)
def test_random_step_chains(backend, data, seed, method, tol, optimizer):
    shape, rank = data
    precision = "float64" if seed % 2 else "float32"
    dtype = getattr(tl.backend, precision)
    Y = tf.random_tucker(shape, rank, random_state=seed, dtype=dtype)
    high = tuple(min(n, r + 2) for n, r in zip(shape, rank))
    low = tuple(min(2, h) for h in high)
    rng = np.random.default_rng(seed)
    state = None
    if optimizer == "momentum":
        state = tf.Momentum.init(Y, 0.9)
    elif optimizer == "adam":
        state = tf.Adam.init(Y)
    step = tf.tdlrt_step if method == "tdlrt" else tf.parallel_bug_step
    for _ in range(60):
        grad = tl.tensor(rng.standard_normal(shape), dtype=dtype)
        Y, state = step(Y, grad, 0.1, tol=tol, min_rank=low, max_rank=high, state=state)
        Y = tl.tucker_tensor.TuckerTensor((Y.core / tl.norm(Y.core), Y.factors))
        _check(Y, low, high, precision)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_a_thousand_tdlrt_steps(backend, precision):
    dtype = getattr(tl.backend, precision)
    Y = tf.random_tucker((9, 8, 7), (3, 3, 3), random_state=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for _ in range(1000):
        grad = tl.tensor(rng.standard_normal((9, 8, 7)), dtype=dtype)
        Y, _ = tf.tdlrt_step(Y, grad, 0.05, tol=0.3, min_rank=2, max_rank=5)
        Y = tl.tucker_tensor.TuckerTensor((Y.core / tl.norm(Y.core), Y.factors))
    _check(Y, (2, 2, 2), (5, 5, 5), precision)
