"""Truncated higher-order SVD of dense tensors and re-truncation of Tucker tensors.

Tolerance convention
--------------------
``tol`` bounds the *total* truncation error. Truncating every mode independently gives
``||W - W_r||^2 <= sum_i tail_i^2`` (tail_i: discarded singular values of mode i), so
each mode keeps the smallest rank whose tail is at most ``theta / sqrt(d')``, where
``theta = tol * ||W||`` (``relative=True``, the default) or ``theta = tol`` and ``d'``
is the number of modes that can be truncated (``d``, unless ``min_rank``/``max_rank``
pin some modes to their full size, as a network layer does for kernel modes). Hence
``||W - W_r|| <= theta`` whenever ``max_rank`` does not cut a rank below what the rule
asks. A per-mode threshold of ``theta`` itself would let the error reach
``sqrt(d) * theta``: on a 4-mode convolution kernel, a relative 0.3 could discard 60%.

The (truncated) HOSVD and its error bound are from L. De Lathauwer, B. De Moor,
J. Vandewalle, "A multilinear singular value decomposition", SIAM J. Matrix Anal.
Appl. 21(4), 1253-1278, 2000. The mathematics is on the Concepts page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ._checks import check_dense, check_tucker, tucker_shape
from .backend import plain_context, to_float
from .linalg import fix_column_signs, left_singular, mode_product, thin_qr, thin_svd
from .ranks import RankRule, RankSpec, rule_from_keywords

__all__ = ["hosvd", "truncate"]


@rule_from_keywords
def hosvd(
    tensor: Any,
    rank: RankSpec = None,
    *,
    tol: float | None = None,
    relative: bool = True,
    min_rank: RankSpec = 1,
    max_rank: RankSpec = None,
    budget: int | None = None,
    rule: RankRule | None = None,
) -> TuckerTensor:
    """Truncated higher-order SVD (HOSVD) of a dense tensor [1]_.

    ``U_i`` are the leading left singular vectors of ``unfold(tensor, i)`` and the core
    is ``tensor ×_i U_i^T``. The ranks come from exactly one rule: an explicit ``rank``,
    a tolerance ``tol`` (see the module notes: ``tol`` bounds the total error), a
    parameter ``budget``, or, if none is given, every available direction. The
    mathematics is on the Concepts page (sections "Tucker tensors and the HOSVD" and
    "What the tolerance means").

    Parameters
    ----------
    tensor : tensor of shape (n_1, ..., n_d)
        Dense tensor with ``d >= 2`` modes, of a real floating-point dtype, on the
        active backend, with finite entries.
    rank : int or sequence of int, optional
        Target rank ``(r_1, ..., r_d)``. An int applies to every mode, capped at what
        each mode offers; a sequence is used as given and must satisfy
        ``1 <= rank[i] <= min(n_i, prod_{j != i} n_j)``.
    tol : float, optional
        Truncation tolerance: ``||tensor - result|| <= tol * ||tensor||`` when
        ``relative`` (default; a dimensionless fraction in ``[0, 1)``), ``<= tol``
        otherwise (an absolute Frobenius norm, in the units of the tensor's entries,
        ``>= 0``).
    relative : bool, default True
        Whether ``tol`` is relative to the Frobenius norm of the tensor.
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the ranks chosen by ``tol`` or ``budget`` (an int applies to every
        mode; ``max_rank`` defaults to the mode sizes ``n_i``).
    budget : int, optional
        Maximum number of stored entries ``prod(r) + sum(n_i r_i)`` (core plus
        factors); ranks keep the most singular-value energy that fits
        (see :func:`tuckerflow.ranks.ranks_from_budget`).
    rule : RankRule, optional
        The six keywords above as one validated value, for a rule used more than
        once; with ``rule`` they keep their defaults.

    Returns
    -------
    TuckerTensor
        ``(core, factors)``: core of shape ``(r_1, ..., r_d)``, factors of shapes
        ``(n_i, r_i)`` with orthonormal columns, in the dtype and on the device of
        ``tensor``.

    Raises
    ------
    TypeError
        If ``tensor`` is not a tensor of the active backend or has no real
        floating-point dtype; if ``rank``, ``min_rank`` or ``max_rank`` is not an int
        or a sequence of ints, ``tol`` not a real number, ``budget`` not an int, or
        ``rule`` not a :class:`RankRule`.
    ValueError
        If ``tensor`` has fewer than 2 modes or NaN or Inf entries; if more than one of
        ``rank``, ``tol`` and ``budget`` is given, or ``rule`` with any of them; if a
        rank or rank bound is below 1, a sequence has not one entry per mode,
        ``rank[i]`` exceeds ``n_i`` or ``prod_{j != i} n_j``, or ``max_rank[i]`` exceeds
        ``n_i``; if ``min_rank`` exceeds ``max_rank`` in a mode; if ``tol`` is not
        finite, lies outside ``[0, 1)`` with ``relative=True`` or is negative; if
        ``budget`` is smaller than the parameter count at ``min_rank``.

    Notes
    -----
    Error bound [1]_: ``||W - W_r||^2 <= sum_i sum_{k > r_i} sigma_{i,k}^2``, with
    ``sigma_{i,k}`` the singular values of ``unfold(W, i)``; hence the truncated HOSVD
    is within ``sqrt(d)`` of the best approximation of rank ``r``.

    References
    ----------
    .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> from tuckerflow import hosvd
    >>> W = tl.tensor(np.random.default_rng(0).standard_normal((6, 7, 8)))
    >>> hosvd(W, rank=(2, 3, 4)).rank
    (2, 3, 4)
    """
    check_dense(tensor, "tensor")
    shape = tl.shape(tensor)
    rule.check(shape, shape)
    bases, spectra = zip(
        *(left_singular(tl.unfold(tensor, m)) for m in range(len(shape)))
    )
    ranks = rule.choose(spectra, shape, shape)
    factors = [basis[:, :r] for basis, r in zip(bases, ranks)]
    core = tl.tenalg.multi_mode_dot(tensor, factors, transpose=True)
    return TuckerTensor((core, factors))


def pinned_modes(
    dims: Sequence[int],
    shape: Sequence[int],
    *,
    rank: RankSpec,
    min_rank: RankSpec,
    max_rank: RankSpec,
) -> list[bool]:
    """:meth:`RankRule.pinned` for callers that hold the bounds as keywords."""
    return RankRule(rank=rank, min_rank=min_rank, max_rank=max_rank).pinned(dims, shape)


def core_singular_vectors(
    core: Any, skip: Sequence[bool] | None = None
) -> tuple[list[Any], list[Any]]:
    """Left singular vectors and values of every unfolding of a (small) core.

    For a matrix (order 2) one SVD gives both modes. Modes flagged in ``skip`` get
    ``None`` for both.
    """
    order = tl.ndim(core)
    skip = [False] * order if skip is None else list(skip)
    if order == 2 and not any(skip):
        left, values, right_t = thin_svd(core)
        left = fix_column_signs(left)
        right = fix_column_signs(tl.transpose(right_t))
        return [left, right], [values, values]
    bases, spectra = [], []
    for mode in range(order):
        if skip[mode]:
            bases.append(None)
            spectra.append(None)
        else:
            basis, values = left_singular(tl.unfold(core, mode))
            bases.append(basis)
            spectra.append(values)
    return bases, spectra


@dataclasses.dataclass
class CoreDecomposition:
    """Singular vectors and values of a core's unfoldings (None for pinned modes)."""

    bases: list[Any]
    spectra: list[Any]
    norm: float


