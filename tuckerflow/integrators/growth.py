"""Rank growth: augment the bases with the gradient's dominant directions outside them.

Why: the rank-adaptive steps (TDLRT, parallel BUG, rank-adaptive RCG) only ever add
the K-step directions ``(I - U_i U_i^T) dL/dK_i`` to the bases. At a point that is
stationary for its rank (every ``dL/dK_i`` inside ``span(U_i)``) those are zero: the
augmentation is arbitrary, the truncation removes it again, and the ranks can never
grow although the full gradient ``G`` is far from zero. And the relative truncation
tolerance alone decides growth from the size of a single step's new block, which
on completion problems either lets sampling noise in (ranks race to the cap) or
keeps what matters out (a tolerance looser than the accuracy aimed at).

The remedy is the greedy rank increase of Riemannian rank-adaptive methods
(Uschmajew and Vandereycken 2015; Gao and Absil 2022), in Tucker form: steps are taken
at the current ranks (the truncation tolerance may only *reduce* them), and when the
steepest direction outside the tangent space is steeper than the Riemannian gradient
by a factor ``1 / stationarity``, a growth step augments every mode's basis with the
leading left singular vectors of the mode's normal component
``(I - U_i U_i^T) unfold(G, i)`` (found by a randomized subspace iteration, never an
SVD of the unfolding) and takes the Galerkin step of :func:`tdlrt_step` in these
bases; the truncation may then keep up to ``r_i + l_i`` columns. ``l_i`` is the number
of mode-i directions above the largest relative gap ``sigma_k / sigma_{k+1} >= gap``
of the normal spectrum (all the directions that clearly stand out, at once), else the
number at least ``ratio`` times as steep as the steepest (the greedy update). A growth
that the next step drops again is not retried at those ranks for ``refresh``
iterations (then twice as long, ...).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ..backend import plain_context, to_float
from ..linalg import fix_column_signs, left_singular, mode_product, thin_qr
from ..ranks import RankRule
from ..retraction import augment_bases, lift
from ._blocks import AugmentedStep, is_full_rank

__all__ = ["RankGrowth", "normal_directions"]


@dataclasses.dataclass(frozen=True)
class RankGrowth:
    """When and how far the rank-adaptive methods of :func:`integrate` grow ranks.

    With ``G`` the Euclidean gradient at ``Y = C ×_i U_i``, ``xi = ||P(Y) G||`` the
    Riemannian gradient norm and ``sigma_{i,1} >= sigma_{i,2} >= ...`` the singular
    values of the mode-i normal component ``(I - U_i U_i^T) unfold(G, i)``
    (``sigma_max`` the largest over the modes): ``sigma_{i,k}`` is the slope of the
    steepest unit direction that adds ``k`` columns to ``U_i``, ``xi`` that of the
    steepest direction at the current ranks. A step

    * grows when ``xi <= stationarity * sigma_max`` (the point is nearly stationary for
      its ranks compared with what a larger rank offers): mode ``i`` gains ``l_i``
      directions, at most what ``max_rank`` leaves (``room_i``). The gap rule: among
      ``k <= room_i`` with ``sigma_{i,k} >= floor * sigma_max``, the ``k`` with the
      largest ratio ``sigma_{i,k} / sigma_{i,k+1}`` (the eigenvalue-ratio estimator of
      the number of spikes [3]_; ``sigma_{i,k+1} = 0`` where the spectrum ends); if
      that ratio is at least ``gap``, ``l_i = k`` (every direction that clearly stands
      out, in one growth), else the greedy count
      ``l_i = #{k : sigma_{i,k} >= ratio * sigma_max}`` (the greedy update [1]_
      [2]_; noise without a gap brings in no more than that); the step is the
      Galerkin step of :func:`tdlrt_step` in the bases
      ``orth([U_i, dL/dK_i, W_i])``, ``W_i`` those directions, truncated by the
      run's rule with ``max_rank`` lowered to ``r_i + l_i``;
    * otherwise is the method's own step with ``max_rank`` lowered to the current
      ranks: the tolerance (or budget) only removes directions, it never adds them.

    A growth whose new directions the next iteration no longer has (the truncation or
    the line search's fallback to the current ranks dropped them) blocks growth at
    those ranks for ``refresh`` iterations, ``2 refresh`` after a second one, and so
    on: near convergence the normal component and the Riemannian gradient decay
    together, and retrying a growth that the tolerance rejects every iteration
    replaces the method's steps by restarts.

    The directions are the leading left singular vectors of the normal components
    (``room_i + 1`` of them, to see the gap after the last one that fits),
    found by :func:`normal_directions` (``oversampling`` extra columns,
    ``power_steps`` passes of ``M M^T``, a generator seeded with ``seed``).

    Parameters
    ----------
    stationarity : float, default 0.3
        Grow when the Riemannian gradient norm is at most this times the largest
        normal singular value; in ``[0, inf)``. ``0`` grows only at exactly
        stationary points; large values grow at every step.
    ratio : float, default 0.9
        Without a gap, keep the directions at least this fraction as steep as the
        steepest; in ``(0, 1]``. Near ``1`` (with a large ``gap``): one direction per
        growth (the greedy rank-one update).
    gap : float, default 1.1
        A relative gap ``sigma_k / sigma_{k+1}`` at least this large makes the
        directions above it stand out; finite, ``> 1``. Measured on the 5%-observed
        matrix of ``benchmarks/peers.py``: the gap after the missing signal
        directions is 1.11 to 1.55 at the stationary points of ranks 1 to 9, the
        ratios inside the sampling-noise bulk at most 1.04.
    floor : float, default 0.5
        The gap is looked for among the directions at least this fraction as steep as
        the steepest (``min(floor, ratio)``); in ``(0, 1]``.
    oversampling : int, default 5
        Extra columns of the randomized range finder (``>= 0``).
    power_steps : int, default 1
        Applications of ``M M^T`` in the range finder (``>= 1``), two passes over
        ``G`` of width ``l + oversampling`` each, per mode.
    seed : int, default 0
        Seed of the NumPy generator that draws the range finder's test matrices
        (the same draws on every backend).
    refresh : int, default 10
        The normal singular values are recomputed at the first iterate of every
        rank, whenever ``xi`` falls below ``stationarity`` times the last estimate,
        and at least every ``refresh`` iterations (``>= 1``); in between, a step costs
        what it costs without growth.

    Raises
    ------
    ValueError
        If a field is out of the range given above.
    TypeError
        If a field is not a real number (``stationarity``, ``ratio``) or an int.

    References
    ----------
    .. [1] A. Uschmajew, B. Vandereycken, "Greedy rank updates combined with Riemannian
       descent methods for low-rank optimization", SampTA 2015, 420-424.
    .. [2] B. Gao, P.-A. Absil, "A Riemannian rank-adaptive method for low-rank matrix
       completion", Comput. Optim. Appl. 81, 67-90, 2022.
    .. [3] S. C. Ahn, A. R. Horenstein, "Eigenvalue ratio test for the number of
       factors", Econometrica 81(3), 1203-1227, 2013.
    .. [4] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
       randomness: probabilistic algorithms for constructing approximate matrix
       decompositions", SIAM Rev. 53(2), 217-288, 2011.
    """

    stationarity: float = 0.3
    ratio: float = 0.9
    gap: float = 1.1
    floor: float = 0.5
    oversampling: int = 5
    power_steps: int = 1
    seed: int = 0
    refresh: int = 10

    def __post_init__(self) -> None:
        for name in ("stationarity", "ratio", "gap", "floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"RankGrowth.{name} must be a real number, got {value!r}"
                )
        if not (math.isfinite(self.stationarity) and self.stationarity >= 0.0):
            raise ValueError(
                "RankGrowth.stationarity must be finite and >= 0, got "
                f"{self.stationarity}"
            )
        if not (0.0 < self.ratio <= 1.0):
            raise ValueError(f"RankGrowth.ratio must be in (0, 1], got {self.ratio}")
        if not (0.0 < self.floor <= 1.0):
            raise ValueError(f"RankGrowth.floor must be in (0, 1], got {self.floor}")
        if not (math.isfinite(self.gap) and self.gap > 1.0):
            raise ValueError(f"RankGrowth.gap must be finite and > 1, got {self.gap}")
        for name, low in (
            ("oversampling", 0),
            ("power_steps", 1),
            ("seed", 0),
            ("refresh", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"RankGrowth.{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"RankGrowth.{name} must be >= {low}, got {value}")


def as_growth(value: Any) -> RankGrowth | None:
    """``None``/``False`` -> None, ``True`` -> the defaults, a RankGrowth as is."""
    if value is None or value is False:
        return None
    if value is True:
        return RankGrowth()
    if isinstance(value, RankGrowth):
        return value
    raise TypeError(
        f"rank_growth must be None, a bool or a tuckerflow.RankGrowth, got {value!r}"
    )


# ---------------------------------------------------------------- the directions


def _times_unfolding_t(grad: Any, mode: int, matrix: Any) -> Any:
    """``unfold(G, i)^T X`` (``(prod_{j != i} n_j, s)``) without unfolding ``G``."""
    product = mode_product(grad, matrix, mode, transpose=True)  # mode i of size s
    return tl.transpose(tl.unfold(product, mode))


def _times_unfolding(grad: Any, mode: int, matrix: Any) -> Any:
    """``unfold(G, i) Z`` (``(n_i, s)``) without unfolding ``G``: with ``G`` viewed
    as ``(a, n_i, b)`` and ``Z`` as ``(a, b, s)`` (the column order of ``tl.unfold``
    is ``(a, b)``, C order), one contraction over ``a`` and ``b``."""
    shape = tl.shape(grad)
    size = shape[mode]
    before = math.prod(shape[:mode])
    after = math.prod(shape[mode + 1 :])
    width = tl.shape(matrix)[1]
    if before == 1:
        return tl.dot(tl.reshape(grad, (size, after)), matrix)
    return tl.tensordot(
        tl.reshape(grad, (before, size, after)),
        tl.reshape(matrix, (before, after, width)),
        axes=([0, 2], [0, 1]),
    )


def _project_out(factor: Any, matrix: Any) -> Any:
    """``(I - U U^T) X``."""
    return matrix - tl.dot(factor, tl.dot(tl.transpose(factor), matrix))


def normal_directions(
    grad: Any,
    factor: Any,
    mode: int,
    count: int,
    *,
    oversampling: int = 5,
    power_steps: int = 1,
    seed: int | np.random.Generator = 0,
) -> tuple[Any, Any]:
    """Leading left singular vectors and values of ``(I - U U^T) unfold(G, mode)``.

    The directions of mode ``mode`` along which the full gradient ``G`` leaves the
    span of the basis ``U``: a randomized subspace iteration [1]_ on
    ``M = (I - U U^T) unfold(G, mode)`` from a Gaussian ``X`` of ``s = count +
    oversampling`` columns (drawn on the host with NumPy, so every backend sees the
    same numbers): ``Z = orth(M^T X)``, then ``power_steps - 1`` times
    ``Z = orth(M^T orth(M Z))``, and the Rayleigh-Ritz values from the SVD of the small
    ``M Z``. Its range is that of ``(M M^T)^p X``. ``M`` is never formed: each
    application is one pass over ``G`` (a mode product, or a batched product on a
    view), of width ``s``.

    Exact (to rounding) when ``s >= rank(M)``, e.g. ``s >= n - r``: then ``Z`` spans
    the row space of ``M``. Otherwise the values are lower bounds whose relative
    error decays like ``(sigma_{s+1} / sigma_k)^(2 p)`` [1]_.

    Parameters
    ----------
    grad : tensor of shape (n_1, ..., n_d)
        The dense Euclidean gradient ``G``.
    factor : tensor of shape (n_mode, r)
        Orthonormal basis ``U`` of the mode (``r >= 0`` columns; the directions are
        orthogonal to it).
    mode : int
        The mode ``i``, ``0 <= i < d``.
    count : int
        Number of directions wanted, ``1 <= count <= n_mode - r``.
    oversampling : int, default 5
        Extra columns of the subspace iteration (``>= 0``).
    power_steps : int, default 1
        Number ``p >= 1`` of applications of ``M M^T``.
    seed : int or numpy.random.Generator, default 0
        Seed (or generator) of the Gaussian start.

    Returns
    -------
    directions : tensor of shape (n_mode, count)
        Orthonormal columns, orthogonal to ``U`` (to rounding), sign-normalised with
        :func:`~tuckerflow.linalg.fix_column_signs`.
    values : tensor of shape (count,)
        The matching singular values, decreasing.

    Raises
    ------
    ValueError
        If ``count`` is not in ``[1, n_mode - r]``, ``mode`` is out of range, or
        ``oversampling < 0`` or ``power_steps < 1``.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
       randomness: probabilistic algorithms for constructing approximate matrix
       decompositions", SIAM Rev. 53(2), 217-288, 2011 (Algorithm 4.4).
    """
    shape = tl.shape(grad)
    if not 0 <= mode < len(shape):
        raise ValueError(f"mode must be in [0, {len(shape)}), got {mode}")
    rows, rank = tl.shape(factor)
    if not 1 <= count <= rows - rank:
        raise ValueError(
            f"count must be in [1, {rows - rank}] (n - r for a basis of shape "
            f"{(rows, rank)}), got {count}"
        )
    if oversampling < 0 or power_steps < 1:
        raise ValueError(
            f"need oversampling >= 0 and power_steps >= 1, got {oversampling} and "
            f"{power_steps}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    width = min(count + oversampling, rows - rank)
    start = tl.tensor(rng.standard_normal((rows, width)), **plain_context(factor))
    left = _project_out(factor, start)
    for step in range(power_steps):
        right = thin_qr(_times_unfolding_t(grad, mode, left))[0]  # orth(M^T X)
        image = _project_out(factor, _times_unfolding(grad, mode, right))  # M Z
        if step + 1 < power_steps:
            left = _project_out(factor, thin_qr(image)[0])
    vectors, values = left_singular(image)
    # one more projection: the columns leave span(U) to rounding, not only to O(eps s)
    vectors = _project_out(factor, vectors[:, :count])
    return fix_column_signs(thin_qr(vectors)[0]), values[:count]


# ---------------------------------------------------------------- the decision


@dataclasses.dataclass
class Plan:
    """What one iteration does: ``extra[i]`` new columns per mode (all 0: no
    growth) and, for growth, the directions ``W_i`` (None where ``extra[i] == 0``)."""

    extra: tuple[int, ...]
    directions: list[Any | None]

    @property
    def grows(self) -> bool:
        return any(self.extra)


class Monitor:
    """The growth rule of one run: decides per iteration, caches the normal spectra.

    Created by :func:`integrate`; its state (the last estimate of the normal singular
    values, the ranks it belongs to, the generator, the growths the truncation undid)
    lives across iterations.
    """

    def __init__(self, config: RankGrowth) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.ranks: tuple[int, ...] | None = None
        self.estimate = math.inf  # sigma_max at the current ranks (inf: unknown)
        self.age = 0
        self.growths = 0
        self.calls = 0
        self.grown_from: tuple[int, ...] | None = None  # ranks before the last growth
        self.undone: dict[tuple[int, ...], int] = {}  # ranks -> growths undone there
        self.blocked: tuple[tuple[int, ...], int] | None = None  # (ranks, until call)

    def plan(
        self,
        grad: Any,
        factors: Sequence[Any],
        tangent_norm: float,
        caps: Sequence[int],
    ) -> Plan:
        """The plan at a point with Riemannian gradient norm ``tangent_norm``;
        ``caps[i]`` is the largest rank mode ``i`` may reach (``max_rank``)."""
        config = self.config
        self.calls += 1
        ranks = tuple(tl.shape(f)[1] for f in factors)
        order = len(factors)
        none = Plan((0,) * order, [None] * order)
        if self.grown_from is not None:  # the iteration after a growth
            if ranks == self.grown_from:  # the new directions did not stay
                count = self.undone.get(ranks, 0) + 1
                self.undone[ranks] = count
                self.blocked = (ranks, self.calls + config.refresh * 2 ** (count - 1))
            self.grown_from = None
        if self.blocked is not None and (
            self.blocked[0] != ranks or self.calls >= self.blocked[1]
        ):
            self.blocked = None
        room = [
            0 if is_full_rank(f) else max(0, min(c - r, tl.shape(f)[0] - r))
            for f, r, c in zip(factors, ranks, caps, strict=True)
        ]
        if not any(room) or self.blocked is not None:
            return none
        fresh = ranks != self.ranks or self.age >= config.refresh
        if not fresh and tangent_norm > config.stationarity * self.estimate:
            self.age += 1
            return none
        spectra, directions = [], []
        for mode, (factor, slots) in enumerate(zip(factors, room, strict=True)):
            if slots == 0:
                spectra.append(None)
                directions.append(None)
                continue
            # one direction past the room: the gap after the last one that fits
            look = min(slots + 1, tl.shape(factor)[0] - ranks[mode])
            vectors, values = normal_directions(
                grad,
                factor,
                mode,
                look,
                oversampling=config.oversampling,
                power_steps=config.power_steps,
                seed=self.rng,
            )
            spectra.append(tl.to_numpy(values).astype(np.float64))
            directions.append(vectors)
        largest = max(float(s[0]) for s in spectra if s is not None)
        self.ranks, self.estimate, self.age = ranks, largest, 0
        if not (largest > 0.0 and tangent_norm <= config.stationarity * largest):
            return none
        extra = _consistent(
            ranks,
            [
                0 if s is None else growth_count(s, largest, slots, config)
                for s, slots in zip(spectra, room, strict=True)
            ],
            room,
        )
        chosen = [
            None if k == 0 else d[:, :k] for d, k in zip(directions, extra, strict=True)
        ]
        self.growths += 1
        self.grown_from = ranks
        return Plan(extra, chosen)


def growth_count(
    values: np.ndarray, largest: float, room: int, config: RankGrowth
) -> int:
    """How many of a mode's normal directions a growth adds.

    ``values`` are the mode's normal singular values ``s_1 >= s_2 >= ...`` (past the
    last one: none, the spectrum ends), ``largest`` the largest over the modes. The
    gap rule of :class:`RankGrowth`: ``k`` maximizing ``s_k / s_{k+1}`` among
    ``k <= room`` with ``s_k >= min(floor, ratio) * largest``, if that ratio is at
    least ``gap`` (and at least the greedy count); else the greedy count
    ``#{k <= room : s_k >= ratio * largest}``.
    """
    values = np.asarray(values, dtype=np.float64)
    steep = int(np.sum(values[:room] >= config.ratio * largest))
    reach = int(np.sum(values[:room] >= min(config.floor, config.ratio) * largest))
    if reach == 0:
        return min(steep, room)
    nxt = np.append(values, 0.0)[1 : reach + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(nxt > 0.0, values[:reach] / np.where(nxt > 0, nxt, 1.0), np.inf)
    best = int(np.argmax(gaps))
    if gaps[best] >= config.gap:
        return max(best + 1, steep)
    return steep


def _consistent(
    ranks: Sequence[int], extra: list[int], room: Sequence[int]
) -> tuple[int, ...]:
    """Extra columns that keep a valid multilinear rank, ``s_i <= prod_{j != i} s_j``
    (a matrix's two ranks are equal): a mode that would exceed it takes partners in
    the other modes (their next directions) where they have room, else gives up
    columns."""
    new = [r + k for r, k in zip(ranks, extra, strict=True)]
    changed = True
    while changed:
        changed = False
        for mode in range(len(new)):
            while new[mode] > math.prod(new[:mode] + new[mode + 1 :]):
                others = [
                    j
                    for j in range(len(new))
                    if j != mode and new[j] < ranks[j] + room[j]
                ]
                if others:
                    partner = min(others, key=lambda j: new[j])
                    new[partner] += 1
                else:
                    new[mode] -= 1
                changed = True
    return tuple(max(0, n - r) for n, r in zip(new, ranks, strict=True))


def rank_caps(rule: RankRule, shape: Sequence[int]) -> tuple[int, ...]:
    """Per-mode ``max_rank`` of a rank rule (the mode sizes when unset)."""
    high = rule.max_rank
    if high is None:
        return tuple(shape)
    if isinstance(high, numbers.Integral):
        return tuple(min(int(high), n) for n in shape)
    return tuple(min(int(h), n) for h, n in zip(high, shape, strict=True))


def capped_rule(rule: RankRule, ranks: Sequence[int]) -> RankRule:
    """``rule`` with ``max_rank`` lowered to ``ranks`` (never below ``min_rank``)."""
    order = len(ranks)
    low = rule.min_rank
    lows = [low] * order if isinstance(low, numbers.Integral) else list(low)
    high = rule.max_rank
    if high is None:
        highs = list(ranks)
    elif isinstance(high, numbers.Integral):
        highs = [min(int(high), r) for r in ranks]
    else:
        highs = [min(int(h), r) for h, r in zip(high, ranks, strict=True)]
    return dataclasses.replace(
        rule, max_rank=tuple(max(h, lo) for h, lo in zip(highs, lows, strict=True))
    )


# ---------------------------------------------------------------- the growth step


def growth_step(core, factors, qs, contractions, plan: Plan):
    """The augmented Galerkin step of a growth iteration, up to the step size.

    ``Uhat_i = orth([U_i, dL/dK_i, W_i])`` (full-rank modes keep ``U_i``), the lifted
    core and the Galerkin gradient in these bases; returns ``trial(step, rule)`` that
    truncates ``Chat0 - step * Ghat`` by ``rule`` (as :func:`tdlrt_step`), and the
    squared norm of the Galerkin gradient ``||Pi G||^2`` (the first-order decrease per
    unit step, ``>= ||P(Y) G||^2``).
    """
    directions = []
    for mode, (factor, q) in enumerate(zip(factors, qs, strict=True)):
        if is_full_rank(factor):
            directions.append(None)
            continue
        new = [tl.dot(contractions.unfolded_partial(mode), q)]
        if plan.directions[mode] is not None:
            new.append(plan.directions[mode])
        directions.append(tl.concatenate(new, axis=1))
    bases, embeddings = augment_bases(factors, directions)
    lifted = lift(core, embeddings)
    galerkin = contractions.galerkin(bases, embeddings)
    sqnorm = to_float(tl.sum(galerkin * galerkin))

    def trial(step: float, rule: RankRule):
        augmented = AugmentedStep(lifted - step * galerkin, bases, None, factors, None)
        tucker, _ = augmented.finish(rule=rule)
        return tucker

    return trial, sqnorm
