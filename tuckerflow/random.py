"""Random points on the Tucker manifold, optionally with prescribed core spectra."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

from ._checks import check_rank

__all__ = ["random_tucker"]


def _orthonormal(rng: np.random.RandomState, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _spectral_core(rank: Sequence[int], values: np.ndarray) -> np.ndarray:
    """A core whose every unfolding has orthogonal rows, with prescribed row norms.

    The entries sit at ``L = max(rank)`` positions whose projections onto every set of
    ``d - 1`` modes are distinct, so every unfolding has at most one nonzero per
    column: its rows are orthogonal and its singular values are the row norms. The
    mode of largest rank gets exactly ``values``; with equal ranks every mode does.
    """
    order = len(rank)
    longest = int(np.argmax(rank))
    count = rank[longest]
    others = [m for m in range(order) if m != longest]
    widest = max(rank[m] for m in others)
    # first a "diagonal" walk that covers every index of every other mode ...
    tuples = [tuple(k % rank[m] for m in others) for k in range(widest)]
    used = set(tuples)
    # ... then any unused combinations until there is one per index of the longest mode
    for combination in itertools.product(*(range(rank[m]) for m in others)):
        if len(tuples) >= count:
            break
        if combination not in used:
            tuples.append(combination)
            used.add(combination)
    core = np.zeros(rank)
    for k in range(count):
        position = [0] * order
        position[longest] = k
        for m, index in zip(others, tuples[k]):
            position[m] = index
        core[tuple(position)] = values[k]
    return core


def random_tucker(
    shape: Sequence[int],
    rank: int | Sequence[int],
    *,
    random_state: Any = None,
    dtype: Any = None,
    singular_values: Sequence[float] | None = None,
    **context: Any,
) -> TuckerTensor:
    """Random orthonormal Tucker tensor of exact multilinear rank ``rank``.

    The random numbers are drawn with NumPy and then moved to the active backend, so
    a seed gives the same point on every backend.

    Parameters
    ----------
    shape : sequence of int
        Mode sizes ``(n_1, ..., n_d)``, ``d >= 2``.
    rank : int or sequence of int
        Multilinear rank. A sequence is taken literally: it needs ``r_i <= n_i`` and
        ``r_i <= prod_{j != i} r_j``. An int ``r`` asks for as much of ``r`` as every
        mode offers: mode ``i`` gets ``min(r, n_i, prod_{j != i} n_j)``, which is
        always a multilinear rank (e.g. ``random_tucker((3, 8, 8), 5)`` has rank
        ``(3, 5, 5)`` and ``random_tucker((2, 2, 10), 10)`` rank ``(2, 2, 4)``).
    random_state : None, int or numpy.random.RandomState
        Seed or generator (``None``: NumPy's global state).
    dtype : backend dtype, optional
        Default: float64 of the active backend.
    singular_values : sequence of float, optional
        Positive values, ``max(rank)`` of them. The core is then built so that the mode
        of largest rank has exactly these singular values (every mode does when all
        ranks are equal; a smaller-rank mode gets root-sums of squares of groups of
        them), then rotated by random orthogonal matrices in every mode, which keeps the
        spectra and makes the core dense. Use it to build ill-conditioned points.
    **context
        Passed to ``tl.tensor`` (e.g. ``device='cuda'`` on PyTorch).

    Returns
    -------
    TuckerTensor
        Core of shape ``rank`` (after capping), factors of shapes ``(n_i, r_i)``.

    Raises
    ------
    ValueError
        If ``shape`` has fewer than 2 modes or a size that is not a positive int; if
        ``rank`` is below 1, or is a sequence of the wrong length or with
        ``r_i > n_i`` or ``r_i > prod_{j != i} r_j``; if ``singular_values`` has the
        wrong length or a value that is not finite and positive; if ``random_state``
        is not None, an int or a ``numpy.random.RandomState``.
    TypeError
        If ``shape`` is not a sequence, or ``rank`` not an int or a sequence of ints.

    Examples
    --------
    >>> from tuckerflow import random_tucker
    >>> Y = random_tucker((5, 6, 7), (2, 3, 4), random_state=0)
    >>> Y.rank
    (2, 3, 4)
    """
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 modes, got {shape}")
    for mode, size in enumerate(shape):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"shape[{mode}] must be a positive int, got {size!r}")
    ranks = check_rank(rank, shape, shape)
    for mode, r in enumerate(ranks):
        others = math.prod(ranks) // r
        if r > others:
            raise ValueError(
                f"rank {ranks} is not a multilinear rank: rank[{mode}]={r} exceeds "
                f"{others}, the product of the other ranks"
            )
    rng = tl.check_random_state(random_state)
    if singular_values is None:
        core = rng.standard_normal(ranks)
    else:
        values = np.asarray(singular_values, dtype=np.float64).ravel()
        if values.size != max(ranks):
            raise ValueError(
                f"singular_values must have max(rank) = {max(ranks)} entries, got "
                f"{values.size}"
            )
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError("singular_values must be finite and > 0")
        core = _spectral_core(ranks, np.sort(values)[::-1])
        for mode, r in enumerate(ranks):
            core = np.moveaxis(
                np.tensordot(_orthonormal(rng, r, r), core, axes=(1, mode)), 0, mode
            )
    factors = [_orthonormal(rng, n, r) for n, r in zip(shape, ranks)]
    dtype = tl.backend.float64 if dtype is None else dtype
    return TuckerTensor(
        (
            tl.tensor(core, dtype=dtype, **context),
            [tl.tensor(f, dtype=dtype, **context) for f in factors],
        )
    )
