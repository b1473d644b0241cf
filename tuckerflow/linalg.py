"""Small dense linear-algebra building blocks, written against ``tl.*`` only.

Every factorization here is of a thin or small matrix (``n x 2r`` or ``r x prod(r)``);
the expensive work, contracting a large tensor with thin factors, is organised in
:mod:`tuckerflow.contractions`.
"""

from __future__ import annotations

import contextvars
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tensorly as tl

from .backend import is_finite, plain_context, to_float

__all__ = [
    "mode_product",
    "fix_column_signs",
    "host_factorizations",
    "set_host_factorizations",
    "thin_svd",
    "left_singular",
    "thin_qr",
    "orthonormal_basis",
    "augment_basis",
    "reciprocal_above",
    "pseudo_inverse_rows",
]


def mode_product(
    tensor: Any, matrix: Any, mode: int, *, transpose: bool = False
) -> Any:
    """``tensor ×_mode matrix`` (``matrix^T`` if ``transpose``), no unfolding copies.

    The tensor is viewed as ``(a, n, b)`` (a reshape, no copy, for contiguous tensors)
    and multiplied by one batched matmul; ``tl.tenalg.mode_dot`` instead moves the mode
    to the front, which copies the whole tensor for every mode but the first. On a
    256^3 tensor this is the difference between about 1 and 3 passes over memory.

    Parameters
    ----------
    tensor : tensor of shape (..., n, ...)
        Any tensor; ``n`` is its size in ``mode``.
    matrix : tensor of shape (m, n), or (n, m) with ``transpose=True``
        The matrix applied to that mode.
    mode : int
        The mode, ``0 <= mode < tensor.ndim``.
    transpose : bool, default False
        Apply ``matrix^T`` instead of ``matrix``.

    Returns
    -------
    tensor of shape (..., m, ...)
        ``n`` replaced by ``m`` in position ``mode``.
    """
    shape = tl.shape(tensor)
    size = shape[mode]
    before = math.prod(shape[:mode])
    after = math.prod(shape[mode + 1 :])
    if transpose:
        width = tl.shape(matrix)[1]
        if after == 1:
            product = tl.dot(tl.reshape(tensor, (before, size)), matrix)
        else:
            product = tl.matmul(
                tl.transpose(matrix), tl.reshape(tensor, (before, size, after))
            )
    else:
        width = tl.shape(matrix)[0]
        if after == 1:
            product = tl.dot(tl.reshape(tensor, (before, size)), tl.transpose(matrix))
        else:
            product = tl.matmul(matrix, tl.reshape(tensor, (before, size, after)))
    return tl.reshape(product, (*shape[:mode], width, *shape[mode + 1 :]))


HOST_AUTO_MAX_WORK = 2**18
"""Largest ``m * n * min(m, n)`` whose SVD ``"auto"`` mode runs on the host."""

_HOST_MODE: contextvars.ContextVar = contextvars.ContextVar(
    "host_factorizations", default=False
)


def _check_host_mode(mode: bool | str) -> bool | str:
    if mode not in (True, False, "auto"):
        raise ValueError(
            f"host factorizations: expected True, False or 'auto', got {mode!r}"
        )
    return mode


def set_host_factorizations(mode: bool | str) -> None:
    """Choose where the small QR, SVD and eigendecompositions of the steps run.

    The host path copies the matrix to NumPy, factorizes it with LAPACK and copies
    the factors back with the input's dtype and device: the same factorization,
    computed elsewhere. It exists for GPUs, where cuSOLVER's factorizations of small
    matrices are latency bound. Measured on an H200 (float32, PyTorch; see
    ``benchmarks/small_factorizations.py``): the SVD of a 64 x 16 matrix took 0.16 ms
    on the host against 0.65 ms on the GPU, of 256 x 32 0.42 against 0.89 ms, but of
    800 x 48 8.0 against 1.8 ms; a QR was never faster on the host (1.2x slower at
    64 x 16). End to end, moving every factorization up to ``m n min(m, n) = 2^24``
    to the host changed a TDLRT step of LeNet-5 at 95% compression from 42.9 to
    41.2 ms and of the small VGG from 73.7 to 88.1 ms: hence the default ``False``
    and the narrower ``"auto"`` rule.

    The setting is a context variable: it holds for the current thread (and
    asyncio task) from now on.

    Parameters
    ----------
    mode : {False, "auto", True}
        ``False`` (default): the backend's own routines. ``"auto"``: SVDs and
        eigendecompositions on the host when the matrix lives on a GPU (CuPy, or a
        CUDA torch tensor) and ``m * n * min(m, n) <= HOST_AUTO_MAX_WORK``; QR stays
        on the device. ``True``: every factorization on the host.

    Raises
    ------
    ValueError
        If ``mode`` is not ``True``, ``False`` or ``"auto"``.

    See Also
    --------
    host_factorizations : the same setting for a ``with`` block.
    """
    _HOST_MODE.set(_check_host_mode(mode))


