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

Adding a rule
-------------
A rule is a frozen dataclass subclassing :class:`OptimizerState`, registered under a
stable ``name`` (a class attribute; the registry is filled when the class is defined)
and found again by :func:`rule_class`. It declares its buffers with
:func:`core_buffer` and :func:`basis_buffers` (first moments, or
``second_moment=True``); every other field is a hyper-parameter or counter (plain
numbers). From these declarations the base class zeroes the buffers (:meth:`init`),
checks them against a point, carries them through every lift and truncation by the
rule above (also on the batched buffers of :mod:`tuckerflow.integrators.multi`), and
packs them into a dict of tensors and numbers (:meth:`OptimizerState.pack`,
:meth:`OptimizerState.unpack`, used by ``TDLRT.state_dict``). The rule itself
implements :meth:`~OptimizerState.core_direction` and
:meth:`~OptimizerState.basis_direction` (entrywise on its buffers: the batched paths
pass them with a leading axis of stacked tensors), and optionally
:meth:`~OptimizerState.begin_step`, :meth:`~OptimizerState.basis_memory` and
:meth:`~OptimizerState.with_new_directions`, and a validating ``init``. Nothing else
in tuckerflow names a rule: ``TDLRT(rule=...)`` takes any registered one
(:meth:`OptimizerState.configure`).

Sources: B. T. Polyak, "Some methods of speeding up the convergence of iteration
methods", USSR Comput. Math. Math. Phys. 4(5), 1-17, 1964 (heavy-ball momentum);
D. P. Kingma, J. Ba, "Adam: A method for stochastic optimization", ICLR 2015 (Adam).
The transport of the buffers into new bases described above is tuckerflow's own.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import tensorly as tl

from .._checks import check_tensor
from ..backend import plain_context

__all__ = [
    "Adam",
    "Momentum",
    "OptimizerState",
    "basis_buffers",
    "core_buffer",
    "registered_rules",
    "rule_class",
]

# metadata key of a buffer field: ("core" | "bases", second_moment)
_BUFFER = "tuckerflow_buffer"
# rule name -> state class (filled by OptimizerState.__init_subclass__)
_RULES: dict[str, type[OptimizerState]] = {}


def core_buffer(*, second_moment: bool = False) -> Any:
    """Declare a field of an :class:`OptimizerState` subclass as a core buffer.

    Use as the field's default: ``core_m: Any = core_buffer()``. The buffer has the
    shape of the core, ``(r_1, ..., r_d)``, and follows a change of core coordinates
    ``T_i`` as ``C ×_i T_i`` (a first moment) or ``C ×_i (T_i ∘ T_i)``
    (``second_moment=True``, a diagonal covariance); see the module notes.

    Parameters
    ----------
    second_moment : bool, default False
        Whether the buffer is a second moment.

    Returns
    -------
    dataclasses.Field
        A field without default (give it a value in ``init``).
    """
    return dataclasses.field(metadata={_BUFFER: ("core", bool(second_moment))})


def basis_buffers(*, second_moment: bool = False) -> Any:
    """Declare a field of an :class:`OptimizerState` subclass as K-buffers.

    Use as the field's default: ``bases_m: tuple = basis_buffers()``. The field holds
    a tuple of one buffer per mode, of shape ``(n_i, k_i)`` with
    ``k_i = min(r_i, prod_{j != i} r_j)``, in the coordinates of the K-step; it
    follows a change of K-coordinates ``R_i`` as ``b_i R_i`` (first moment) or
    ``b_i (R_i ∘ R_i)`` (``second_moment=True``).

    Parameters
    ----------
    second_moment : bool, default False
        Whether the buffers are second moments.

    Returns
    -------
    dataclasses.Field
        A field without default (give it a value in ``init``).
    """
    return dataclasses.field(metadata={_BUFFER: ("bases", bool(second_moment))})


def rule_class(name: str) -> type[OptimizerState]:
    """The optimizer-state class registered under ``name``.

    Parameters
    ----------
    name : str
        The class's ``name`` attribute (``"momentum"``, ``"adam"``, or a rule
        defined elsewhere).

    Returns
    -------
    type
        The :class:`OptimizerState` subclass.

    Raises
    ------
    ValueError
        If no rule of that name is registered (its class was never defined in this
        process: import the module that defines it).
    """
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"no optimizer rule is registered as {name!r} (registered: "
            f"{sorted(_RULES)}); define or import its OptimizerState subclass, "
            "with a class attribute name, first"
        ) from None


def registered_rules() -> dict[str, type[OptimizerState]]:
    """All registered optimizer rules.

    Returns
    -------
    dict
        ``name -> OptimizerState subclass`` (a copy).
    """
    return dict(_RULES)


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


