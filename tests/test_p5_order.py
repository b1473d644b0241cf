"""P5 (Theorem 3.1): with eps = theta = 0, the TDLRT iterates approach the full gradient
flow at first order in lr, independently of the smallest singular value.

Flow: the tensor heat equation ``dW/dt = -sum_i W ×_i S_i`` (S_i SPD), the gradient flow
of ``0.5 <W, sum_i W ×_i S_i>``; its solution ``W0 ×_i expm(-t S_i)`` keeps the
multilinear rank of W0 (eps = 0) while the bases rotate. Fixed-rank TDLRT steps (rank =
r, so the only truncation drops the augmented directions, an O(h^2) per step effect)
are run to T = 0.5 with h = T/10 .. T/80: the error ratio when h halves is 2 +- 0.3.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import tensorly as tl
from helpers import dense, to_np

import tuckerflow as tf

SHAPE, RANK, T = (10, 11, 12), (3, 3, 3), 0.5


def _operators():
    rng = np.random.default_rng(0)
    operators = []
    for n in SHAPE:
        M = rng.standard_normal((n, n))
        operators.append(M @ M.T / n + 0.1 * np.eye(n))
    return operators


@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug"])
@pytest.mark.parametrize("smallest", [1.0, 1e-8])
def test_first_order_in_the_step_size(backend, method, smallest):
    operators = _operators()
    backend_ops = [tl.tensor(S, dtype=tl.backend.float64) for S in operators]
    values = np.logspace(0, np.log10(smallest), max(RANK)) if smallest < 1 else None
    start = tf.random_tucker(SHAPE, RANK, random_state=1, singular_values=values)
    exact = dense(start)
    for mode, S in enumerate(operators):
        exact = np.moveaxis(
            np.tensordot(scipy.linalg.expm(-T * S), exact, axes=(1, mode)), 0, mode
        )

    def objective(W):
        grad = sum(tl.tenalg.mode_dot(W, S, i) for i, S in enumerate(backend_ops))
        return 0.5 * float(tl.to_numpy(tl.sum(W * grad))), grad

    errors = []
    for steps in (10, 20, 40, 80):
        result = tf.integrate(
            objective, start, method=method, lr=T / steps, steps=steps, rank=RANK
        )
        errors.append(np.linalg.norm(dense(result.tucker) - exact))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), ratios
    assert errors[-1] < 0.02 * np.linalg.norm(exact)
    assert np.all(np.isfinite(to_np(result.tucker.core)))