@contextmanager
def host_factorizations(mode: bool | str = True) -> Iterator[None]:
    """:func:`set_host_factorizations` for the duration of a ``with`` block.

    The previous setting is restored on exit, also when the block raises.

    Parameters
    ----------
    mode : {True, "auto", False}, default True
        As in :func:`set_host_factorizations`.

    Raises
    ------
    ValueError
        If ``mode`` is not ``True``, ``False`` or ``"auto"`` (before the block runs).
    """
    token = _HOST_MODE.set(_check_host_mode(mode))
    try:
        yield
    finally:
        _HOST_MODE.reset(token)


def _on_accelerator(matrix: Any) -> bool:
    if tl.get_backend() == "cupy":
        return True
    device = getattr(matrix, "device", None)  # torch.device; "cpu" for NumPy 2
    return getattr(device, "type", "cpu") != "cpu"


def _on_host(matrix: Any, factorization: str) -> bool:
    mode = _HOST_MODE.get()
    if mode != "auto":
        return mode
    if factorization == "qr":
        return False
    rows, cols = tl.shape(matrix)
    work = rows * cols * min(rows, cols)
    return work <= HOST_AUTO_MAX_WORK and _on_accelerator(matrix)


def _like(array: np.ndarray, matrix: Any) -> Any:
    return tl.tensor(array, **plain_context(matrix))


def _svd(matrix: Any, check_finite: bool = True) -> tuple[Any, Any, Any]:
    if _on_host(matrix, "svd"):
        factors = np.linalg.svd(tl.to_numpy(matrix), full_matrices=False)
        return tuple(_like(f, matrix) for f in factors)
    factors = tl.svd(matrix, full_matrices=False)
    # cuSOLVER returns NaN for NaN input: no error
    if check_finite and not is_finite(factors[1]):
        raise ValueError(
            "thin_svd: the matrix has non-finite entries (NaN or inf): its singular "
            "values are not finite"
        )
    return factors


def _qr(matrix: Any, mode: str = "reduced") -> Any:
    """``(Q, R)``, or ``R`` alone for ``mode="r"``, on every backend and path."""
    if _on_host(matrix, "qr"):
        result = np.linalg.qr(tl.to_numpy(matrix), mode=mode)
        return (
            _like(result, matrix)
            if mode == "r"
            else tuple(_like(f, matrix) for f in result)
        )
    result = tl.qr(matrix, mode=mode)
    if mode == "r" and isinstance(result, tuple):
        return result[1]  # NumPy and CuPy return R alone; PyTorch (empty Q, R)
    return result


def _eigh(matrix: Any) -> tuple[Any, Any]:
    if _on_host(matrix, "eigh"):
        values, vectors = np.linalg.eigh(tl.to_numpy(matrix))
        return _like(values, matrix), _like(vectors, matrix)
    return tl.eigh(matrix)


def fix_column_signs(vectors: Any, reference: Any | None = None) -> Any:
    """Flip columns so that each column's entry of largest magnitude is positive.

    Singular vectors are defined up to sign and different LAPACK builds choose
    differently; fixing the sign makes results identical across backends.

    Parameters
    ----------
    vectors : tensor of shape (n, k)
        Columns to normalise.
    reference : tensor of shape (n, k), optional
        Decide the signs from this matrix instead (same sign pattern applied).

    Returns
    -------
    tensor of shape (n, k)
        ``vectors`` with some columns negated.
    """
    reference = vectors if reference is None else reference
    rows = tl.argmax(tl.abs(reference), axis=0)
    columns = tl.arange(tl.shape(reference)[1])
    pivots = reference[rows, columns]
    ones = tl.ones(tl.shape(pivots), **plain_context(vectors))
    signs = tl.where(pivots < 0, -ones, ones)
    return vectors * tl.reshape(signs, (1, -1))


def _did_not_converge(error: Exception) -> bool:
    """Whether a backend's SVD raised because its iteration did not converge.

    NumPy and CuPy raise ``numpy.linalg.LinAlgError``; PyTorch raises
    ``torch.linalg.LinAlgError`` (a ``RuntimeError``). Matched by name so that the
    core never imports a backend.
    """
    name = type(error).__name__
    return name.endswith("LinAlgError") or "converge" in str(error).lower()