@functools.cache
def _buffer_fields(cls: type) -> tuple[tuple[str, str, bool], ...]:
    fields = []
    for field in dataclasses.fields(cls):
        if field.name == "rule":
            raise TypeError(
                f"{cls.__qualname__}: a field may not be called 'rule' (the key of "
                "the rule's name in packed states)"
            )
        declared = field.metadata.get(_BUFFER)
        if declared is not None:
            fields.append((field.name, *declared))
    return tuple(fields)


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class OptimizerState:
    """Base class of the optimizer states, one subclass per rule (:class:`Momentum`,
    :class:`Adam`, or one of your own).

    Subclasses hold buffers shaped like the core, ``(r_1, ..., r_d)``, and like each
    K-step variable, ``(n_i, k_i)`` with ``k_i = min(r_i, prod_{j != i} r_j)``. States
    are immutable: every method returns a new state. The steps call these methods;
    a user only builds a state (``Momentum.init``, ``Adam.init``) and passes it on,
    or names the rule to ``TDLRT(rule=...)`` (:meth:`configure`).

    A new rule (see "Adding a rule" in :mod:`tuckerflow.integrators.state`) is a
    frozen dataclass subclass with

    * a class attribute ``name``: the stable name it is registered under (stored in
      checkpoints; a subclass without one is not registered);
    * its buffers declared with :func:`core_buffer` and :func:`basis_buffers`, and
      its other fields plain numbers (hyper-parameters, step counts; no field may be
      called ``rule``);
    * :meth:`core_direction` and :meth:`basis_direction`, entrywise on the buffers;
      optionally :meth:`begin_step`, :meth:`basis_memory`,
      :meth:`with_new_directions`, and an ``init`` that validates its
      hyper-parameters (the inherited one zeroes the buffers and passes keywords
      through).

    The transport of the buffers (:meth:`lift`, :meth:`transform_core`,
    :meth:`transform_bases`), :meth:`check`, :meth:`pack` and :meth:`unpack` come
    from the declarations; do not override the transport (the batched steps of
    :mod:`tuckerflow.integrators.multi` apply the same rule to stacked buffers).

    Examples
    --------
    A heavy-ball rule with dampening, ``b <- beta b + (1 - tau) g``:

    >>> import dataclasses
    >>> from typing import Any
    >>> from tuckerflow.integrators.state import (
    ...     OptimizerState, basis_buffers, core_buffer)
    >>> @dataclasses.dataclass(frozen=True)
    ... class Dampened(OptimizerState):
    ...     name = "doc-dampened"
    ...     beta: float
    ...     tau: float
    ...     core: Any = core_buffer()
    ...     bases: tuple = basis_buffers()
    ...     def core_direction(self, grad):
    ...         core = self.beta * self.core + (1 - self.tau) * grad
    ...         return core, dataclasses.replace(self, core=core)
    ...     def basis_direction(self, mode, grad):
    ...         bases = list(self.bases)
    ...         bases[mode] = self.beta * bases[mode] + (1 - self.tau) * grad
    ...         return bases[mode], dataclasses.replace(self, bases=tuple(bases))
    >>> Dampened.configure(beta=0.9, tau=0.1)
    ('doc-dampened', {'beta': 0.9, 'tau': 0.1})
    """

    name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{cls.__qualname__}.name must be a non-empty str, got {name!r}"
            )
        known = _RULES.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ValueError(
                f"the optimizer rule name {name!r} is taken by "
                f"{known.__module__}.{known.__qualname__}; give "
                f"{cls.__qualname__} another name"
            )
        _RULES[name] = cls  # (a redefinition of the same class replaces it)

    @classmethod
    def _buffer_fields(cls) -> tuple[tuple[str, str, bool], ...]:
        """``(field name, "core" | "bases", second_moment)`` of every declared
        buffer, in field order."""
        return _buffer_fields(cls)

    def _buffers(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, _, _ in self._buffer_fields()}

    def _hyper(self) -> tuple[Any, ...]:
        """The values of the fields that are not buffers (hyper-parameters,
        counters): states with equal values can be stacked."""
        buffers = {name for name, _, _ in self._buffer_fields()}
        return tuple(
            getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in buffers
        )

    @classmethod
    def zero_buffers(cls, tucker: Any) -> dict[str, Any]:
        """Zero buffers of every declared buffer field for the point ``tucker``.

        Parameters
        ----------
        tucker : TuckerTensor or (core, factors)
            Core of shape ``(r_1, ..., r_d)``, factors of shapes ``(n_i, r_i)``.

        Returns
        -------
        dict
            ``field name -> zeros`` of shape ``(r_1, ..., r_d)`` (core buffers) or a
            tuple of zeros of shapes ``(n_i, k_i)`` (K-buffers), in the dtype and on
            the device of the core.
        """
        core, factors = tucker
        shapes = _k_shapes(core, factors)
        zeros: dict[str, Any] = {}
        for name, kind, _ in cls._buffer_fields():
            if kind == "core":
                zeros[name] = _zeros(tl.shape(core), core)
            else:
                zeros[name] = tuple(_zeros(shape, core) for shape in shapes)
        return zeros

    @classmethod
    def init(cls, tucker: Any, **hyper: Any) -> OptimizerState:
        """Zero state for the point ``tucker``.

        The inherited version: every declared buffer zero (:meth:`zero_buffers`),
        the other fields from ``hyper``. Rules override it to validate their
        hyper-parameters (as :meth:`Momentum.init`, :meth:`Adam.init`).

        Parameters
        ----------
        tucker : TuckerTensor or (core, factors)
            The point the state belongs to: core of shape ``(r_1, ..., r_d)``,
            factors of shapes ``(n_i, r_i)``.
        **hyper
            The rule's fields that are not buffers.

        Returns
        -------
        OptimizerState
            The state, with zero buffers.

        Raises
        ------
        TypeError
            If ``hyper`` misses a field or names an unknown one.
        """
        return cls(**hyper, **cls.zero_buffers(tucker))

    @classmethod
    def configure(cls, **hyper: Any) -> tuple[str, dict[str, Any]]:
        """A rule spec for ``TDLRT(rule=...)``: this rule with these hyper-parameters.

        Parameters
        ----------
        **hyper
            Keywords of the rule's ``init`` (``Momentum``: ``beta``,
            ``nesterov``; ``Adam``: ``betas``, ``eps``); missing ones take
            ``init``'s defaults.

        Returns
        -------
        (str, dict)
            ``(name, hyper)``: plain data, so it can be saved in a parameter group
            and read back by ``torch.load(..., weights_only=True)``.

        Raises
        ------
        TypeError
            If the class is not registered (no ``name``), or ``init`` takes no such
            keywords.
        """
        if cls.__dict__.get("name") is None:
            raise TypeError(
                f"{cls.__qualname__} is not a registered rule: give it a class "
                "attribute name"
            )
        try:
            inspect.signature(cls.init).bind(None, **hyper)
        except TypeError as error:
            raise TypeError(f"{cls.__qualname__}.init: {error}") from None
        return cls.name, dict(hyper)

    def pack(self) -> dict[str, Any]:
        """The state as a dict of tensors, numbers and lists (``state_dict``-safe).

        Returns
        -------
        dict
            ``"rule"`` (the registered name) and every field, tuples as lists.

        Raises
        ------
        TypeError
            If the class is not registered (no ``name``).
        """
        if type(self).__dict__.get("name") is None:
            raise TypeError(
                f"{type(self).__qualname__} is not a registered rule: give it a "
                "class attribute name"
            )
        packed: dict[str, Any] = {"rule": self.name}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            packed[field.name] = list(value) if isinstance(value, tuple) else value
        return packed

    @staticmethod
    def unpack(packed: Mapping[str, Any]) -> OptimizerState:
        """The state of a :meth:`pack` dict.

        Dicts written before named rules (``"adam": True/False`` instead of
        ``"rule"``) are read as :class:`Adam`/:class:`Momentum`.

        Parameters
        ----------
        packed : dict
            As returned by :meth:`pack`.

        Returns
        -------
        OptimizerState
            An instance of the registered class, lists back as tuples.

        Raises
        ------
        ValueError
            If the rule is not registered (:func:`rule_class`).
        KeyError
            If a field is missing.
        """
        name = packed.get("rule")
        if name is None and "adam" in packed:  # the format before named rules
            name = "adam" if packed["adam"] else "momentum"
        cls = rule_class(name)
        values = {}
        for field in dataclasses.fields(cls):
            value = packed[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

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
        kinds = {name: kind for name, kind, _ in self._buffer_fields()}
        for name, value in self._buffers().items():
            if kinds[name] == "core":
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
        fields = {
            name: _transform_core(getattr(self, name), matrices, squared=squared)
            for name, kind, squared in self._buffer_fields()
            if kind == "core"
        }
        return dataclasses.replace(self, **fields)

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
        fields = {
            name: _transform_bases(getattr(self, name), matrices, squared=squared)
            for name, kind, squared in self._buffer_fields()
            if kind == "bases"
        }
        return dataclasses.replace(self, **fields)

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

    name = "momentum"

    beta: float
    nesterov: bool
    core: Any = core_buffer()
    bases: tuple[Any, ...] = basis_buffers()

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
        beta = _check_fraction(beta, "beta")
        return cls(beta=beta, nesterov=bool(nesterov), **cls.zero_buffers(tucker))

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

    name = "adam"

    beta1: float
    beta2: float
    eps: float
    count: int
    core_m: Any = core_buffer()
    core_v: Any = core_buffer(second_moment=True)
    bases_m: tuple[Any, ...] = basis_buffers()
    bases_v: tuple[Any, ...] = basis_buffers(second_moment=True)

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
        beta1 = _check_fraction(betas[0], "betas[0]")
        beta2 = _check_fraction(betas[1], "betas[1]")
        if not (isinstance(eps, numbers.Real) and eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be finite and > 0, got {eps!r}")
        return cls(
            beta1=beta1,
            beta2=beta2,
            eps=float(eps),
            count=0,
            **cls.zero_buffers(tucker),
        )

    def begin_step(self) -> Adam:
        return dataclasses.replace(self, count=self.count + 1)

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