def decompose_core(
    core: Any, factors: Sequence[Any], rule: RankRule
) -> CoreDecomposition:
    """The SVDs :func:`truncate_core` needs, computed once (e.g. to pick ranks across
    several tensors before truncating each); modes ``rule`` pins are skipped."""
    pinned = rule.pinned(tl.shape(core), tucker_shape(factors))
    bases, spectra = core_singular_vectors(core, skip=pinned)
    return CoreDecomposition(list(bases), list(spectra), to_float(tl.norm(core)))


def truncate_core(
    core: Any,
    factors: Sequence[Any],
    rule: RankRule,
    *,
    decomposition: CoreDecomposition | None = None,
) -> tuple[TuckerTensor, list[Any], list[Any]]:
    """Unchecked truncation through the HOSVD of the core, by ``rule``.

    The building block of :func:`truncate` and of every integrator: ``factors`` must be
    orthonormal and ``rule`` checked against them (neither verified here).

    Returns
    -------
    tucker : TuckerTensor
        ``(C ×_i P_i^T, [U_i P_i])``.
    spectra : list of tensors
        Singular values of each core unfolding (before truncation).
    changes : list of tensors
        ``T_i`` of shape ``(r_i_new, r_i)`` with ``new coordinates = T_i @ old
        coordinates`` in mode i (``R_i P_i^T``: the kept singular vectors ``P_i``
        followed by the final re-orthonormalization ``U_i P_i = Q_i R_i``). Optimizer
        state follows these.
    """
    dims = tl.shape(core)
    shape = tucker_shape(factors)
    if decomposition is None:
        decomposition = decompose_core(core, factors, rule)
    bases, spectra = decomposition.bases, decomposition.spectra
    ranks = rule.choose(spectra, dims, shape, norm=decomposition.norm)
    new_core = core
    new_factors, changes = [], []
    for mode, (factor, basis, r) in enumerate(zip(factors, bases, ranks)):
        if basis is None:  # pinned: nothing to truncate or rotate in this mode
            if r != dims[mode]:
                raise ValueError(
                    f"mode {mode} was decomposed as pinned but is asked for rank {r}"
                )
            new_factors.append(factor)
            changes.append(tl.eye(r, **plain_context(core)))
            continue
        kept = basis[:, :r]
        new_core = mode_product(new_core, kept, mode, transpose=True)
        # U_i P_i is orthonormal to a few eps plus the defect of U_i; one more thin
        # QR (R = I + O(eps), absorbed into the core) makes the defect independent
        # of the history, so it cannot accumulate over thousands of steps (P8)
        q, upper = thin_qr(tl.dot(factor, kept))
        new_factors.append(q)
        new_core = mode_product(new_core, upper, mode)
        changes.append(tl.dot(upper, tl.transpose(kept)))
    return TuckerTensor((new_core, new_factors)), list(spectra), changes


