"""Contractions of a large dense tensor with thin factor matrices.

These are the only operations in tuckerflow whose cost grows with the full tensor size
``prod(n)``; everything else acts on cores and factors. A Euclidean gradient ``G`` is
touched by :class:`GradientContractions` a fixed number of times per step; all projected
quantities (core, basis and Galerkin gradients) are derived from those few passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorly as tl

from .backend import is_finite
from .linalg import mode_product

__all__ = ["contract", "contract_all_but_one", "GradientContractions"]


def contract(tensor: Any, matrices: Sequence[Any], modes: Sequence[int]) -> Any:
    """``tensor ×_m matrices[k]^T`` over the given modes, cheapest order first.

    Modes are contracted in decreasing order of shrink factor ``n_m / r_m``, which
    minimises the size of the intermediates (and hence the flops) for thin factors.

    Parameters
    ----------
    tensor : tensor of shape (n_1, ..., n_d)
        Dense tensor.
    matrices : sequence of tensors of shape (n_m, r_m)
        One per entry of ``modes``, in the same order.
    modes : sequence of int
        The modes to contract; the others are left untouched.

    Returns
    -------
    tensor
        ``tensor`` with ``n_m`` replaced by ``r_m`` in every mode of ``modes``.
    """
    # ties: later modes first, their product is one plain matmul without batching
    pairs = sorted(
        zip(modes, matrices),
        key=lambda pair: (
            -tl.shape(pair[1])[0] / max(tl.shape(pair[1])[1], 1),
            -pair[0],
        ),
    )
    for mode, matrix in pairs:
        tensor = mode_product(tensor, matrix, mode, transpose=True)
    return tensor


def contract_all_but_one(
    tensor: Any, matrices: Sequence[Any], modes: Sequence[int] | None = None
) -> dict[int, Any]:
    """For every mode i in ``modes``, ``tensor ×_{j in modes, j != i} matrices[j]^T``.

    Divide and conquer over the modes: the input is contracted twice (once per half),
    not ``len(modes) - 1`` times per mode.

    Parameters
    ----------
    tensor : tensor of shape (n_1, ..., n_d)
        Dense tensor.
    matrices : sequence of tensors of shape (n_j, r_j)
        ``matrices[j]`` has ``tensor.shape[j]`` rows (indexed by mode).
    modes : sequence of int, optional
        Modes taking part (default: all). Other modes are left untouched.

    Returns
    -------
    dict
        ``{i: tensor contracted over modes except i}``.
    """
    modes = list(range(len(matrices))) if modes is None else list(modes)
    results: dict[int, Any] = {}

    def recurse(partial: Any, subset: list[int]) -> None:
        if len(subset) == 1:
            results[subset[0]] = partial
            return
        half = len(subset) // 2
        left, right = subset[:half], subset[half:]
        recurse(contract(partial, [matrices[m] for m in right], right), left)
        recurse(contract(partial, [matrices[m] for m in left], left), right)

    recurse(tensor, modes)
    return results


class GradientContractions:
    """Every contraction of a dense gradient ``G`` that a step needs, computed once.

    With ``f`` the mode of largest shrink ``n_f / r_f``:

    * ``G ×_f U_f^T`` (one pass over ``G``) is kept and reused,
    * ``partial[f] = G ×_{j != f} U_j^T`` (one pass),
    * ``partial[i]`` for ``i != f`` come from ``G ×_f U_f^T`` (smaller tensors),
    * the Galerkin gradient ``G ×_j Uhat_j^T`` for augmented bases
      ``Uhat_f = orth([U_f, X])`` reuses ``G ×_f U_f^T`` for its old-basis block and
      needs one more pass only for the new columns.

    So a TDLRT step touches ``G`` about three times (width ``r``), which is the cost
    of three mode products; see ``benchmarks/step_cost.py``.

    Nothing is validated; the passes over ``G`` happen in the constructor.

    Parameters
    ----------
    grad : tensor of shape (n_1, ..., n_d)
        Dense gradient ``G``.
    factors : sequence of tensors of shape (n_i, r_i)
        Current factors ``U_i``, orthonormal columns.
    """

    def __init__(self, grad: Any, factors: Sequence[Any]) -> None:
        self.grad = grad
        self.factors = list(factors)
        order = len(self.factors)
        shapes = [tl.shape(f) for f in self.factors]
        self.first_mode = max(range(order), key=lambda m: shapes[m][0] / shapes[m][1])
        first = self.first_mode
        others = [m for m in range(order) if m != first]
        self.first = mode_product(grad, self.factors[first], first, transpose=True)
        self.partial = {
            first: contract(grad, [self.factors[m] for m in others], others)
        }
        if len(others) == 1:
            self.partial[others[0]] = self.first
        else:
            self.partial.update(contract_all_but_one(self.first, self.factors, others))

    def check_finite(self, name: str = "grad") -> None:
        """Check that the gradient holds no NaN or Inf.

        Checked on ``G ×_f U_f^T``: every entry of ``G`` enters it (IEEE: ``NaN * 0``
        and ``Inf * 0`` are NaN), so this sees every non-finite entry at ``r_f / n_f``
        of the cost of scanning ``G``; it also catches overflow in the contraction.

        Parameters
        ----------
        name : str, default "grad"
            How the error message calls the gradient.

        Raises
        ------
        ValueError
            If the gradient holds NaN or Inf, or overflows when contracted.
        """
        if not is_finite(self.first):
            raise ValueError(
                f"{name} contains NaN or Inf entries (or overflows when contracted "
                "with the factors)"
            )

    def core_gradient(self) -> Any:
        """``G ×_j U_j^T``: the gradient with respect to the core.

        Returns
        -------
        tensor of shape (r_1, ..., r_d)
        """
        first = self.first_mode
        return mode_product(
            self.partial[first], self.factors[first], first, transpose=True
        )

    def unfolded_partial(self, mode: int) -> Any:
        """``unfold(G ×_{j != i} U_j^T, i)``: the unfolded partial contraction.

        Parameters
        ----------
        mode : int
            The mode ``i``.

        Returns
        -------
        tensor of shape (n_i, prod_{j != i} r_j)
        """
        return tl.unfold(self.partial[mode], mode)

    def galerkin(self, bases: Sequence[Any], embeddings: Sequence[Any]) -> Any:
        """``G ×_j Uhat_j^T`` for augmented bases whose span contains the old ones.

        Parameters
        ----------
        bases : sequence of tensors
            ``Uhat_j``, orthonormal, of shape ``(n_j, rhat_j)``, built by
            :func:`tuckerflow.linalg.augment_basis` from ``[U_j, ...]``.
        embeddings : sequence of tensors
            ``Uhat_j^T U_j`` (``(rhat_j, r_j)``; its top block is the triangular factor
            ``R11`` with ``U_j = Uhat_j[:, :r_j] R11``).

        Returns
        -------
        tensor of shape (rhat_1, ..., rhat_d)
            The Galerkin gradient with respect to the augmented core.
        """
        first = self.first_mode
        rank = tl.shape(self.factors[first])[1]
        basis = bases[first]
        # Uhat_f[:, :r] = U_f R11^{-1}, hence the old-basis block is
        # G ×_f Uhat_f[:, :r]^T = (G ×_f U_f^T) ×_f R11^{-T}
        r11 = embeddings[first][:rank]
        old = mode_product(
            self.first, tl.solve(r11, _eye_like(r11)), first, transpose=True
        )
        blocks = [old]
        if tl.shape(basis)[1] > rank:
            blocks.append(
                mode_product(self.grad, basis[:, rank:], first, transpose=True)
            )
        stacked = tl.concatenate(blocks, axis=first) if len(blocks) > 1 else old
        others = [m for m in range(len(bases)) if m != first]
        return contract(stacked, [bases[m] for m in others], others)


def _eye_like(matrix: Any) -> Any:
    context = dict(tl.context(matrix))
    context.pop("requires_grad", None)
    return tl.eye(tl.shape(matrix)[0], **context)
