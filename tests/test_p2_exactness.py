"""P2: on L(W) = 0.5||W - A||^2 with rank(A) <= r, one TDLRT step with lr = 1, tol = 0
returns A to rounding error, and truncation then recovers A's ranks. Vanilla does not.

Why it holds: K_i1 = U_i S_i - (U_i S_i - A_(i) V_i) = A_(i) V_i spans range(A_(i))
for a generic start, so the augmented bases contain A's, and the Galerkin step with
lr = 1 lands on A ×_i Uhat_i Uhat_i^T = A. Rounding: the bases of range(A_(i)) are
computed from A_(i) V_i, to ``eps * kappa`` with kappa = ||A|| / sigma_min(A_(i) V_i)
(large when A's and Y0's bases barely overlap), and the core step cancels Y0 against
Y0 - A, hence the tolerance ``100 d eps kappa (||A|| + ||Y0||)``.
"""

from __future__ import annotations

import numpy as np
import tensorly as tl
from helpers import (
    LeastSquares,
    core_condition,
    dense,
    eps_of,
    shapes_and_ranks,
    to_np,
    unfold_np,
    valid_multilinear_rank,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tuckerflow as tf


def _overlap_condition(target, start) -> float:
    """max_i ||A|| / sigma_min(A_(i) V_i) with V_i = (kron_{j != i} U_j) Q_i."""
    A = dense(target)
    core = to_np(start.core)
    factors = [to_np(f) for f in start.factors]
    worst = core_condition(target)
    for mode in range(A.ndim):
        others = [j for j in range(A.ndim) if j != mode]
        kron = factors[others[0]]
        for j in others[1:]:
            kron = np.kron(kron, factors[j])
        q = np.linalg.qr(unfold_np(core, mode).T)[0]
        s = np.linalg.svd(unfold_np(A, mode) @ kron @ q, compute_uv=False)
        s = s[: target.rank[mode]]
        worst = max(worst, np.linalg.norm(A) / s[-1])
    return worst


@settings(max_examples=40)
@given(data=shapes_and_ranks(), seed=st.integers(0, 2**16), shrink=st.integers(0, 2))
def test_one_step_recovers_the_target(backend, dtype, data, seed, shrink):
    shape, rank = data
    target_rank = valid_multilinear_rank(tuple(max(1, r - shrink) for r in rank))
    target = tf.random_tucker(shape, target_rank, random_state=seed, dtype=dtype)
    start = tf.random_tucker(shape, rank, random_state=seed + 1, dtype=dtype)
    kappa = _overlap_condition(target, start)
    # keep 1e3 eps kappa (rounding) well below 1 / kappa (A's smallest direction)
    assume(kappa < 1e4 if eps_of(dtype) < 1e-10 else kappa < 30)
    A = tl.tucker_tensor.tucker_to_tensor(target)
    objective = LeastSquares(A)

    step, _ = tf.tdlrt_step(start, objective.grad(start.to_tensor()), 1.0, tol=0.0)

    scale = np.linalg.norm(to_np(A)) + np.linalg.norm(dense(start))
    bound = 100 * len(shape) * eps_of(dtype) * kappa * scale
    error = np.linalg.norm(dense(step) - to_np(A))
    assert error <= bound
    # the step's ranks are the augmented ones; truncation finds A's exact ranks.
    # The step is A + E with ||E|| <= bound, so every unfolding's singular values
    # beyond A's rank have a tail of norm <= bound (best-approximation error), and
    # A's own ones move by at most bound (Weyl). An absolute tolerance of
    # 2 sqrt(d) bound (at least bound per mode, however it is split) drops the
    # former and keeps the latter while it stays below A's smallest ones.
    assert all(r >= t for r, t in zip(step.rank, target_rank))
    tol = 2 * np.sqrt(len(shape)) * bound
    smallest = min(
        np.linalg.svd(unfold_np(to_np(A), mode), compute_uv=False)[r - 1]
        for mode, r in enumerate(target_rank)
    )
    assume(2 * tol < smallest)
    cleaned = tf.truncate(step, tol=tol, relative=False)
    assert cleaned.rank == target_rank


@settings(max_examples=20)
@given(data=shapes_and_ranks(min_size=3), seed=st.integers(0, 2**16))
def test_vanilla_step_does_not(backend, data, seed):
    shape, rank = data
    A = tf.random_tucker(shape, rank, random_state=seed).to_tensor()
    start = tf.random_tucker(shape, rank, random_state=seed + 1)
    objective = LeastSquares(A)
    step, _ = tf.vanilla_step(start, objective.grad(start.to_tensor()), 1.0)
    norm = np.linalg.norm(to_np(A))
    assert np.linalg.norm(dense(step) - to_np(A)) > 1e-3 * norm


def test_lifted_core_represents_the_same_point(backend, dtype):
    """Step 4 of the algorithm: Chat0 ×_i Uhat_i == Y0 to rounding."""
    from tuckerflow.integrators._blocks import lift
    from tuckerflow.linalg import augment_basis

    Y = tf.random_tucker((6, 7, 8), (2, 3, 2), random_state=0, dtype=dtype)
    rng = np.random.default_rng(1)
    bases = [
        augment_basis(U, tl.tensor(rng.standard_normal((n, 2)), dtype=dtype))
        for U, n in zip(Y.factors, Y.shape)
    ]
    embeddings = [tl.dot(tl.transpose(B), U) for B, U in zip(bases, Y.factors)]
    lifted = tl.tucker_tensor.tucker_to_tensor((lift(Y.core, embeddings), bases))
    scale = np.linalg.norm(dense(Y))
    assert np.linalg.norm(to_np(lifted) - dense(Y)) <= 100 * eps_of(dtype) * scale