def thin_svd(matrix: Any, check_finite: bool = True) -> tuple[Any, Any, Any]:
    """Thin SVD ``matrix = U diag(s) V^T`` that survives LAPACK's rare failures.

    The divide-and-conquer drivers behind ``tl.svd`` (``gesdd``) occasionally report
    that they did not converge on matrices with many (near-)repeated singular values,
    which augmented cores with zero blocks have. Two fallbacks, each exact in exact
    arithmetic, are tried in turn:

    1. the SVD of the triangular factor ``R`` of ``matrix = Q R`` (Householder QR
       never fails; ``R`` has the same singular values and right vectors, and the
       iteration starts from a different matrix);
    2. the symmetric eigendecomposition of the Gram matrix ``M^T M`` (or ``M M^T``):
       singular values below ``sqrt(eps) * s_max`` lose their relative accuracy, so
       a :class:`RuntimeWarning` says it was used.

    Non-finite input is not retried: the error names it.

    Parameters
    ----------
    matrix : tensor of shape (m, n)
        Real floating-point matrix of the active backend.
    check_finite : bool, default True
        Check that the singular values are finite (a device-to-host read); a
        caller that knows the matrix is finite, or checks it in a transfer of its
        own, passes False (non-finite input then yields NaN factors where the
        backend does not raise).

    Returns
    -------
    U : tensor of shape (m, k), k = min(m, n)
        Left singular vectors, orthonormal columns.
    s : tensor of shape (k,)
        Singular values, decreasing.
    Vt : tensor of shape (k, n)
        Right singular vectors, orthonormal rows.

    Raises
    ------
    ValueError
        If ``matrix`` has NaN or Inf entries (detected from the backend's error or
        from non-finite singular values).
    Exception
        Whatever the backend's SVD raises for another reason than
        non-convergence, unchanged.

    Warns
    -----
    RuntimeWarning
        When both SVDs failed to converge and the Gram-matrix fallback was used.
    """
    try:
        left, values, right_t = _svd(matrix, check_finite)
    except Exception as error:  # backend-specific classes, matched by name below
        if not _did_not_converge(error):
            raise
        if not is_finite(matrix):
            raise ValueError(
                "thin_svd: the matrix has non-finite entries (NaN or inf)"
            ) from error
        first_error = error
    else:
        return left, values, right_t
    rows, cols = tl.shape(matrix)
    transposed = rows < cols
    tall = tl.transpose(matrix) if transposed else matrix
    try:
        q, r = _qr(tall)
        left, values, right_t = _svd(r)
        left = tl.dot(q, left)
    except Exception as error:  # as above
        if not _did_not_converge(error):
            raise
        warnings.warn(
            f"SVD did not converge ({first_error}); using the eigendecomposition of "
            "the Gram matrix: singular values below sqrt(eps) * s_max are inaccurate",
            RuntimeWarning,
            stacklevel=2,
        )
        left, values, right_t = _gram_svd(tall)
    if transposed:
        return tl.transpose(right_t), values, tl.transpose(left)
    return left, values, right_t


def _gram_svd(tall: Any) -> tuple[Any, Any, Any]:
    """Thin SVD of a tall matrix from ``eigh(M^T M)`` (last-resort fallback)."""
    eigenvalues, right = _eigh(tl.dot(tl.transpose(tall), tall))
    values = tl.sqrt(tl.clip(tl.flip(eigenvalues, axis=0), 0, None))  # decreasing
    right = tl.flip(right, axis=1)
    cutoff = float(tl.finfo(tall.dtype).eps) * to_float(values[0])
    safe = tl.where(values > cutoff, values, values * 0 + 1)
    # columns of (near-)zero singular values are junk: QR keeps the others (diag(R)
    # >= 0 keeps their signs) and completes these to an orthonormal set
    left = thin_qr(tl.dot(tall, right) / tl.reshape(safe, (1, -1)))[0]
    return left, values, tl.transpose(right)


SMALL_SVD_ENTRIES = 2**16
"""Wide matrices up to this many entries get one SVD in :func:`left_singular`."""