@rule_from_keywords
def truncate(
    tucker: Any,
    rank: RankSpec = None,
    *,
    tol: float | None = None,
    relative: bool = True,
    min_rank: RankSpec = 1,
    max_rank: RankSpec = None,
    budget: int | None = None,
    rule: RankRule | None = None,
) -> TuckerTensor:
    """Re-truncate an orthonormal Tucker tensor through the HOSVD of its core.

    Since the factors are orthonormal, ``unfold(W, i) = U_i unfold(C, i) (...)^T`` has
    the singular values of ``unfold(C, i)`` and left singular vectors ``U_i P_i``; the
    result equals :func:`hosvd` [1]_ of the dense tensor without ever forming it.
    Cost: SVDs of the core unfoldings plus ``n_i r_i^2`` per factor. The factors of
    the result are re-orthonormalized by a thin QR, so their orthonormality defect
    does not accumulate over repeated truncations.

    Parameters
    ----------
    tucker : TuckerTensor or (core, factors)
        Orthonormal Tucker tensor: core of shape ``(r_1, ..., r_d)``, ``d >= 2``,
        factors of shapes ``(n_i, r_i)`` with orthonormal columns (to
        ``sqrt(eps)`` of the dtype), one real floating-point dtype, finite entries.
    rank : int or sequence of int, optional
        Target rank, as in :func:`hosvd`; a sequence cannot exceed the current rank
        ``r_i`` (an int is capped at it).
    tol : float, optional
        Total truncation tolerance, as in :func:`hosvd`: relative to ``||tucker||``
        (a fraction in ``[0, 1)``) or absolute (units of the entries).
    relative : bool, default True
        Whether ``tol`` is relative to the norm of ``tucker``.
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the ranks chosen by ``tol`` or ``budget``.
    budget : int, optional
        Maximum parameter count ``prod(r) + sum(n_i r_i)`` of the result.
    rule : RankRule, optional
        The six keywords above as one value, as in :func:`hosvd`.

    Returns
    -------
    TuckerTensor
        Core of shape ``(s_1, ..., s_d)`` with ``s_i <= r_i`` and factors of shapes
        ``(n_i, s_i)`` with orthonormal columns.

    Raises
    ------
    TypeError
        If ``tucker`` is not a ``TuckerTensor`` or ``(core, factors)`` pair of
        tensors of the active backend with one real floating-point dtype; if
        ``rank``, ``min_rank`` or ``max_rank`` is not an int or a sequence of ints,
        ``tol`` not a real number, ``budget`` not an int, or ``rule`` not a
        :class:`RankRule`.
    ValueError
        If ``tucker`` is malformed (a core with fewer than 2 modes, not one factor per
        mode, ``factors[i].shape[1] != core.shape[i]``, NaN or Inf entries) or its
        factors are not orthonormal; if more than one of ``rank``, ``tol`` and
        ``budget`` is given, or ``rule`` with any of them; if ``rank[i]`` is below 1 or
        exceeds the current rank ``r_i`` (truncation cannot increase a rank); otherwise
        as :func:`hosvd` for ``min_rank``, ``max_rank``, ``tol`` and ``budget``.

    References
    ----------
    .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.

    Examples
    --------
    >>> from tuckerflow import random_tucker, truncate
    >>> Y = random_tucker((8, 8, 8), (4, 4, 4), random_state=0)
    >>> truncate(Y, rank=2).rank
    (2, 2, 2)
    """
    core, factors = check_tucker(tucker, "tucker")
    rule.check(tl.shape(core), tucker_shape(factors))
    result, _, _ = truncate_core(core, factors, rule)
    return result
