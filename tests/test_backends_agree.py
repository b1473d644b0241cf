"""P7: numpy, pytorch (and cupy where present) agree from the same input.

Both backends call LAPACK; singular vectors are sign-normalised, so results agree to a
few ulps times the conditioning. We compare dense tensors (representation-free).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import dense, to_np

import tuckerflow as tf

BACKENDS = [b for b in ("numpy", "pytorch", "cupy") if b in tf.available_backends()]


def _run(backend: str):
    with tf.use_backend(backend):
        import tensorly as tl

        Y = tf.random_tucker((7, 6, 5, 4), (3, 3, 2, 2), random_state=0)
        Z = tl.tensor(
            np.random.default_rng(1).standard_normal((7, 6, 5, 4)),
            dtype=tl.backend.float64,
        )
        xi = tf.project(Y, Z)
        return {
            "hosvd": dense(tf.hosvd(Z, tol=0.3)),
            "truncate": dense(tf.truncate(Y, rank=(2, 2, 2, 1))),
            "project": to_np(tf.tangent_to_tensor(Y, xi)),
            "inner": tf.inner(Y, xi, xi),
            "retract": dense(tf.retract(Y, 0.3 * xi)),
            "retract_tol": dense(tf.retract(Y, 0.3 * xi, tol=0.05)),
        }


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs two backends")
@pytest.mark.parametrize("other", BACKENDS[1:])
def test_backends_give_the_same_results(other):
    reference = _run("numpy")
    result = _run(other)
    for key, value in reference.items():
        np.testing.assert_allclose(
            result[key], value, rtol=1e-10, atol=1e-10, err_msg=key
        )
