"""P3 (Theorem 3.3): one TDLRT step on an Lc-smooth objective satisfies

    L(Y1) <= L(Y0) - h (1 - Lc h / 2) ||P(Y0) G||^2 + B ||Y1 - Y1_untruncated||,

with no constant depending on the core's singular values, checked on weighted least
squares ``0.5 ||w * (W - A)||^2`` (Lc = max w^2) with cores whose singular values go
down to 1e-12.

Why: the untruncated step is ``Y0 - h Pi G`` with Pi the orthogonal projector onto the
augmented space, which contains the tangent space, so ``||Pi G|| >= ||P(Y0) G||`` (P1).
For a quadratic, ``L(Y1) - L(Y1u) <= (||grad L(Y1u)|| + Lc ||D|| / 2) ||D||`` with
``D = Y1 - Y1u``: that is the B used here. ``||P(Y0) G||`` is computed without any
inverse (:func:`tuckerflow.projected_norm`). The truncation obeys the documented
``||D|| <= tol ||Y1u||``. Rounding allowance: ``100 eps (L(Y0) + h ||G||^2)``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
from helpers import LeastSquares, eps_of, shapes_and_ranks, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.contractions import GradientContractions
from tuckerflow.integrators._blocks import reparametrize
from tuckerflow.linalg import augment_basis


def _problem(data, seed, decades, dtype):
    shape, rank = data
    values = np.logspace(0, -decades, max(rank))
    start = tf.random_tucker(
        shape, rank, random_state=seed, dtype=dtype, singular_values=values
    )
    rng = np.random.default_rng(seed + 1)
    target = tl.tensor(rng.standard_normal(shape), dtype=dtype)
    weights = tl.tensor(rng.uniform(0.5, 1.5, shape), dtype=dtype)
    return start, LeastSquares(target, weights)


@settings(max_examples=60)
@given(
    data=shapes_and_ranks(),
    seed=st.integers(0, 2**16),
    decades=st.integers(0, 12),
    fraction=st.floats(0.05, 1.9),
    tol=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5]),
)
def test_descent_inequality(backend, dtype, data, seed, decades, fraction, tol):
    start, objective = _problem(data, seed, decades, dtype)
    lipschitz = objective.lipschitz
    h = fraction / lipschitz
    W0 = start.to_tensor()
    G = objective.grad(W0)

    untruncated, _ = tf.tdlrt_step(start, G, h, tol=0.0)
    stepped, _ = tf.tdlrt_step(start, G, h, tol=tol)
    W1u, W1 = untruncated.to_tensor(), stepped.to_tensor()
    gap = float(np.linalg.norm(to_np(W1) - to_np(W1u)))
    assert gap <= tol * float(np.linalg.norm(to_np(W1u))) * (1 + 1e-3) + 1e3 * eps_of(
        dtype
    ) * float(np.linalg.norm(to_np(W1u)))

    riemannian = tf.projected_norm(start, G)
    bound_b = float(np.linalg.norm(to_np(objective.grad(W1u)))) + lipschitz * gap / 2
    rhs = objective.value(W0) - h * (1 - lipschitz * h / 2) * riemannian**2
    rhs += bound_b * gap
    scale = objective.value(W0) + h * float(np.linalg.norm(to_np(G))) ** 2
    assert objective.value(W1) <= rhs + 100 * eps_of(dtype) * scale


@settings(max_examples=40)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16), decades=st.integers(0, 12))
def test_augmented_projection_contains_the_tangent_projection(
    backend, data, seed, decades
):
    """P1, second part: ||Pi G|| >= ||P(Y0) G|| with Pi = projector onto the TDLRT
    augmented space ``Z -> Z ×_i Uhat_i Uhat_i^T``."""
    start, objective = _problem(data, seed, decades, tl.backend.float64)
    G = objective.grad(start.to_tensor())
    contractions = GradientContractions(G, start.factors)
    bases = []
    for mode, factor in enumerate(start.factors):
        q, _ = reparametrize(start.core, mode)
        direction = tl.dot(contractions.unfolded_partial(mode), q)
        bases.append(augment_basis(factor, direction))
    galerkin = tl.tenalg.multi_mode_dot(G, bases, transpose=True)
    pi_norm = float(np.linalg.norm(to_np(galerkin)))
    assert pi_norm >= tf.projected_norm(start, G) * (1 - 1e-10) - 1e-12 * math.sqrt(
        objective.value(start.to_tensor())
    )
