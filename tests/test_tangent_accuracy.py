"""Accuracy fixes found while comparing with tucker-riemopt (issue 16, item 5).

* :func:`tuckerflow.inner` of a tangent vector with itself equals the inverse-free
  :func:`tuckerflow.projected_norm` squared to ``O(eps cond(core))``, not
  ``O(eps cond(core)^2)`` (it was 88% off with core singular values down to 1e-9);
* ``rgd_step(..., rank=2, retraction="factors")`` accepts an int rank, as every other
  rank argument does.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import dense, randn

import tuckerflow as tf


@pytest.mark.parametrize("decades", [0, 3, 6, 9, 12])
def test_inner_is_accurate_with_ill_conditioned_cores(backend, decades):
    values = np.logspace(0, -decades, 4)
    Y = tf.random_tucker(
        (10, 11, 12), (4, 4, 4), random_state=0, singular_values=values
    )
    G = randn((10, 11, 12), seed=1, dtype=tl.backend.float64)
    xi = tf.project(Y, G)
    exact = tf.projected_norm(Y, G) ** 2
    eps = float(np.finfo(np.float64).eps)
    assert abs(tf.inner(Y, xi, xi) - exact) <= 100 * eps * 10.0**decades * exact + 1e-13


def test_inner_still_matches_the_dense_inner_product(backend):
    Y = tf.random_tucker((5, 6, 7), (2, 3, 2), random_state=0)
    a = tf.random_tangent(Y, random_state=1)
    b = tf.random_tangent(Y, random_state=2)
    dense_inner = float(
        np.sum(
            tl.to_numpy(tf.tangent_to_tensor(Y, a))
            * tl.to_numpy(tf.tangent_to_tensor(Y, b))
        )
    )
    assert tf.inner(Y, a, b) == pytest.approx(dense_inner, rel=1e-12)


def test_rgd_factors_retraction_accepts_an_int_rank(backend):
    Y = tf.random_tucker((5, 6, 7), 2, random_state=0)
    G = randn((5, 6, 7), seed=1, dtype=tl.backend.float64)
    by_int, _ = tf.rgd_step(Y, G, 0.1, rank=2, retraction="factors")
    by_tuple, _ = tf.rgd_step(Y, G, 0.1, rank=(2, 2, 2), retraction="factors")
    np.testing.assert_array_equal(dense(by_int), dense(by_tuple))
    with pytest.raises(ValueError, match="keeps the rank"):
        tf.rgd_step(Y, G, 0.1, rank=3, retraction="factors")