def left_singular(matrix: Any) -> tuple[Any, Any]:
    """Thin SVD keeping only the left side: ``matrix = P diag(s) (...)^T``.

    Large wide matrices (``n > 2 m``, more than ``SMALL_SVD_ENTRIES`` entries) go
    through the triangular factor of a QR of ``matrix^T`` first, which is cheaper
    and has the same left singular vectors; small ones (the unfoldings of an
    integrator's core) take one SVD, where the call, not the arithmetic, costs.

    Parameters
    ----------
    matrix : tensor of shape (m, n)
        Real floating-point matrix, e.g. an unfolding ``unfold(X, i)``.

    Returns
    -------
    P : tensor of shape (m, k), k = min(m, n)
        Left singular vectors, sign-normalised with :func:`fix_column_signs`.
    s : tensor of shape (k,)
        Singular values in decreasing order.
    """
    rows, cols = tl.shape(matrix)
    if cols > 2 * rows and rows * cols > SMALL_SVD_ENTRIES:
        # matrix = R^T Q^T: the left singular vectors and values are those of the small
        # square R^T; QR is backward stable and computing R alone skips both Q and the
        # wide right singular vectors (6x faster than a thin SVD for 128 x 16384)
        left, values, _ = thin_svd(
            tl.transpose(_triangular_factor(tl.transpose(matrix)))
        )
    else:
        left, values, _ = thin_svd(matrix)
    return fix_column_signs(left), values


def _triangular_factor(matrix: Any) -> Any:
    """R of the reduced QR of a tall matrix, without forming Q."""
    return _qr(matrix, mode="r")


def thin_qr(matrix: Any) -> tuple[Any, Any]:
    """Reduced QR with ``diag(R) >= 0`` (unique for full column rank, on any backend).

    Parameters
    ----------
    matrix : tensor of shape (m, n)
        Real floating-point matrix.

    Returns
    -------
    Q : tensor of shape (m, k), k = min(m, n)
    R : tensor of shape (k, n), upper triangular
    """
    q, r = _qr(matrix)
    ones = tl.ones((tl.shape(r)[0],), **plain_context(matrix))
    signs = tl.where(tl.diag(r) < 0, -ones, ones)
    return q * tl.reshape(signs, (1, -1)), r * tl.reshape(signs, (-1, 1))


def orthonormal_basis(matrix: Any) -> Any:
    """Orthonormal basis of the columns of a tall matrix (Q of :func:`thin_qr`).

    Parameters
    ----------
    matrix : tensor of shape (m, n)
        Its columns span the space; rank-deficient columns are completed by
        arbitrary orthonormal ones.

    Returns
    -------
    tensor of shape (m, min(m, n))
        Orthonormal columns.
    """
    return thin_qr(matrix)[0]


def augment_basis(basis: Any, directions: Any) -> Any:
    """Orthonormal basis of ``span([basis, directions])``, first columns ``basis``.

    One Householder QR of the concatenation: the result is orthonormal to rounding
    error whatever the conditioning of ``directions`` (rank-deficient directions are
    completed by arbitrary orthonormal columns), and its first ``r`` columns equal the
    orthonormal ``basis`` up to rounding, so ``result.T @ basis == [I; 0]``.

    Parameters
    ----------
    basis : tensor of shape (n, r)
        Orthonormal columns.
    directions : tensor of shape (n, k)

    Returns
    -------
    tensor of shape (n, min(n, r + k))
    """
    return orthonormal_basis(tl.concatenate([basis, directions], axis=1))


def reciprocal_above(values: Any, cutoff: Any) -> Any:
    """``1 / values`` where ``values > cutoff``, else 0 (no division by zero).

    Parameters
    ----------
    values : tensor of shape (k,)
        Singular values, say.
    cutoff : float or 0-d tensor
        Absolute threshold, in the units of ``values``.

    Returns
    -------
    tensor of shape (k,)
        The truncated reciprocals.
    """
    safe = tl.where(values > cutoff, values, values * 0 + 1)
    return tl.where(values > cutoff, 1 / safe, values * 0)


def pseudo_inverse_rows(matrix: Any) -> Any:
    """Moore-Penrose pseudo-inverse of a wide matrix via its thin SVD.

    Singular values below ``max(shape) * eps * sigma_max`` are treated as zero (the
    NumPy ``pinv`` convention).

    Parameters
    ----------
    matrix : tensor of shape (m, n)
        Real floating-point matrix (typically ``m <= n``, a core unfolding).

    Returns
    -------
    tensor of shape (n, m)
        ``pinv(matrix)``.
    """
    left, values, right_t = thin_svd(matrix)
    eps = float(tl.finfo(matrix.dtype).eps)
    cutoff = max(tl.shape(matrix)) * eps * values[0]
    inverse = reciprocal_above(values, cutoff)
    return tl.dot(
        tl.transpose(right_t) * tl.reshape(inverse, (1, -1)), tl.transpose(left)
    )
