"""Helpers shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import numpy as np
import tensorly as tl


def eps_of(dtype) -> float:
    """Machine epsilon of a backend dtype."""
    return float(tl.finfo(dtype).eps)


def to_np(x) -> np.ndarray:
    """Any backend tensor -> float64 NumPy array."""
    return np.asarray(tl.to_numpy(x), dtype=np.float64)


def dense(tucker) -> np.ndarray:
    """Dense NumPy form of a Tucker tensor."""
    return to_np(tl.tucker_tensor.tucker_to_tensor(tucker))


def randn(shape, *, seed, dtype):
    """Gaussian tensor on the active backend (same values on every backend)."""
    data = np.random.default_rng(seed).standard_normal(shape)
    return tl.tensor(data, dtype=dtype)


def core_condition(tucker) -> float:
    """Largest condition number of the core unfoldings."""
    core = to_np(tucker[0])
    worst = 1.0
    for mode in range(core.ndim):
        unfolded = np.moveaxis(core, mode, 0).reshape(core.shape[mode], -1)
        s = np.linalg.svd(unfolded, compute_uv=False)
        worst = max(worst, s[0] / s[-1])
    return worst


def unfold_np(x: np.ndarray, mode: int) -> np.ndarray:
    """NumPy unfolding with TensorLy's convention (mode first, C order)."""
    return np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)


def mode_spectra(x: np.ndarray) -> list[np.ndarray]:
    """Singular values of every unfolding of a NumPy tensor."""
    return [np.linalg.svd(unfold_np(x, m), compute_uv=False) for m in range(x.ndim)]


def valid_multilinear_rank(rank) -> tuple[int, ...]:
    """Lower entries until ``r_i <= prod_{j != i} r_j`` for every mode."""
    rank = list(rank)
    changed = True
    while changed:
        changed = False
        for mode, value in enumerate(rank):
            others = int(np.prod(rank)) // value
            if value > others:
                rank[mode] = others
                changed = True
    return tuple(rank)


try:
    from hypothesis import strategies as st

    @st.composite
    def shapes_and_ranks(draw, min_order=2, max_order=4, min_size=2, max_size=7):
        """A tensor shape and a valid multilinear rank for it."""
        order = draw(st.integers(min_order, max_order))
        shape = tuple(draw(st.integers(min_size, max_size)) for _ in range(order))
        rank = tuple(draw(st.integers(1, n)) for n in shape)
        return shape, valid_multilinear_rank(rank)

except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


class LeastSquares:
    """``L(W) = 0.5 ||w * (W - A)||^2`` on the active backend: Lipschitz constant
    ``max(w)^2``; with ``w = 1`` the plain distance to ``A``."""

    def __init__(self, target, weights=None):
        self.target = target
        self.weights = weights

    @property
    def lipschitz(self) -> float:
        if self.weights is None:
            return 1.0
        return float(np.max(to_np(self.weights)) ** 2)

    def value(self, W) -> float:
        residual = W - self.target
        if self.weights is not None:
            residual = residual * self.weights
        return 0.5 * float(tl.to_numpy(tl.sum(residual * residual)))

    def grad(self, W):
        residual = W - self.target
        if self.weights is not None:
            residual = residual * self.weights * self.weights
        return residual

    def __call__(self, W):
        return self.value(W), self.grad(W)
