"""Tangent space of the fixed-rank Tucker manifold, kept in factored form.

At ``Y = C ×_i U_i`` (orthonormal ``U_i``) a tangent vector is

    dY = dC ×_i U_i + sum_i C ×_i dU_i ×_{j != i} U_j,    U_i^T dU_i = 0,

stored as :class:`TangentVector` ``(dC, [dU_1, ..., dU_d])`` and never densified unless
asked (:func:`tangent_to_tensor`). The parametrization, its gauge condition and the
orthogonal projection are those of O. Koch, C. Lubich, "Dynamical tensor
approximation", SIAM J. Matrix Anal. Appl. 31(5), 2360-2375, 2010; the Concepts page
("The manifold and its tangent space") has the mathematics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._checks import check_dense, check_finite, check_tensor, check_tucker, tucker_shape
from .backend import plain_context
from .contractions import GradientContractions
from .linalg import pseudo_inverse_rows, thin_qr

__all__ = [
    "TangentVector",
    "project",
    "projected_norm",
    "tangent_to_tensor",
    "inner",
    "random_tangent",
]


class TangentVector:
    """A tangent vector ``(dC, dU_1..dU_d)`` at a point of the Tucker manifold.

    Tangent vectors at the same point form a vector space; ``+``, ``-`` and scalar
    ``*`` act componentwise (the gauge ``U_i^T dU_i = 0`` is linear, so it is kept).

    Nothing is validated here; the functions that take a tangent vector
    (:func:`tangent_to_tensor`, :func:`inner`, :func:`tuckerflow.retract`) check its
    shapes against their point. Combining two vectors of different ranks raises
    ``ValueError``.

    Parameters
    ----------
    core : tensor of shape (r_1, ..., r_d)
        Core variation ``dC``.
    factors : sequence of tensors of shape (n_i, r_i)
        Factor variations ``dU_i``, orthogonal to the point's ``U_i`` (the gauge
        ``U_i^T dU_i = 0``).

    References
    ----------
    .. [1] O. Koch, C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal.
       Appl. 31(5), 2360-2375, 2010.
    """

    __slots__ = ("core", "factors")

    def __init__(self, core: Any, factors: Sequence[Any]) -> None:
        self.core = core
        self.factors = list(factors)

    def __iter__(self) -> Iterator[Any]:
        yield self.core
        yield self.factors

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        shape = tucker_shape(self.factors)
        return f"TangentVector(shape={shape}, rank={tuple(tl.shape(self.core))})"

    def _combine(self, other: TangentVector, sign: float) -> TangentVector:
        if not isinstance(other, TangentVector):
            return NotImplemented
        if tl.shape(self.core) != tl.shape(other.core):
            raise ValueError(
                "cannot combine tangent vectors of ranks "
                f"{tl.shape(self.core)} and {tl.shape(other.core)}"
            )
        return TangentVector(
            self.core + sign * other.core,
            [a + sign * b for a, b in zip(self.factors, other.factors)],
        )

    def __add__(self, other: TangentVector) -> TangentVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: TangentVector) -> TangentVector:
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> TangentVector:
        if not isinstance(scalar, (int, float, np.floating, np.integer)):
            return NotImplemented
        return TangentVector(self.core * scalar, [f * scalar for f in self.factors])

    __rmul__ = __mul__

    def __neg__(self) -> TangentVector:
        return self * -1.0


def reparametrize(core: Any, mode: int) -> tuple[Any, Any]:
    """QR of the transposed core unfolding: ``unfold(C, i)^T = Q_i S_i^T``.

    Returns ``(Q_i, S_i)`` with ``Q_i`` orthonormal (``prod_{j != i} r_j x k``) and
    ``S_i`` (``r_i x k``), ``k = min(r_i, prod_{j != i} r_j)``. Then
    ``unfold(Y, i) = (U_i S_i) V_i^T`` with ``V_i = (kron_{j != i} U_j) Q_i``: the
    K-step coordinates of mode i (docs/concepts.rst, "The K-step
    reparametrization"). ``Q_i`` spans the row space of ``unfold(C, i)``; no inverse
    of ``S_i`` is ever needed.
    """
    q, r = thin_qr(tl.transpose(tl.unfold(core, mode)))
    return q, tl.transpose(r)


def _check_tangent(
    tangent: Any, core: Any, factors: Sequence[Any], name: str
) -> TangentVector:
    if not isinstance(tangent, TangentVector):
        raise TypeError(
            f"{name} must be a TangentVector (see tuckerflow.project), "
            f"got {type(tangent).__name__}"
        )
    check_tensor(tangent.core, f"{name}.core")
    if tl.shape(tangent.core) != tl.shape(core):
        raise ValueError(
            f"{name}.core has shape {tl.shape(tangent.core)} but the point has rank "
            f"{tl.shape(core)}"
        )
    if len(tangent.factors) != len(factors):
        raise ValueError(
            f"{name} has {len(tangent.factors)} factors but the point has "
            f"{len(factors)}"
        )
    for mode, (d_factor, factor) in enumerate(zip(tangent.factors, factors)):
        check_tensor(d_factor, f"{name}.factors[{mode}]")
        if tl.shape(d_factor) != tl.shape(factor):
            raise ValueError(
                f"{name}.factors[{mode}] has shape {tl.shape(d_factor)} but the "
                "point's "
                f"factor has shape {tl.shape(factor)}"
            )
    check_finite(tangent.core, f"{name}.core")
    for mode, d_factor in enumerate(tangent.factors):
        check_finite(d_factor, f"{name}.factors[{mode}]")
    return tangent


def project_unchecked(
    core: Any,
    factors: Sequence[Any],
    ambient: Any,
    contractions: GradientContractions | None = None,
) -> TangentVector:
    """:func:`project` without input validation (for internal use).

    ``contractions`` of ``ambient`` with ``factors``, when the caller already has them,
    saves the passes over ``ambient``.
    """
    if contractions is None:
        contractions = GradientContractions(ambient, factors)
    d_core = contractions.core_gradient()
    d_factors = []
    for mode, factor in enumerate(factors):
        # unfold(Z ×_{j != i} U_j^T, i) pinv(unfold(C, i)), then remove the U_i part
        coefficient = tl.dot(
            contractions.unfolded_partial(mode),
            pseudo_inverse_rows(tl.unfold(core, mode)),
        )
        coefficient = coefficient - tl.dot(
            factor, tl.dot(tl.transpose(factor), coefficient)
        )
        d_factors.append(coefficient)
    return TangentVector(d_core, d_factors)


def project(tucker: Any, ambient: Any) -> TangentVector:
    """Orthogonal projection of a dense tensor onto the tangent space at ``tucker``.

    Components [1]_: ``dC = Z ×_j U_j^T`` and
    ``dU_i = (I - U_i U_i^T) unfold(Z ×_{j != i} U_j^T, i) pinv(unfold(C, i))``.
    The contractions with ``Z`` are shared between modes
    (:class:`tuckerflow.contractions.GradientContractions`). For a Euclidean gradient
    the result is the Riemannian gradient (see the Concepts page, "The manifold and
    its tangent space").

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point on the manifold: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns (full multilinear rank expected;
        singular values of ``unfold(C, i)`` below ``max(shape) * eps * sigma_max``
        are treated as zero by the pseudo-inverse).
    ambient : tensor of shape (n_1, ..., n_d)
        Dense tensor of the point's full shape and dtype, e.g. a Euclidean gradient.

    Returns
    -------
    TangentVector
        ``(dC, [dU_1, ..., dU_d])`` with ``dC`` of shape ``(r_1, ..., r_d)`` and
        ``dU_i`` of shape ``(n_i, r_i)``, ``U_i^T dU_i = 0``; in the units of
        ``ambient``'s entries.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if
        ``ambient`` is not a tensor of the active backend, has no real floating-point
        dtype, or has a dtype other than the point's.
    ValueError
        If ``tucker`` is malformed (core with fewer than 2 modes, not one factor per
        mode, mismatched shapes, NaN or Inf entries) or its factors are not
        orthonormal; if ``ambient`` has fewer than 2 modes, NaN or Inf entries, or a
        shape other than ``(n_1, ..., n_d)``.

    Notes
    -----
    ``pinv(unfold(C, i))`` is where the curvature enters: its norm is
    ``1 / sigma_min(unfold(C, i))``. Integrators that avoid it are in
    :mod:`tuckerflow.integrators`.

    References
    ----------
    .. [1] O. Koch, C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal.
       Appl. 31(5), 2360-2375, 2010.
    """
    core, factors = check_tucker(tucker, "tucker")
    check_dense(ambient, "ambient")
    expected = tucker_shape(factors)
    if tl.shape(ambient) != expected:
        raise ValueError(
            f"ambient has shape {tl.shape(ambient)} but the Tucker tensor has shape "
            f"{expected}"
        )
    if ambient.dtype != core.dtype:
        raise TypeError(
            f"ambient has dtype {ambient.dtype} but the Tucker tensor has {core.dtype}"
        )
    return project_unchecked(core, factors, ambient)


def projected_norm(tucker: Any, ambient: Any) -> float:
    """``||P(Y) Z||``, the norm of the tangent projection, without any inverse.

    The mode-i component of ``P(Y) Z`` unfolds to ``(I - U_i U_i^T) A_i Q_i Q_i^T V^T``
    with ``A_i = unfold(Z ×_{j != i} U_j^T, i)`` and ``Q_i`` an orthonormal basis of
    the row space of ``unfold(C, i)`` (the ``pinv(C_(i)) C_(i)`` projector), so

        ||P Z||^2 = ||Z ×_j U_j^T||^2 + sum_i ||(I - U_i U_i^T) A_i Q_i||^2,

    accurate whatever the singular values of the core. For a gradient this is the
    Riemannian gradient norm (and ``A_i Q_i`` is the TDLRT K-gradient).

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point: core of shape ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``
        with orthonormal columns.
    ambient : tensor of shape (n_1, ..., n_d)
        Dense tensor of the point's full shape, e.g. a Euclidean gradient.

    Returns
    -------
    float
        ``||P(Y) Z||`` (Frobenius norm), in the units of ``ambient``'s entries.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype, or
        ``ambient`` not a tensor of the active backend with a real floating-point
        dtype.
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal (as in
        :func:`project`); if ``ambient`` has fewer than 2 modes, NaN or Inf entries,
        or a shape other than ``(n_1, ..., n_d)``.
    """
    core, factors = check_tucker(tucker, "tucker")
    check_dense(ambient, "ambient")
    if tl.shape(ambient) != tucker_shape(factors):
        raise ValueError(
            f"ambient has shape {tl.shape(ambient)} but the Tucker tensor has shape "
            f"{tucker_shape(factors)}"
        )
    contractions = GradientContractions(ambient, factors)
    total = tl.sum(contractions.core_gradient() ** 2)
    for mode, factor in enumerate(factors):
        rows, _ = reparametrize(core, mode)
        k_grad = tl.dot(contractions.unfolded_partial(mode), rows)
        normal = k_grad - tl.dot(factor, tl.dot(tl.transpose(factor), k_grad))
        total = total + tl.sum(normal**2)
    return float(tl.to_numpy(tl.sqrt(total)))


def tangent_to_tensor(tucker: Any, tangent: TangentVector) -> Any:
    """Dense tensor ``dC ×_i U_i + sum_i C ×_i dU_i ×_{j != i} U_j``.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point: core of shape ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``
        with orthonormal columns.
    tangent : TangentVector
        Tangent vector at ``tucker``: ``dC`` of shape ``(r_1, ..., r_d)``, ``dU_i`` of
        shape ``(n_i, r_i)``.

    Returns
    -------
    tensor of shape (n_1, ..., n_d)
        The tangent vector as a dense tensor (cost ``O(d prod(n) r)``).

    Raises
    ------
    TypeError
        If ``tucker`` is not a valid Tucker tensor of the active backend (as in
        :func:`project`); if ``tangent`` is not a :class:`TangentVector` or its
        components are not tensors of the active backend.
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if
        ``tangent.core`` does not have the point's rank, ``tangent`` does not have one
        factor per mode, a ``tangent.factors[i]`` is not of shape ``(n_i, r_i)``, or a
        component holds NaN or Inf.
    """
    core, factors = check_tucker(tucker, "tucker")
    tangent = _check_tangent(tangent, core, factors, "tangent")
    dense = tl.tenalg.multi_mode_dot(tangent.core, factors)
    for mode, d_factor in enumerate(tangent.factors):
        varied = list(factors)
        varied[mode] = d_factor
        dense = dense + tl.tenalg.multi_mode_dot(core, varied)
    return dense


def inner(tucker: Any, tangent_a: TangentVector, tangent_b: TangentVector) -> float:
    """Euclidean inner product of two tangent vectors, from their factors.

    With the gauge ``U_i^T dU_i = 0`` the cross terms vanish and
    ``<a, b> = <dC_a, dC_b> + sum_i trace(dU_a,i^T dU_b,i C_(i) C_(i)^T)``,
    at cost ``O(sum_i n_i r_i^2 + prod(r) sum_i r_i)``. It equals the Frobenius inner
    product of the dense tensors (:func:`tangent_to_tensor`) when both vectors satisfy
    the gauge ``U_i^T dU_i = 0``.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point: core of shape ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``
        with orthonormal columns.
    tangent_a, tangent_b : TangentVector
        Tangent vectors at ``tucker``: cores of shape ``(r_1, ..., r_d)``, factors of
        shapes ``(n_i, r_i)``.

    Returns
    -------
    float
        ``<a, b>``, in the product of the two vectors' units.

    Raises
    ------
    TypeError
        If ``tucker`` is not a valid Tucker tensor of the active backend (as in
        :func:`project`); if ``tangent_a`` or ``tangent_b`` is not a
        :class:`TangentVector` or its components are not tensors of the active
        backend.
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if a tangent
        vector's shapes do not match the point (as in :func:`tangent_to_tensor`) or
        it holds NaN or Inf.
    """
    core, factors = check_tucker(tucker, "tucker")
    tangent_a = _check_tangent(tangent_a, core, factors, "tangent_a")
    tangent_b = _check_tangent(tangent_b, core, factors, "tangent_b")
    total = tl.sum(tangent_a.core * tangent_b.core)
    for mode, (da, db) in enumerate(zip(tangent_a.factors, tangent_b.factors)):
        # C_(i) C_(i)^T = S_i S_i^T with unfold(C, i)^T = Q_i S_i^T: the mode term is
        # <dU_a S_i, dU_b S_i>, the inner product of the components themselves
        # (never the Gram matrix, whose rounding is eps * sigma_max^2)
        weight = reparametrize(core, mode)[1]
        total = total + tl.sum(tl.dot(da, weight) * tl.dot(db, weight))
    return float(tl.to_numpy(total))


def random_tangent(tucker: Any, *, random_state: Any = None) -> TangentVector:
    """Gaussian tangent vector at ``tucker`` (Gaussian components, gauge enforced).

    The components are drawn with NumPy and moved to the active backend (dtype and
    device of the core), so a seed gives the same vector on every backend.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Point: core of shape ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``
        with orthonormal columns.
    random_state : None, int or numpy.random.RandomState
        Seed or generator (``None``: NumPy's global state).

    Returns
    -------
    TangentVector
        ``dC`` of shape ``(r_1, ..., r_d)`` with standard normal entries and ``dU_i =
        (I - U_i U_i^T) X_i`` of shape ``(n_i, r_i)`` for standard normal ``X_i``.

    Raises
    ------
    TypeError
        If ``tucker`` is not a valid Tucker tensor of the active backend (as in
        :func:`project`).
    ValueError
        If ``tucker`` is malformed or its factors are not orthonormal; if
        ``random_state`` is not None, an int or a ``numpy.random.RandomState`` (a
        ``numpy.random.Generator`` is not accepted).
    """
    core, factors = check_tucker(tucker, "tucker")
    rng = tl.check_random_state(random_state)
    context = plain_context(core)
    d_core = tl.tensor(rng.standard_normal(tl.shape(core)), **context)
    d_factors = []
    for factor in factors:
        step = tl.tensor(rng.standard_normal(tl.shape(factor)), **context)
        step = step - tl.dot(factor, tl.dot(tl.transpose(factor), step))
        d_factors.append(step)
    return TangentVector(d_core, d_factors)
