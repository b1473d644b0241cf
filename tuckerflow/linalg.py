"""Small dense linear-algebra building blocks, written against ``tl.*`` only.

Every factorization here is of a thin or small matrix (``n x 2r`` or ``r x prod(r)``);
the expensive work in tuckerflow is contracting a large tensor with thin factors, which
:func:`contract` and :func:`contract_all_but_one` organise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorly as tl

from .backend import plain_context

__all__ = [
    "fix_column_signs",
    "left_singular",
    "orthonormal_basis",
    "augment_basis",
    "contract",
    "contract_all_but_one",
    "pseudo_inverse_rows",
]


def fix_column_signs(vectors: Any, reference: Any | None = None) -> Any:
    """Flip columns so that each column's entry of largest magnitude is positive.

    Singular vectors are defined up to sign and different LAPACK builds choose
    differently; fixing the sign makes results identical across backends.

    Parameters
    ----------
    vectors : tensor of shape (n, k)
    reference : tensor of shape (n, k), optional
        Decide the signs from this matrix instead (same sign pattern applied).
    """
    reference = vectors if reference is None else reference
    rows = tl.argmax(tl.abs(reference), axis=0)
    columns = tl.arange(tl.shape(reference)[1])
    pivots = reference[rows, columns]
    ones = tl.ones(tl.shape(pivots), **plain_context(vectors))
    signs = tl.where(pivots < 0, -ones, ones)
    return vectors * tl.reshape(signs, (1, -1))


def left_singular(matrix: Any) -> tuple[Any, Any]:
    """Thin SVD keeping only the left side: ``matrix = P diag(s) (...)^T``.

    Returns
    -------
    P : tensor of shape (m, k), k = min(m, n)
        Left singular vectors, sign-normalised with :func:`fix_column_signs`.
    s : tensor of shape (k,)
        Singular values in decreasing order.
    """
    left, values, _ = tl.svd(matrix, full_matrices=False)
    return fix_column_signs(left), values


def orthonormal_basis(matrix: Any) -> Any:
    """Orthonormal basis of the columns of a tall matrix (reduced QR, diag(R) >= 0)."""
    q, r = tl.qr(matrix)
    ones = tl.ones((tl.shape(r)[0],), **plain_context(matrix))
    signs = tl.where(tl.diag(r) < 0, -ones, ones)
    return q * tl.reshape(signs, (1, -1))


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


def contract(tensor: Any, matrices: Sequence[Any], modes: Sequence[int]) -> Any:
    """``tensor ×_m matrices[k]^T`` over the given modes, cheapest order first.

    Modes are contracted in decreasing order of shrink factor ``n_m / r_m``, which
    minimises the size of the intermediates (and hence the flops) for thin factors.
    """
    pairs = sorted(
        zip(modes, matrices),
        key=lambda pair: -tl.shape(pair[1])[0] / max(tl.shape(pair[1])[1], 1),
    )
    for mode, matrix in pairs:
        tensor = tl.tenalg.mode_dot(tensor, tl.transpose(matrix), mode)
    return tensor


def contract_all_but_one(tensor: Any, matrices: Sequence[Any]) -> list[Any]:
    """For every mode i, ``tensor ×_{j != i} matrices[j]^T``.

    Divide and conquer over the modes: the full-size tensor is contracted twice (once
    per half), not ``d - 1`` times per mode, so for d = 3 and thin factors the cost is
    about two mode products with the full tensor.

    Returns
    -------
    list of tensors
        Entry i keeps mode i at full size and all other modes contracted.
    """
    results: dict[int, Any] = {}

    def recurse(partial: Any, modes: list[int]) -> None:
        if len(modes) == 1:
            results[modes[0]] = partial
            return
        half = len(modes) // 2
        left, right = modes[:half], modes[half:]
        recurse(contract(partial, [matrices[m] for m in right], right), left)
        recurse(contract(partial, [matrices[m] for m in left], left), right)

    recurse(tensor, list(range(len(matrices))))
    return [results[mode] for mode in range(len(matrices))]


def pseudo_inverse_rows(matrix: Any) -> Any:
    """Moore-Penrose pseudo-inverse of a wide matrix via its thin SVD.

    Singular values below ``max(shape) * eps * sigma_max`` are treated as zero (the
    NumPy ``pinv`` convention).
    """
    left, values, right_t = tl.svd(matrix, full_matrices=False)
    eps = float(tl.finfo(matrix.dtype).eps)
    cutoff = max(tl.shape(matrix)) * eps * values[0]
    safe = tl.where(values > cutoff, values, values * 0 + 1)
    inverse = tl.where(values > cutoff, 1 / safe, values * 0)
    return tl.dot(
        tl.transpose(right_t) * tl.reshape(inverse, (1, -1)), tl.transpose(left)
    )
