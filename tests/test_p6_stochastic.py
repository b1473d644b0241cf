"""P6 (Theorem 3.2): with noisy gradients and Robbins-Monro step sizes
(sum h_k = inf, sum h_k^2 < inf) the Riemannian gradient norm goes to zero.

L(W) = 0.5 ||W - A||^2 with A of rank r; every step sees G + noise with noise norm
equal to ||A||; h_k = 0.5 / (1 + k / 20). Window averages of ||P(Y_k) grad L(Y_k)||
(the exact gradient, computed without inverses) must decrease window after window; with
h_k ~ 1/k the norm decays like 1/sqrt(sum h_k) ~ 1/sqrt(log k) at first and like
1/sqrt(k) once the noise dominates, so from the window at k ~ 50 to the one at
k ~ 1150 it must drop at least 4x; a constant step of the same initial size plateaus
at least twice as high (its noise floor does not shrink).
"""

from __future__ import annotations

import itertools

import numpy as np
from helpers import LeastSquares

import tuckerflow as tf

SHAPE, RANK, STEPS = (10, 11, 12), (3, 3, 3), 1200


def _norms(schedule, seed):
    A = tf.random_tucker(SHAPE, RANK, random_state=seed).to_tensor()
    objective = LeastSquares(A)
    sigma = np.linalg.norm(A) / np.sqrt(A.size)
    rng = np.random.default_rng(seed + 7)
    norms = []

    def noisy(W):
        value, grad = objective(W)
        return value, grad + sigma * rng.standard_normal(SHAPE)

    def record(step, tucker, loss):
        norms.append(tf.projected_norm(tucker, objective.grad(tucker.to_tensor())))

    start = tf.random_tucker(SHAPE, RANK, random_state=seed + 1)
    tf.integrate(noisy, start, lr=schedule, steps=STEPS, rank=RANK, callback=record)
    return np.array(norms)


def test_robbins_monro_drives_the_riemannian_gradient_to_zero():
    for seed in (0, 1):
        norms = _norms(lambda k: 0.5 / (1 + k / 20), seed)
        windows = [norms[a : a + 100].mean() for a in (0, 250, 500, 750, 1100)]
        assert all(a > b for a, b in itertools.pairwise(windows)), windows
        assert windows[-1] < 0.25 * windows[0]
        constant = _norms(lambda k: 0.5, seed)
        assert windows[-1] < 0.5 * constant[-100:].mean()
