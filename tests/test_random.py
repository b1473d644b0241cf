"""random_tucker: exact multilinear rank, orthonormal factors, prescribed spectra."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import dense, mode_spectra, shapes_and_ranks, to_np, unfold_np
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow._checks import orthonormality_error


@settings(max_examples=50)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_random_point_has_exact_multilinear_rank(backend, data, seed):
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed)
    assert Y.shape == shape and Y.rank == rank
    assert all(orthonormality_error(f) < 1e-13 for f in Y.factors)
    for spectrum, r in zip(mode_spectra(dense(Y)), rank):
        assert spectrum[r - 1] > 1e-8 * spectrum[0]  # generic: full rank r
        if r < len(spectrum):
            assert spectrum[r] < 1e-12 * spectrum[0]


@settings(max_examples=50)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16), decades=st.integers(1, 12))
def test_prescribed_singular_values(backend, data, seed, decades):
    shape, rank = data
    longest = max(rank)
    values = np.logspace(0, -decades, longest)
    Y = tf.random_tucker(shape, rank, random_state=seed, singular_values=values)
    core = to_np(Y.core)
    for mode, r in enumerate(rank):
        s = np.linalg.svd(unfold_np(core, mode), compute_uv=False)
        # rotations by orthogonal matrices keep spectra up to eps * ||C||
        atol = 1e-14 * len(s)
        if r == longest:
            np.testing.assert_allclose(s, values, rtol=1e-8, atol=atol)
        else:  # root-sums of squares of groups: same energy, at least s_min
            assert abs(np.sum(s**2) - np.sum(values**2)) < 1e-12
            assert s[-1] >= values[-1] * (1 - 1e-8) - atol


def test_same_seed_same_point_on_every_backend(backend):
    """Drawn in NumPy, then moved: the stored numbers are bit-identical."""
    Y = tf.random_tucker((4, 5, 6), (2, 3, 2), random_state=7)
    with tf.use_backend("numpy"):
        reference = tf.random_tucker((4, 5, 6), (2, 3, 2), random_state=7)
    np.testing.assert_array_equal(to_np(Y.core), reference.core)
    for factor, expected in zip(Y.factors, reference.factors):
        np.testing.assert_array_equal(to_np(factor), expected)


def test_float32_points(backend, dtype):
    Y = tf.random_tucker((4, 5, 6), (2, 3, 2), random_state=0, dtype=dtype)
    assert Y.core.dtype == dtype and all(f.dtype == dtype for f in Y.factors)


@pytest.mark.parametrize(
    "shape,rank,expected",
    [
        ((3, 8, 8), 5, (3, 5, 5)),  # capped at the mode size
        ((2, 2, 10), 10, (2, 2, 4)),  # and at the product of the other mode sizes
        ((4, 5, 6), 100, (4, 5, 6)),
        ((4, 5, 6), 2, (2, 2, 2)),
    ],
)
def test_int_rank_is_capped_per_mode_as_documented(backend, shape, rank, expected):
    """An int r gives min(r, n_i, prod_{j != i} n_j) in mode i, an exact rank."""
    Y = tf.random_tucker(shape, rank, random_state=0)
    assert Y.rank == expected
    assert [tuple(f.shape) for f in Y.factors] == list(zip(shape, expected))
    for spectrum, r in zip(mode_spectra(dense(Y)), expected):
        assert spectrum[r - 1] > 1e-8 * spectrum[0]


def test_sequence_rank_above_a_mode_size_raises(backend):
    with pytest.raises(
        ValueError,
        match=r"rank\[0\]=5 exceeds the mode size 3 of mode 0 \(shape \(3, 8, 8\)\).*"
        r"ask for rank\[0\] <= 3, or pass an int rank, which is capped",
    ):
        tf.random_tucker((3, 8, 8), (5, 5, 5))


@pytest.mark.parametrize("bad", [(4,), (4, 0, 3), "abc"])
def test_bad_shapes(bad):
    with pytest.raises((TypeError, ValueError), match="shape"):
        tf.random_tucker(bad, 1)
