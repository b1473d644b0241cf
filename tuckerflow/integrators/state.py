"""Optimizer state (momentum, Adam) for the one-step integrators, and how it moves.

The rule
--------
All state lives in the coordinates of the current representation:

* core state (shape ``r``) in the coordinates of the core, i.e. of the bases ``U_i``;
* basis state of mode ``i`` (shape ``(n_i, k_i)``) in the coordinates of the K-step,
  ``K_i = U_i S_i`` with ``unfold(Y, i) = K_i V_i^T`` and
  ``V_i = (kron_{j != i} U_j) Q_i``.

A lifted core state is zero in the new directions, which the truncation usually drops
again: the velocity of new directions is kept by the K-state instead, and the TDLRT
step seeds the lifted core momentum's single-new blocks with it (the K-momentum
``m_i`` enters as ``Utilde_i^T m_i Q_i^T``, as the K-steps themselves do in the
parallel BUG step). Without this the Galerkin core momentum could never accelerate a
basis rotation.

Whenever the coordinates change by a matrix ``T`` with orthonormal columns (the lift
into the augmented bases ``E_i = Uhat_i^T U_i``, the truncation ``P_i^T``, the new
K-coordinates ``V_i^T V_i'``), a first moment ``m`` is transformed linearly, ``T m`` (it
is a vector: this keeps the ambient tensor it represents, projected onto the new
coordinates), and a second moment ``v`` (a diagonal covariance) as the diagonal of the
transformed covariance, ``(T ∘ T) v``. Lifting is exact (``Uhat`` contains ``U``), so
nothing is lost when the rank grows; truncation drops exactly the state of the
directions the step drops. With all ranks full (``r_i = n_i``) heavy-ball momentum
reproduces dense momentum SGD step for step.

Sources: B. T. Polyak, "Some methods of speeding up the convergence of iteration
methods", USSR Comput. Math. Math. Phys. 4(5), 1-17, 1964 (heavy-ball momentum);
D. P. Kingma, J. Ba, "Adam: A method for stochastic optimization", ICLR 2015 (Adam).
The transport of the buffers into new bases described above is tuckerflow's own.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import tensorly as tl

from .._checks import check_tensor
from ..backend import plain_context

__all__ = ["Momentum", "Adam", "OptimizerState"]


def _k_shapes(core: Any, factors: Sequence[Any]) -> list[tuple[int, int]]:
    dims = tl.shape(core)
    total = math.prod(dims)
    return [
        (tl.shape(f)[0], min(r, total // r)) for f, r in zip(factors, dims, strict=True)
    ]


def _zeros(shape: Sequence[int], like: Any) -> Any:
    return tl.zeros(tuple(shape), **plain_context(like))


def _transform_core(tensor: Any, matrices: Sequence[Any], squared: bool) -> Any:
    if squared:
        matrices = [m * m for m in matrices]
    return tl.tenalg.multi_mode_dot(tensor, matrices)


def _transform_bases(
    buffers: Sequence[Any], matrices: Sequence[Any], squared: bool
) -> tuple[Any, ...]:
    return tuple(
        tl.dot(buffer, matrix * matrix if squared else matrix)
        for buffer, matrix in zip(buffers, matrices, strict=True)
    )


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class OptimizerState:
    """Base class of the optimizer states (:class:`Momentum`, :class:`Adam`).

    Subclasses hold buffers shaped like the core, ``(r_1, ..., r_d)``, and like each
    K-step variable, ``(n_i, k_i)`` with ``k_i = min(r_i, prod_{j != i} r_j)``. States
    are immutable: every method returns a new state. The steps call these methods;
    a user only builds a state (``Momentum.init``, ``Adam.init``) and passes it on.
    """

    def _buffers(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, core: Any, factors: Sequence[Any]) -> None:
        """Check that the buffers belong to the point ``(core, factors)``.

        Parameters
        ----------
        core : tensor of shape (r_1, ..., r_d)
            Core of the point.
        factors : sequence of tensors of shape (n_i, r_i)
            Factors of the point.

        Raises
        ------
        TypeError
            If a buffer is not a tensor of the active backend.
        ValueError
            If a core buffer is not of shape ``(r_1, ..., r_d)``, there is not one
            basis buffer per mode, or a basis buffer is not of shape ``(n_i, k_i)``:
            the state belongs to another point.
        """
        core_shape = tuple(tl.shape(core))
        k_shapes = _k_shapes(core, factors)
        for name, value in self._buffers().items():
            if name.startswith("core"):
                check_tensor(value, f"state.{name}")
                if tuple(tl.shape(value)) != core_shape:
                    raise ValueError(
                        f"state.{name} has shape {tuple(tl.shape(value))} but the core "
                        f"has shape {core_shape}: the state belongs to another point"
                    )
            else:
                if len(value) != len(k_shapes):
                    raise ValueError(
                        f"state.{name} has {len(value)} buffers for "
                        f"{len(k_shapes)} modes"
                    )
                for mode, (buffer, shape) in enumerate(zip(value, k_shapes)):
                    check_tensor(buffer, f"state.{name}[{mode}]")
                    if tuple(tl.shape(buffer)) != shape:
                        raise ValueError(
                            f"state.{name}[{mode}] has shape "
                            f"{tuple(tl.shape(buffer))}, expected {shape}: the state "
                            "belongs to another point"
                        )

    def begin_step(self) -> OptimizerState:
        """Start a step (called once at the start of every step).

        Returns
        -------
        OptimizerState
            The state for this step (Adam counts the step for its bias correction).
        """
        return self

    def lift(self, embeddings: Sequence[Any]) -> OptimizerState:
        """Core state into the augmented bases (``E_i = Uhat_i^T U_i``).

        Parameters
        ----------
        embeddings : sequence of tensors of shape (rhat_i, r_i)
            ``E_i = Uhat_i^T U_i``, one per mode.

        Returns
        -------
        OptimizerState
            Core buffers of shape ``(rhat_1, ..., rhat_d)``, zero in the new
            directions; basis buffers unchanged.
        """
        return self.transform_core(embeddings)

    def transform_core(self, matrices: Sequence[Any]) -> OptimizerState:
        """Core buffers into new core coordinates ``T_i`` (``new = T_i @ old``).

        First moments map to ``C ×_i T_i``, second moments to ``C ×_i (T_i ∘ T_i)``
        (see the module notes).

        Parameters
        ----------
        matrices : sequence of tensors of shape (s_i, r_i)
            ``T_i``, one per mode, with orthonormal columns or rows (a lift or a
            truncation).

        Returns
        -------
        OptimizerState
            Core buffers of shape ``(s_1, ..., s_d)``.
        """
        raise NotImplementedError

    def transform_bases(self, matrices: Sequence[Any]) -> OptimizerState:
        """Basis buffers into new K-coordinates ``R_i = V_i^T V_i'`` (``b_i R_i``).

        Parameters
        ----------
        matrices : sequence of tensors of shape (k_i, k_i')
            ``R_i``, one per mode.

        Returns
        -------
        OptimizerState
            Basis buffers of shapes ``(n_i, k_i')``.
        """
        raise NotImplementedError

    def core_direction(self, grad: Any) -> tuple[Any, OptimizerState]:
        """Direction of the core (Galerkin) update from its gradient.

        Parameters
        ----------
        grad : tensor of shape (r_1, ..., r_d)
            Gradient with respect to the core, in the coordinates of the state.

        Returns
        -------
        direction : tensor of shape (r_1, ..., r_d)
            What the step multiplies by ``-lr``.
        state : OptimizerState
            The state with updated core buffers.
        """
        raise NotImplementedError

    def basis_direction(self, mode: int, grad: Any) -> tuple[Any, OptimizerState]:
        """Direction of the K update of one mode from its K-gradient.

        Parameters
        ----------
        mode : int
            The mode ``i``, ``0 <= i < d``.
        grad : tensor of shape (n_i, k_i)
            ``dL/dK_i``.

        Returns
        -------
        direction : tensor of shape (n_i, k_i)
            What the step multiplies by ``-lr``.
        state : OptimizerState
            The state with the updated buffers of that mode.
        """
        raise NotImplementedError

    def basis_memory(self) -> tuple[Any, ...] | None:
        """K-space first moments that seed the new directions of a lifted core state.

        See :meth:`with_new_directions`.

        Returns
        -------
        tuple of tensors of shape (n_i, k_i), or None
            One per mode; None if the method keeps none.
        """
        return None

    def with_new_directions(self, blocks: Any) -> OptimizerState:
        """Add ``blocks`` (augmented-core coordinates) to the lifted core state.

        Parameters
        ----------
        blocks : tensor of shape (rhat_1, ..., rhat_d)
            The K-state written in the blocks of the augmented core where exactly one
            mode is new.

        Returns
        -------
        OptimizerState
            The state with its first core moment increased by ``blocks`` (unchanged
            for a method that keeps no such moment).
        """
        return self


@dataclasses.dataclass(frozen=True)
class Momentum(OptimizerState):
    """Heavy-ball momentum [1]_ for the core (Galerkin) update and every K update.

    ``b <- beta b + g``, then the step is along ``b`` (along ``g + beta b`` with
    ``nesterov``: Nesterov momentum [2]_ in the form ``torch.optim.SGD`` uses).
    Build it with :meth:`Momentum.init`; the buffers follow every basis change of the
    step (module notes of :mod:`tuckerflow.integrators.state`).

    Parameters
    ----------
    beta : float
        Momentum factor in ``[0, 1)`` (dimensionless).
    nesterov : bool
        Whether to take the Nesterov step.
    core : tensor of shape (r_1, ..., r_d)
        Momentum buffer of the core update, in the units of a core gradient.
    bases : tuple of tensors of shape (n_i, k_i)
        Momentum buffers of the K updates, ``k_i = min(r_i, prod_{j != i} r_j)``.

    References
    ----------
    .. [1] B. T. Polyak, "Some methods of speeding up the convergence of iteration
       methods", USSR Comput. Math. Math. Phys. 4(5), 1-17, 1964.
    .. [2] I. Sutskever, J. Martens, G. Dahl, G. Hinton, "On the importance of
       initialization and momentum in deep learning", ICML 2013.
    """

    beta: float
    nesterov: bool
    core: Any
    bases: tuple[Any, ...]

    @classmethod
    def init(
        cls, tucker: Any, beta: float = 0.9, *, nesterov: bool = False
    ) -> Momentum:
        """Zero momentum for the point ``tucker``.

        Parameters
        ----------
        tucker : TuckerTensor or (core, factors)
            The point the state belongs to: core of shape ``(r_1, ..., r_d)``,
            factors of shapes ``(n_i, r_i)``. Not validated here; the step checks
            the state against its point.
        beta : float
            Momentum factor in ``[0, 1)``.
        nesterov : bool
            Whether to take the Nesterov step.

        Returns
        -------
        Momentum
            Zero buffers of shapes ``(r_1, ..., r_d)`` and ``(n_i, k_i)``, in the
            dtype and on the device of the core.

        Raises
        ------
        TypeError
            If ``beta`` is not a real number.
        ValueError
            If ``beta`` is not in ``[0, 1)``.
        """
        core, factors = tucker
        beta = _check_fraction(beta, "beta")
        bases = tuple(_zeros(shape, core) for shape in _k_shapes(core, factors))
        return cls(beta, bool(nesterov), _zeros(tl.shape(core), core), bases)

    def _buffers(self) -> dict[str, Any]:
        return {"core": self.core, "bases": self.bases}

    def transform_core(self, matrices: Sequence[Any]) -> Momentum:
        return dataclasses.replace(
            self, core=_transform_core(self.core, matrices, squared=False)
        )

    def transform_bases(self, matrices: Sequence[Any]) -> Momentum:
        return dataclasses.replace(
            self, bases=_transform_bases(self.bases, matrices, squared=False)
        )

    def _direction(self, buffer: Any, grad: Any) -> tuple[Any, Any]:
        buffer = self.beta * buffer + grad
        return (grad + self.beta * buffer if self.nesterov else buffer), buffer

    def core_direction(self, grad: Any) -> tuple[Any, Momentum]:
        direction, buffer = self._direction(self.core, grad)
        return direction, dataclasses.replace(self, core=buffer)

    def basis_memory(self) -> tuple[Any, ...]:
        return self.bases

    def with_new_directions(self, blocks: Any) -> Momentum:
        return dataclasses.replace(self, core=self.core + blocks)

    def basis_direction(self, mode: int, grad: Any) -> tuple[Any, Momentum]:
        direction, buffer = self._direction(self.bases[mode], grad)
        bases = list(self.bases)
        bases[mode] = buffer
        return direction, dataclasses.replace(self, bases=tuple(bases))


@dataclasses.dataclass(frozen=True)
class Adam(OptimizerState):
    """Adam [1]_ on the core (Galerkin) update and every K update.

    Second moments follow coordinate changes as diagonal covariances (module notes);
    Adam is not invariant under rotations of the coordinates, so this transport is the
    natural choice rather than an exact equivalence. Build it with :meth:`Adam.init`.

    Parameters
    ----------
    beta1, beta2 : float
        Decay rates of the first and second moments, in ``[0, 1)``.
    eps : float
        Added to ``sqrt(v_hat)``, in the units of the gradient (``> 0``).
    count : int
        Steps taken (for the bias correction).
    core_m, core_v : tensor of shape (r_1, ..., r_d)
        First and second moments of the core gradient.
    bases_m, bases_v : tuple of tensors of shape (n_i, k_i)
        First and second moments of the K-gradients,
        ``k_i = min(r_i, prod_{j != i} r_j)``.

    References
    ----------
    .. [1] D. P. Kingma, J. Ba, "Adam: A method for stochastic optimization",
       ICLR 2015.
    """

    beta1: float
    beta2: float
    eps: float
    count: int
    core_m: Any
    core_v: Any
    bases_m: tuple[Any, ...]
    bases_v: tuple[Any, ...]

    @classmethod
    def init(
        cls, tucker: Any, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> Adam:
        """Zero moments for the point ``tucker``.

        Parameters
        ----------
        tucker : TuckerTensor or (core, factors)
            The point the state belongs to: core of shape ``(r_1, ..., r_d)``,
            factors of shapes ``(n_i, r_i)``. Not validated here; the step checks
            the state against its point.
        betas : (float, float)
            ``(beta1, beta2)``, each in ``[0, 1)``.
        eps : float
            Finite and ``> 0``, in the units of the gradient.

        Returns
        -------
        Adam
            Zero moments of shapes ``(r_1, ..., r_d)`` and ``(n_i, k_i)``, in the
            dtype and on the device of the core, with ``count = 0``.

        Raises
        ------
        TypeError
            If ``betas[0]`` or ``betas[1]`` is not a real number.
        ValueError
            If a beta is not in ``[0, 1)``, or ``eps`` is not a finite real number
            ``> 0``.
        """
        core, factors = tucker
        beta1 = _check_fraction(betas[0], "betas[0]")
        beta2 = _check_fraction(betas[1], "betas[1]")
        if not (isinstance(eps, numbers.Real) and eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be finite and > 0, got {eps!r}")
        shapes = _k_shapes(core, factors)
        return cls(
            beta1,
            beta2,
            float(eps),
            0,
            _zeros(tl.shape(core), core),
            _zeros(tl.shape(core), core),
            tuple(_zeros(s, core) for s in shapes),
            tuple(_zeros(s, core) for s in shapes),
        )

    def _buffers(self) -> dict[str, Any]:
        return {
            "core_m": self.core_m,
            "core_v": self.core_v,
            "bases_m": self.bases_m,
            "bases_v": self.bases_v,
        }

    def begin_step(self) -> Adam:
        return dataclasses.replace(self, count=self.count + 1)

    def transform_core(self, matrices: Sequence[Any]) -> Adam:
        return dataclasses.replace(
            self,
            core_m=_transform_core(self.core_m, matrices, squared=False),
            core_v=_transform_core(self.core_v, matrices, squared=True),
        )

    def transform_bases(self, matrices: Sequence[Any]) -> Adam:
        return dataclasses.replace(
            self,
            bases_m=_transform_bases(self.bases_m, matrices, squared=False),
            bases_v=_transform_bases(self.bases_v, matrices, squared=True),
        )

    def _direction(self, m: Any, v: Any, grad: Any) -> tuple[Any, Any, Any]:
        count = max(self.count, 1)
        m = self.beta1 * m + (1.0 - self.beta1) * grad
        v = self.beta2 * v + (1.0 - self.beta2) * grad * grad
        m_hat = m / (1.0 - self.beta1**count)
        v_hat = v / (1.0 - self.beta2**count)
        return m_hat / (tl.sqrt(v_hat) + self.eps), m, v

    def core_direction(self, grad: Any) -> tuple[Any, Adam]:
        direction, m, v = self._direction(self.core_m, self.core_v, grad)
        return direction, dataclasses.replace(self, core_m=m, core_v=v)

    def basis_direction(self, mode: int, grad: Any) -> tuple[Any, Adam]:
        direction, m, v = self._direction(self.bases_m[mode], self.bases_v[mode], grad)
        bases_m, bases_v = list(self.bases_m), list(self.bases_v)
        bases_m[mode], bases_v[mode] = m, v
        return direction, dataclasses.replace(
            self, bases_m=tuple(bases_m), bases_v=tuple(bases_v)
        )


def k_coordinate_change(
    old_q: Sequence[Any],
    old_factors: Sequence[Any],
    new_q: Sequence[Any],
    new_factors: Sequence[Any],
) -> list[Any]:
    """``R_i = V_i^T V_i'`` for every mode, without forming any Kronecker product.

    ``V_i = (kron_{j != i} U_j) Q_i``; the product ``(kron_j U_j^T U'_j) Q_i'`` is
    applied by mode products on ``Q_i'`` folded into a tensor. ``new_q[i] = None``
    asks for a zero ``R_i`` (of shape ``(k_i, k_i')``): the K-state of that mode is
    dropped.
    """
    order = len(old_factors)
    overlaps = [
        tl.dot(tl.transpose(u), u_new)
        for u, u_new in zip(old_factors, new_factors, strict=True)
    ]
    old_ranks = [tl.shape(u)[1] for u in old_factors]
    new_ranks = [tl.shape(u)[1] for u in new_factors]
    changes = []
    for mode in range(order):
        others = [j for j in range(order) if j != mode]
        q_new = new_q[mode]
        if q_new is None:
            shape = (
                min(old_ranks[mode], math.prod(old_ranks) // old_ranks[mode]),
                min(new_ranks[mode], math.prod(new_ranks) // new_ranks[mode]),
            )
            changes.append(_zeros(shape, old_factors[mode]))
            continue
        shape = [tl.shape(new_factors[j])[1] for j in others]
        folded = tl.reshape(q_new, (*shape, tl.shape(q_new)[1]))
        for position, j in enumerate(others):
            folded = tl.tenalg.mode_dot(folded, overlaps[j], position)
        rows = math.prod(tl.shape(old_factors[j])[1] for j in others)
        mapped = tl.reshape(folded, (rows, tl.shape(q_new)[1]))
        changes.append(tl.dot(tl.transpose(old_q[mode]), mapped))
    return changes
