"""Linear and convolution layers whose weight is an orthonormal Tucker tensor.

The weight ``W = C ×_i U_i`` is stored as parameters ``core`` and ``factors[i]`` (modes:
output channels, input channels per group, then the kernel dimensions). Two forward
implementations, chosen per layer:

* ``"dense"``: rebuild ``W`` and run one ``F.linear``/``F.convNd``. Under the TDLRT
  optimizer the rebuilt weight carries the zero parameter ``weight_delta`` (see
  :class:`TuckerLayer`), whose ``.grad`` is exactly the Euclidean gradient ``dL/dW``
  the TDLRT step needs, visible to every standard tool (``GradScaler``, gradient
  clipping, ``zero_grad``).
* ``"factorized"``: never form ``W``; a linear layer is two thin matmuls, a convolution
  is a 1x1 convolution (input basis), a core convolution (core with the kernel factors
  folded in) and a 1x1 convolution (output basis). Groups, stride, dilation and every
  padding mode are supported.

Ranks change during training: :meth:`TuckerLayer.set_tucker` keeps the same
``Parameter`` objects, so optimizers and hooks keep working. While the ranks stay the
same it writes in place, so a ``state_dict()`` taken earlier follows the live values,
exactly like ``nn.Linear``'s. When a rank changes the parameters get new storage of
the new shape, and a ``state_dict()`` taken before keeps the old (self-consistent)
core and factors while ``bias`` follows the live value. For a snapshot that never
changes take ``copy.deepcopy(model.state_dict())``.

Every entry of a layer's ``state_dict`` is a tensor (ranks and options travel as one
int64 ``_extra_state`` tensor), so ``{k: v.clone() ...}`` patterns and safetensors
work; whole models pickle (``torch.save(model)``, ``copy.deepcopy``).

Precision: the weight is rebuilt in the parameters' dtype, also under
``torch.autocast``, where the convolution or matmul casts it as it casts a dense
layer's weight. float16 and bfloat16 layers are factorized in float32 (they have no
SVD or QR) and stored in their own dtype (:func:`factorization_dtype`).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tensorly.tucker_tensor import TuckerTensor
from torch import nn
from torch.nn.modules.utils import _ntuple, _reverse_repeat_tuple

import tuckerflow as tf
from tuckerflow._checks import available_ranks

__all__ = [
    "TuckerLayer",
    "TuckerLinear",
    "TuckerConv1d",
    "TuckerConv2d",
    "TuckerConv3d",
]

IMPLEMENTATIONS = ("dense", "factorized")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


LOW_PRECISION = (torch.float16, torch.bfloat16)


def factorization_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype Tucker layers of ``dtype`` factorize and step in.

    float16 and bfloat16 have no SVD or QR (and 8 or 11 significant bits): their
    HOSVD and TDLRT steps run in float32 and the results are stored back in the
    layer's dtype. Every other dtype computes in itself.
    """
    return torch.float32 if dtype in LOW_PRECISION else dtype


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context without ``torch.autocast`` for ``device_type`` (a no-op when autocast
    is not active there).

    The Tucker weight is built in its parameters' dtype, as ``nn.Linear.weight`` is
    stored: under autocast the convolution or matmul that uses it casts it, exactly as
    it casts a dense layer's weight. Autocast must not cast the mode products in
    between (it would round after each one, and ``tensordot`` refuses the mixed
    dtypes autocast produces).
    """
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        enabled = (
            torch.is_autocast_cpu_enabled()
            if device_type == "cpu"
            else torch.is_autocast_enabled()
        )
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def _per_mode(value: Any, order: int, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * order
    if not hasattr(value, "__iter__"):
        raise TypeError(
            f"{name} must be an int or one int per mode ({order}), got {value!r}"
        )
    values = tuple(value)
    if len(values) != order:
        raise ValueError(f"{name} must have one entry per mode ({order}), got {values}")
    for entry in values:
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise TypeError(f"{name} entries must be ints, got {values}")
    return values


try:
    from torch.nn.parallel import DistributedDataParallel as _DDP
except ImportError:  # pragma: no cover - torch built without distributed
    _DDP = None

# DistributedDataParallel module -> ids of the parameters it reduces (fixed at its
# construction; the Tucker layers keep their Parameter objects through rank changes)
_DDP_PARAMETERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ddp_parameter_ids(ddp: nn.Module) -> frozenset[int]:
    """``id`` of every parameter a ``DistributedDataParallel`` module reduces (all but
    those named in ``_ddp_params_and_buffers_to_ignore``, see
    :func:`~tuckerflow.nn.prepare_ddp`)."""
    ids = _DDP_PARAMETERS.get(ddp)
    if ids is None:
        ids = frozenset(id(p) for p in getattr(ddp, "_module_parameters", ()))
        _DDP_PARAMETERS[ddp] = ids
    return ids


IMPLEMENTATION_CODES = {name: code for code, name in enumerate(IMPLEMENTATIONS)}
EXTRA_STATE_FORMAT = 1

# every live Tucker layer; optimizers find the layer of a parameter by identity against
# these layers' current parameters (nothing is attached to the Parameter objects, so
# models pickle, and Parameters installed by PyTorch itself are found too)
_LIVE_LAYERS: weakref.WeakSet[TuckerLayer] = weakref.WeakSet()


def layers_by_parameter() -> dict[int, TuckerLayer]:
    """Which live Tucker layer each parameter belongs to.

    Returns
    -------
    dict
        ``{id(p): layer}`` over the current ``core``, ``factors`` and ``weight_delta``
        of every live :class:`TuckerLayer` (one entry per parameter).
    """
    table: dict[int, TuckerLayer] = {}
    for layer in list(_LIVE_LAYERS):
        for parameter in layer.tucker_parameters():
            table[id(parameter)] = layer
    return table


def _replace(parameter: nn.Parameter, value: torch.Tensor) -> None:
    """Give ``parameter`` new values and possibly a new shape, keeping the object.

    Same shape, dtype and device: an in-place copy, so references to the storage (a
    ``state_dict()`` taken earlier) see the new values, as for any parameter an
    optimizer updates. Otherwise ``Tensor.set_`` (not ``.data =``): autograd caches a
    leaf's gradient accumulator together with its shape, and a graph still alive from
    the previous iteration (the old ``loss``) keeps that accumulator; after ``.data =``
    with a new shape the next backward fails on the stale shape, ``set_`` makes
    autograd use the new one.
    """
    value = value.detach()
    with torch.no_grad():
        if (
            value.shape == parameter.shape
            and value.dtype == parameter.dtype
            and value.device == parameter.device
        ):
            if value.untyped_storage().data_ptr() == (
                parameter.untyped_storage().data_ptr()
            ):
                value = value.clone()  # a view of the parameter itself
            parameter.copy_(value)
        else:
            parameter.set_(value.clone().contiguous())
    parameter.grad = None


def _cap_adaptive(rank: Sequence[int], adaptive: Sequence[int]) -> tuple[int, ...]:
    """Cap every adaptive mode's rank at the product of the other ranks.

    A multilinear rank never exceeds the product of the others, so a larger adaptive
    rank only stores zeros. Fixed (non-adaptive) modes keep their size even when it
    exceeds that product (a kernel mode next to a size-1 channel mode, as in
    ``Conv1d(1, 16, 7)`` or a depthwise convolution): cutting them would pin the
    layer to a subspace of kernels forever, while the adaptive ranks can grow later.
    """
    rank = list(rank)
    changed = True
    while changed:  # the caps depend on each other; they only decrease
        changed = False
        for mode in adaptive:
            others = math.prod(rank[:mode] + rank[mode + 1 :])
            if rank[mode] > others:
                rank[mode], changed = others, True
    return tuple(rank)


class _ThroughDelta(torch.autograd.Function):
    """``weight + delta`` for the zero ``delta``, without the elementwise pass: the
    forward returns ``weight`` itself, the backward hands ``dL/dW`` to ``delta``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


def _expanded_zero(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A zero tensor of ``shape`` that stores one element (stride 0 everywhere)."""
    return torch.zeros((), dtype=like.dtype, device=like.device).expand(tuple(shape))


def reconstruct(core: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``core ×_i factors[i]`` with torch ops (differentiable).

    Each product contracts the leading mode and appends the new one, so after all
    modes they are back in order and the result is contiguous (no transposed layout
    for the convolution to copy or the gradient to follow).
    """
    weight = core
    for factor in factors:
        weight = torch.tensordot(weight, factor, dims=([0], [1]))
    return weight


class TuckerLayer(nn.Module):
    """Base class: storage, ranks and bookkeeping of a Tucker-format weight.

    The weight ``W`` of shape ``weight_shape = (n_1, ..., n_d)`` is
    ``W = C ×_1 U_1 ... ×_d U_d`` with core ``C`` of shape ``rank = (r_1, ..., r_d)``
    and factors ``U_i`` of shape ``(n_i, r_i)`` with orthonormal columns: ``prod(r) +
    sum_i n_i r_i`` stored weights instead of ``prod(n)``. The modes are the dense
    layer's weight dimensions in order: ``(out_features, in_features)`` for
    :class:`TuckerLinear`, ``(out_channels, in_channels / groups, *kernel_size)`` for
    the convolutions. The ranks of the ``adaptive_modes`` (by default the two channel
    modes) change during training with :class:`~tuckerflow.nn.TDLRT`, within
    ``[min_rank, max_rank]``; the other modes keep their rank. Subclasses define the
    constructor and the forward; this class has no public constructor of its own.

    Attributes
    ----------
    core : nn.Parameter
        Shape ``rank``.
    factors : nn.ParameterList
        ``factors[i]`` of shape ``(n_i, r_i)``, orthonormal columns.
    weight_delta : nn.Parameter or None
        ``None`` until the TDLRT optimizer takes the layer with a dense-gradient method
        (``gradient_source == "weight"``); then a parameter ``Δ`` of the weight's
        shape, fixed at zero, and the rebuilt weight is ``W = C ×_i U_i + Δ`` with the
        Tucker part computed without autograd. So ``Δ.grad`` is exactly ``dL/dW``,
        the gradient the TDLRT step consumes, and every standard tool acts on it as
        on ``nn.Linear.weight.grad``: ``GradScaler`` (scaling, ``unscale_``, inf
        checks), ``clip_grad_norm_(model.parameters())``, ``model.zero_grad()``,
        accumulation over several backward passes, and a parent module reading
        :attr:`weight`. ``Δ`` is never updated (TDLRT puts it in the layer's parameter
        group only so that those tools see it), it is not part of the ``state_dict``,
        and it stores a single element (stride 0); ``sum(p.numel() for p in
        model.parameters())`` counts its full size nevertheless: use
        :func:`~tuckerflow.nn.compression_report` or :meth:`parameter_count` for the
        Tucker parameters. Another optimizer must not be given ``Δ`` (it cannot write
        it); to train with one after TDLRT, set ``gradient_source = "factors"``.
    gradient_source : {'factors', 'weight'}
        Where the gradient of the Tucker weight lands: on ``core`` and ``factors``
        (ordinary autograd, the default) or on ``weight_delta`` (set by TDLRT for
        ``implementation="dense"``).
    min_rank, max_rank : tuple of int
        Per-mode bounds for rank-adaptive training; modes that do not adapt have
        ``min_rank == max_rank == rank``.
    adaptive_modes : tuple of int
    implementation : {'dense', 'factorized'}
    offset : tensor or None
        Frozen weight added to the Tucker weight (adapters: ``W0 + Tucker(dW)``).
    weight_shape : tuple of int
        Shape of the dense weight ``W``.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000 (the
       initialisation).
    """

    weight_shape: tuple[int, ...]
    # set by the TDLRT optimizer on the layers whose ranks it changes
    _tdlrt_owned = False

    def _check_data_parallel(self) -> None:
        """Refuse a forward inside ``DistributedDataParallel`` when DDP reduces this
        TDLRT-trained layer's Tucker parameters (the model was wrapped without
        :func:`~tuckerflow.nn.prepare_ddp`): DDP would wait for core and factor
        gradients that the TDLRT step never produces (or crash when a rank changes
        the shapes of its buckets), failing later with a message about unused
        parameters."""
        if not self._tdlrt_owned or _DDP is None:
            return
        ddp = getattr(_DDP, "_active_ddp_module", None)
        if ddp is None:
            return
        reduced = ddp_parameter_ids(ddp)
        if any(id(p) in reduced for p in self.tucker_parameters()):
            raise RuntimeError(
                f"{type(self).__name__} (weight shape {self.weight_shape}) is trained "
                "by TDLRT, and the DistributedDataParallel running it also reduces "
                "its core and factors: DDP cannot follow TDLRT's rank changes, and "
                "it waits for core and factor gradients the TDLRT step does not "
                "produce. Call tuckerflow.nn.prepare_ddp(model) before wrapping, "
                "DistributedDataParallel(prepare_ddp(model)) (with accelerate or "
                "the Hugging Face Trainer: prepare_ddp(model) before "
                "accelerator.prepare or Trainer); TDLRT averages those gradients "
                "itself"
            )

    def _default_init(self, weight: torch.Tensor) -> None:
        """PyTorch's default initialisation of a Linear/Conv weight (for
        ``init="random"`` and a layer built without ``init_weight``)."""
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))

    def _setup_bias_and_offset(
        self,
        bias: bool,
        size: int,
        fan_in: int,
        offset: torch.Tensor | None,
        factory: dict[str, Any],
    ) -> None:
        """``bias`` (``size`` entries, PyTorch's uniform initialisation for
        ``fan_in``) and the frozen ``offset`` buffer of adapters."""
        if bias:
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            self.bias = nn.Parameter(torch.empty(size, **factory))
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)
        self.register_buffer(
            "offset", None if offset is None else offset.detach().clone()
        )

    def _setup_tucker(
        self,
        weight_shape: tuple[int, ...],
        *,
        rank: Any,
        min_rank: Any,
        max_rank: Any,
        adaptive_modes: Sequence[int] | None,
        implementation: str,
        init_weight: torch.Tensor | None,
        device: Any,
        dtype: Any,
        default_adaptive: Sequence[int],
        zero_core: bool = False,
    ) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, "
                f"got {implementation!r}"
            )
        self.weight_shape = tuple(int(n) for n in weight_shape)
        order = len(self.weight_shape)
        if adaptive_modes is None:
            adaptive_modes = default_adaptive
        adaptive = tuple(sorted(set(int(m) for m in adaptive_modes)))
        if any(not 0 <= m < order for m in adaptive):
            raise ValueError(
                f"adaptive_modes must lie in [0, {order}), got {tuple(adaptive_modes)}"
            )
        self.adaptive_modes = adaptive
        self.implementation = implementation
        self._gradient_source = "factors"  # TDLRT switches dense layers to "weight"

        if rank is None:
            rank = tuple(
                max(1, n // 2) if m in adaptive else n
                for m, n in enumerate(self.weight_shape)
            )
        if init_weight is None:
            init_weight = torch.empty(self.weight_shape, device=device, dtype=dtype)
            self._default_init(init_weight)
        init_weight = init_weight.detach()
        storage = init_weight.dtype if dtype is None else dtype
        rank = self._complete_rank(rank, adaptive)
        with tf.use_backend("pytorch"):
            # float16/bfloat16: factorized in float32, stored in the layer's dtype
            decomposition = tf.hosvd(
                init_weight.to(factorization_dtype(init_weight.dtype)), rank=rank
            )
        core, factors = decomposition.core, decomposition.factors
        if zero_core:
            core = torch.zeros_like(core)
        self.core = nn.Parameter(core.to(storage).contiguous())
        self.factors = nn.ParameterList(
            [nn.Parameter(f.to(storage).contiguous()) for f in factors]
        )
        self.register_parameter("weight_delta", None)
        self._set_bounds(min_rank, max_rank)
        _LIVE_LAYERS.add(self)

    def _complete_rank(self, rank: Any, adaptive: Sequence[int]) -> tuple[int, ...]:
        """An int rank applies to the adaptive modes; fixed modes keep their size."""
        order = len(self.weight_shape)
        if isinstance(rank, int) and not isinstance(rank, bool):
            if rank < 1:
                raise ValueError(f"rank must be >= 1, got {rank}")
            rank = tuple(
                min(rank, n) if m in adaptive else n
                for m, n in enumerate(self.weight_shape)
            )
        rank = _per_mode(rank, order, "rank")
        for mode, (r, n) in enumerate(zip(rank, self.weight_shape)):
            if not 1 <= r <= n:
                raise ValueError(
                    f"rank[{mode}]={r} must lie in [1, {n}] (weight shape "
                    f"{self.weight_shape})"
                )
        # no weight of this shape has a larger rank in a mode than the product of
        # the other sizes (Conv1d(1, 1, 7): the kernel mode has rank 1)
        bound = available_ranks(self.weight_shape)
        rank = tuple(min(r, a) for r, a in zip(rank, bound))
        return _cap_adaptive(rank, adaptive)

    def _set_bounds(self, min_rank: Any, max_rank: Any) -> None:
        order = len(self.weight_shape)
        rank = self.rank
        lows = _per_mode(min_rank, order, "min_rank") or (1,) * order
        highs = _per_mode(max_rank, order, "max_rank") or self.weight_shape
        bounded_low, bounded_high = [], []
        for mode, (low, high, n, r) in enumerate(
            zip(lows, highs, self.weight_shape, rank)
        ):
            if mode not in self.adaptive_modes:
                bounded_low.append(r)
                bounded_high.append(r)
                continue
            if low < 1 or high < 1:
                raise ValueError(f"ranks must be >= 1, got min {low}, max {high}")
            high = min(high, n)
            low = min(low, high)
            if low > high:
                raise ValueError(
                    f"min_rank {low} exceeds max_rank {high} in mode {mode}"
                )
            bounded_low.append(low)
            bounded_high.append(high)
        self.min_rank = tuple(bounded_low)
        self.max_rank = tuple(bounded_high)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy.deepcopy, pickle and torch.load rebuild the layer: register the new one
        super().__setstate__(state)
        _LIVE_LAYERS.add(self)
        self._compact_weight_delta()  # deepcopy clones Δ into full memory

    def _apply(self, fn, recurse=True):
        # .to(), .double(), .cuda() copy Δ into full memory: give it back one element
        result = super()._apply(fn, recurse)
        self._compact_weight_delta()
        return result

    def _compact_weight_delta(self) -> None:
        """Δ is zero by definition: one element, whatever a copy or conversion made
        of it (also ``to_empty``, which leaves memory uninitialized)."""
        delta = self._parameters.get("weight_delta")
        if delta is not None:
            delta.data = _expanded_zero(delta.shape, delta)

    # ------------------------------------------------------------------ access
    @property
    def rank(self) -> tuple[int, ...]:
        """Current Tucker rank."""
        return tuple(self.core.shape)

    @property
    def gradient_source(self) -> str:
        """``"factors"`` (ordinary autograd) or ``"weight"`` (``dL/dW`` lands on
        :attr:`weight_delta`, created on first use).

        Raises
        ------
        ValueError
            On assignment of anything but ``"factors"`` or ``"weight"``.
        """
        return self._gradient_source

    @gradient_source.setter
    def gradient_source(self, value: str) -> None:
        if value not in ("factors", "weight"):
            raise ValueError(
                f"gradient_source must be 'factors' or 'weight', got {value!r}"
            )
        if value == "weight":
            delta = self._parameters.get("weight_delta")
            if delta is None or tuple(delta.shape) != self.weight_shape:
                self.weight_delta = nn.Parameter(
                    _expanded_zero(self.weight_shape, self.core)
                )
        self._gradient_source = value

    def tucker_parameters(self) -> list[nn.Parameter]:
        """The parameters of the Tucker weight (everything but ``bias``).

        Returns
        -------
        list of nn.Parameter
            The current ``core``, ``factors`` and, if it exists, ``weight_delta``.
        """
        parameters = [self.core, *self.factors]
        if self.weight_delta is not None:
            parameters.append(self.weight_delta)
        return parameters

    def tucker(self) -> TuckerTensor:
        """The weight as a (detached) TensorLy Tucker tensor.

        Returns
        -------
        TuckerTensor
            ``(core, factors)``: detached views of the parameters (no copy; the
            adapter ``offset`` is not included).
        """
        return TuckerTensor(
            (self.core.detach(), [factor.detach() for factor in self.factors])
        )

    def set_tucker(self, tucker: Any) -> None:
        """Replace the weight; ranks may change, the Parameter objects are kept.

        Parameters
        ----------
        tucker : (core, factors)
            The new core and one factor per mode (orthonormal columns, one row per
            entry of the layer's mode); stored in the layer's dtype (a float32
            result in a bfloat16 layer is rounded to bfloat16).

        Notes
        -----
        A core or factor whose shape is unchanged is written in place, so a
        ``state_dict()`` taken earlier shows the new values (as for ``nn.Linear``
        updated by ``torch.optim.SGD``). A rank change gives the parameter new storage
        of the new shape: a ``state_dict()`` taken before keeps the old core and
        factors, a consistent older weight, while its ``bias`` entry is the live one.
        Take ``copy.deepcopy(model.state_dict())`` for a snapshot. ``core.grad`` and
        the factors' ``.grad`` are cleared (they belong to the old parametrization);
        ``weight_delta.grad``, a gradient with respect to ``W``, is kept, like any
        parameter's gradient after an optimizer step.

        Raises
        ------
        ValueError
            If the number of factors differs from the layer's order, or a factor's
            row count differs from its mode's size ``n_i``.
        """
        core, factors = tucker
        if len(factors) != len(self.factors):
            raise ValueError(
                f"expected {len(self.factors)} factors, got {len(factors)}"
            )
        for mode, factor in enumerate(factors):
            if factor.shape[0] != self.weight_shape[mode]:
                raise ValueError(
                    f"factor {mode} has {factor.shape[0]} rows, the layer's mode "
                    f"{mode} has size {self.weight_shape[mode]}"
                )
        # in the layer's dtype and device (a float32 TDLRT step of a bfloat16 layer
        # is stored in bfloat16)
        _replace(self.core, core.to(self.core.dtype))
        for parameter, factor in zip(self.factors, factors):
            _replace(parameter, factor.to(parameter.dtype))

    def orthonormality_error(self) -> list[float]:
        """``max |U_i^T U_i - I|`` of every factor (computed in float64).

        Returns
        -------
        list of float
            One entry per mode; ``nan`` for a factor with non-finite entries.
        """
        errors = []
        for factor in self.factors:
            matrix = factor.detach()
            if matrix.dtype != torch.float64:
                matrix = matrix.to(torch.float64)
            gram = matrix.t() @ matrix
            identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            errors.append(float((gram - identity).abs().max()))
        return errors

    def orthonormalize(self) -> None:
        """Make every factor orthonormal again without changing the weight.

        Each factor is replaced by ``Q`` of its thin QR decomposition ``U_i = Q_i R_i``
        and ``R_i`` is folded into the core (``C ×_i R_i``), so ``W = C ×_i U_i`` is
        unchanged up to rounding, also when a factor is rank deficient (``R_i``
        singular: the Tucker format does not need a full-rank core).

        Raises
        ------
        ValueError
            If a factor or the core has non-finite entries.
        """
        core = self.core.detach()
        tensors = [("core", core)] + [
            (f"factor {mode}", factor.detach())
            for mode, factor in enumerate(self.factors)
        ]
        for name, tensor in tensors:
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"{type(self).__name__}: its {name} has non-finite entries; the "
                    "weight cannot be repaired, restore it from a checkpoint"
                )
        compute = factorization_dtype(core.dtype)  # float16/bfloat16: no QR
        core, factors = core.to(compute), []
        for mode, factor in enumerate(self.factors):
            basis, triangle = torch.linalg.qr(factor.detach().to(compute))
            core = torch.movedim(
                torch.tensordot(triangle, core, dims=([1], [mode])), 0, mode
            )
            factors.append(basis)
        self.set_tucker((core, factors))

    def parameter_count(self) -> int:
        """Stored weight parameters ``prod(r) + sum(n_i r_i)`` (bias excluded).

        Returns
        -------
        int
            Entries of the core and the factors at the current rank.
        """
        return tf.parameter_count(self.weight_shape, self.rank)

    def dense_parameter_count(self) -> int:
        """Parameters of the dense weight this layer replaces.

        Returns
        -------
        int
            ``prod(weight_shape)``.
        """
        return math.prod(self.weight_shape)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight ``C ×_i U_i`` (plus the adapter offset, if any).

        With ``gradient_source == "weight"`` (the TDLRT optimizer on a dense layer)
        the Tucker part is rebuilt without autograd and :attr:`weight_delta` is added:
        the backward pass then computes only ``dL/dW`` (into ``weight_delta.grad``),
        whether the layer's own forward or a parent module reads the weight. Shape
        ``weight_shape``.

        Raises
        ------
        RuntimeError
            Inside a ``DistributedDataParallel`` that also reduces this
            TDLRT-trained layer's core and factors (the model was wrapped without
            :func:`~tuckerflow.nn.prepare_ddp`).
        """
        self._check_data_parallel()
        delta = self.weight_delta
        with autocast_off(self.core.device.type):  # built in the parameters' dtype
            if (
                self._gradient_source == "weight"
                and delta is not None
                and delta.requires_grad
                and torch.is_grad_enabled()
            ):
                with torch.no_grad():
                    weight = reconstruct(self.core, list(self.factors))
                weight = _ThroughDelta.apply(weight, delta)  # = weight + delta (zero)
            else:
                weight = reconstruct(self.core, list(self.factors))
            offset = getattr(self, "offset", None)
            return weight if offset is None else weight + offset

    def weight_gradient(self) -> torch.Tensor | None:
        """``dL/dW`` accumulated since the gradients were last cleared.

        Returns
        -------
        tensor or None
            ``weight_delta.grad``; ``None`` before a backward pass and whenever
            ``gradient_source == "factors"`` (then the gradient is on the core and
            factors).
        """
        delta = self.weight_delta
        if delta is None or self._gradient_source != "weight":
            return None
        return delta.grad

    def clear_weight_gradient(self) -> None:
        """Set ``weight_delta.grad`` to ``None`` (``model.zero_grad()`` does too)."""
        if self.weight_delta is not None:
            self.weight_delta.grad = None

    def extra_repr(self) -> str:
        """The Tucker options shown by ``repr(layer)``.

        Returns
        -------
        str
            ``rank=..., adaptive_modes=..., implementation=...``.
        """
        return (
            f"rank={self.rank}, adaptive_modes={self.adaptive_modes}, "
            f"implementation={self.implementation!r}"
        )

    # ------------------------------------------------------------ checkpoints
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "weight_delta", None)  # always zero, never stored

    def _load_from_state_dict(
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,
        unexpected_keys,
        error_msgs,
    ):
        """Accept any ranks: resize ``core``/``factors`` to the stored shapes first."""
        core_key = prefix + "core"
        if core_key in state_dict:
            stored = state_dict[core_key]
            if stored.dim() != len(self.weight_shape):
                raise ValueError(
                    f"{prefix or 'layer '}: checkpoint core has {stored.dim()} modes "
                    "but "
                    f"this {type(self).__name__} has {len(self.weight_shape)} (weight "
                    f"shape {self.weight_shape}): the checkpoint is from another "
                    "architecture"
                )
            factor_shapes = []
            for mode in range(len(self.weight_shape)):
                key = f"{prefix}factors.{mode}"
                if key not in state_dict:
                    continue
                rows, cols = state_dict[key].shape
                if rows != self.weight_shape[mode] or cols != stored.shape[mode]:
                    raise ValueError(
                        f"{key}: checkpoint factor has shape {(rows, cols)} but this "
                        f"layer's mode {mode} has size {self.weight_shape[mode]} (core "
                        f"rank {stored.shape[mode]}): the checkpoint is from another "
                        "architecture"
                    )
                factor_shapes.append((mode, (rows, cols)))
            if tuple(self.core.shape) != tuple(stored.shape):
                _replace(
                    self.core,
                    torch.empty(
                        stored.shape, dtype=self.core.dtype, device=self.core.device
                    ),
                )
            for mode, shape in factor_shapes:
                factor = self.factors[mode]
                if tuple(factor.shape) != shape:
                    _replace(
                        factor,
                        torch.empty(shape, dtype=factor.dtype, device=factor.device),
                    )
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        delta_key = prefix + "weight_delta"
        while delta_key in missing_keys:  # never stored: not missing
            missing_keys.remove(delta_key)

    def get_extra_state(self) -> torch.Tensor:
        """Rank bounds and options as one int64 tensor, saved in the ``state_dict``.

        Layout: ``[format, order, min_rank..., max_rank..., adaptive flag per mode...,
        implementation code]`` (a tensor, so every ``state_dict`` entry is one:
        safetensors and ``{k: v.clone()}`` work).

        Returns
        -------
        tensor of shape (3 d + 3,)
            int64, ``d`` the order of the weight.
        """
        order = len(self.weight_shape)
        adaptive = [int(m in self.adaptive_modes) for m in range(order)]
        values = [
            EXTRA_STATE_FORMAT,
            order,
            *self.min_rank,
            *self.max_rank,
            *adaptive,
            IMPLEMENTATION_CODES[self.implementation],
        ]
        return torch.tensor(values, dtype=torch.int64)

    def set_extra_state(self, state: Any) -> None:
        """Restore :meth:`get_extra_state`'s tensor, or the dict older versions
        stored (``min_rank``, ``max_rank``, ``adaptive_modes``, ``implementation``).

        Parameters
        ----------
        state : tensor of shape (3 d + 3,) or dict
            The ``_extra_state`` entry of a ``state_dict``.

        Raises
        ------
        ValueError
            If the tensor is not the current format's encoding for a layer of this
            order (a checkpoint of another architecture or version), or names an
            unknown implementation code.
        """
        if isinstance(state, dict):
            self.min_rank = tuple(state["min_rank"])
            self.max_rank = tuple(state["max_rank"])
            self.adaptive_modes = tuple(state["adaptive_modes"])
            self.implementation = state["implementation"]
            return
        order = len(self.weight_shape)
        values = torch.as_tensor(state).reshape(-1).tolist()
        if len(values) != 3 * order + 3 or values[:2] != [EXTRA_STATE_FORMAT, order]:
            raise ValueError(
                f"{type(self).__name__}: _extra_state {values} is not the format-"
                f"{EXTRA_STATE_FORMAT} encoding of an order-{order} layer "
                "([format, order, min_rank, max_rank, adaptive flags, implementation]):"
                " the checkpoint is from another architecture or version"
            )
        body = values[2:]
        code = body[3 * order]
        if not 0 <= code < len(IMPLEMENTATIONS):
            raise ValueError(
                f"{type(self).__name__}: _extra_state names implementation code "
                f"{code}, known codes are {IMPLEMENTATION_CODES}"
            )
        self.min_rank = tuple(int(v) for v in body[:order])
        self.max_rank = tuple(int(v) for v in body[order : 2 * order])
        flags = body[2 * order : 3 * order]
        self.adaptive_modes = tuple(m for m, flag in enumerate(flags) if flag)
        self.implementation = IMPLEMENTATIONS[code]


class TuckerLinear(TuckerLayer):
    """``y = x W^T + b`` with ``W = U_out C U_in^T`` (order-2 Tucker, i.e. a low-rank
    matrix with an explicit core).

    The weight ``W`` of shape ``(out_features, in_features)`` is stored as the core
    ``C`` of shape ``(r_out, r_in)`` and orthonormal factors ``U_out`` of shape
    ``(out_features, r_out)`` (mode 0) and ``U_in`` of shape ``(in_features, r_in)``
    (mode 1): ``r_out r_in + out_features r_out + in_features r_in`` weights instead
    of ``out_features in_features``. Input ``(*, in_features)``, output
    ``(*, out_features)``, as for :class:`torch.nn.Linear`. The ranks adapt during
    training with :class:`~tuckerflow.nn.TDLRT`.

    Parameters
    ----------
    in_features, out_features : int
        Size of an input and of an output sample.
    bias : bool, default True
        Learn an additive bias of shape ``(out_features,)`` (initialised as
        ``nn.Linear``'s).
    rank : int or (int, int), optional
        Initial rank ``(r_out, r_in)``. An int ``r`` applies to the adaptive modes
        (``min(r, n_i)``) while fixed modes keep their full size; a pair gives both,
        each in ``[1, n_i]``. Default: ``max(1, n_i // 2)`` on every adaptive mode.
        An adaptive rank above the other one is lowered to it (a matrix has one
        rank; the excess would only store zeros).
    min_rank, max_rank : int or (int, int), optional
        Bounds on the adaptive ranks during rank-adaptive training (an int applies
        to both modes; default 1 and ``n_i``). ``max_rank`` is clipped to ``n_i``
        and ``min_rank`` to ``max_rank``; a fixed mode stays at its rank.
    adaptive_modes : sequence of int, optional
        Default ``(0, 1)``: both ranks adapt.
    implementation : {'dense', 'factorized'}, default 'dense'
        ``'dense'``: rebuild ``W`` and run one ``F.linear`` (TDLRT then steps with
        the dense gradient ``dL/dW``). ``'factorized'``: two thin matmuls
        ``(x U_in C^T) U_out^T`` that never form ``W`` (TDLRT then takes the
        parallel BUG step from the core and factor gradients).
    device, dtype : optional
        Of the parameters (default: torch's defaults, or ``init_weight``'s dtype).
    init_weight : tensor of shape (out_features, in_features), optional
        Dense weight whose truncated HOSVD at ``rank`` initialises the layer
        (default: a Kaiming-uniform draw, as ``nn.Linear``).
    offset : tensor of shape (out_features, in_features), optional
        Frozen weight (a buffer, never trained) added to the Tucker weight: adapters
        ``W0 + Tucker(dW)`` (:func:`~tuckerflow.nn.add_tucker_adapters`).
    zero_core : bool, default False
        Start from the zero core: ``W = 0`` with orthonormal bases (adapters).

    Raises
    ------
    ValueError
        If ``implementation`` is unknown; an entry of ``adaptive_modes`` is not 0 or
        1; ``rank``, ``min_rank`` or ``max_rank`` has not one entry per mode; an int
        ``rank`` is below 1 or a mode rank lies outside ``[1, n_i]``; or a
        ``min_rank`` or ``max_rank`` entry of an adaptive mode is below 1.
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000 (the
       initialisation).

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerLinear
    >>> layer = TuckerLinear(20, 10, rank=4)
    >>> tuple(layer(torch.randn(8, 20)).shape), layer.rank, layer.parameter_count()
    ((8, 10), (4, 4), 136)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: Any = None,
        min_rank: Any = None,
        max_rank: Any = None,
        adaptive_modes: Sequence[int] | None = None,
        implementation: str = "dense",
        device: Any = None,
        dtype: Any = None,
        init_weight: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        zero_core: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        factory = {"device": device, "dtype": dtype}
        self._setup_tucker(
            (self.out_features, self.in_features),
            rank=rank,
            min_rank=min_rank,
            max_rank=max_rank,
            adaptive_modes=adaptive_modes,
            implementation=implementation,
            init_weight=init_weight,
            default_adaptive=(0, 1),
            zero_core=zero_core,
            **factory,
        )
        self._setup_bias_and_offset(
            bias, self.out_features, self.in_features, offset, factory
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` (plus ``x offset^T`` for an adapter).

        Parameters
        ----------
        x : tensor of shape ``(*, in_features)``

        Returns
        -------
        tensor of shape ``(*, out_features)``

        Raises
        ------
        RuntimeError
            Inside a ``DistributedDataParallel`` that also reduces this
            TDLRT-trained layer's core and factors (the model was wrapped without
            :func:`~tuckerflow.nn.prepare_ddp`).
        """
        if self.implementation == "dense":
            return F.linear(x, self.weight, self.bias)
        self._check_data_parallel()
        out_basis, in_basis = self.factors[0], self.factors[1]
        # W^T = U_in C^T U_out^T: two thin matmuls
        hidden = x @ (in_basis @ self.core.t())
        # F.linear adds the bias in the matmul's dtype (as nn.Linear under autocast)
        y = F.linear(hidden, out_basis, self.bias)
        if self.offset is not None:
            y = y + F.linear(x, self.offset)
        return y

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        rank: Any = None,
        tol: float | None = None,
        **options: Any,
    ) -> TuckerLinear:
        """Tucker layer initialised by the (truncated) HOSVD of ``linear.weight``.

        Parameters
        ----------
        linear : nn.Linear
            Any ``nn.Linear`` (subclasses too); its bias is copied.
        rank : int or (int, int), optional
            Explicit initial rank (an int applies to the adaptive modes). Default
            (neither ``rank`` nor ``tol``): half of every adaptive mode.
        tol : float, optional
            Instead of ``rank``: the smallest HOSVD ranks of the adaptive modes whose
            total relative error is at most ``tol`` (in ``[0, 1)``:
            ``||W - W_tucker|| <= tol ||W||``).
        **options
            Further constructor arguments: ``min_rank``, ``max_rank``,
            ``adaptive_modes``, ``implementation``, ``offset``, ``zero_core``.

        Returns
        -------
        TuckerLinear
            A new layer on the device and in the dtype of ``linear.weight``; at full
            rank it computes what ``linear`` computes.

        Raises
        ------
        TypeError
            If ``linear`` is not an ``nn.Linear``, ``tol`` is not a real number, or
            a rank is neither an int nor a sequence of ints.
        ValueError
            If both ``rank`` and ``tol`` are given, ``tol`` lies outside ``[0, 1)``,
            or an option is invalid (see :class:`TuckerLinear`).

        References
        ----------
        .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
           decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.
        .. [2] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
           "Geometry-aware training of factorized layers in tensor Tucker format",
           NeurIPS 2024.
        """
        return _from_dense(cls, linear, rank, tol, options)


class _TuckerConvNd(TuckerLayer):
    """Shared implementation of :class:`TuckerConv1d`, ``2d`` and ``3d``."""

    spatial_dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        rank: Any = None,
        min_rank: Any = None,
        max_rank: Any = None,
        adaptive_modes: Sequence[int] | None = None,
        implementation: str = "dense",
        device: Any = None,
        dtype: Any = None,
        init_weight: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        zero_core: bool = False,
    ) -> None:
        super().__init__()
        ntuple = _ntuple(self.spatial_dims)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = ntuple(kernel_size)
        self.stride = ntuple(stride)
        self.dilation = ntuple(dilation)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"padding must be 'same', 'valid' or ints, got {padding!r}"
                )
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(
                    "padding='same' is not supported for strided convolutions"
                )
            self.padding = padding
            self._reversed_padding_repeated_twice = [0, 0] * self.spatial_dims
            if padding == "same":
                for d, k, i in zip(
                    self.dilation,
                    self.kernel_size,
                    range(self.spatial_dims - 1, -1, -1),
                ):
                    total = d * (k - 1)
                    left = total // 2
                    self._reversed_padding_repeated_twice[2 * i] = left
                    self._reversed_padding_repeated_twice[2 * i + 1] = total - left
        else:
            self.padding = ntuple(padding)
            self._reversed_padding_repeated_twice = _reverse_repeat_tuple(
                self.padding, 2
            )
        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._setup_tucker(
            shape,
            rank=rank,
            min_rank=min_rank,
            max_rank=max_rank,
            adaptive_modes=adaptive_modes,
            implementation=implementation,
            init_weight=init_weight,
            default_adaptive=(0, 1),
            zero_core=zero_core,
            **factory,
        )
        fan_in = (in_channels // groups) * math.prod(self.kernel_size)
        self._setup_bias_and_offset(bias, out_channels, fan_in, offset, factory)

    def _conv(self, x, weight, bias, *, stride, padding, dilation, groups, pad=True):
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.spatial_dims - 1]
        if pad and self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = _ntuple(self.spatial_dims)(0)
        return conv(x, weight, bias, stride, padding, dilation, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution of ``x`` with the Tucker weight (plus ``offset``, if any).

        Parameters
        ----------
        x : tensor of shape ``(N, in_channels, *spatial)``
            Or unbatched ``(in_channels, *spatial)``; ``spatial`` has 1, 2 or 3
            entries (``TuckerConv1d``, ``2d``, ``3d``).

        Returns
        -------
        tensor of shape ``(N, out_channels, *spatial_out)``
            Unbatched for an unbatched input; ``spatial_out[d] = floor((spatial[d] +
            2 padding[d] - dilation[d] (kernel_size[d] - 1) - 1) / stride[d] + 1)``,
            as for ``nn.ConvNd``.

        Raises
        ------
        RuntimeError
            Inside a ``DistributedDataParallel`` that also reduces this
            TDLRT-trained layer's core and factors (the model was wrapped without
            :func:`~tuckerflow.nn.prepare_ddp`).
        """
        if self.implementation == "dense":
            return self._conv(
                x,
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                groups=self.groups,
            )
        return self._factorized_forward(x)

    def _factorized_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_data_parallel()
        groups, ones = self.groups, (1,) * self.spatial_dims
        out_basis, in_basis = self.factors[0], self.factors[1]
        # 1. input basis: a grouped 1x1 convolution with U_in^T in every group
        in_weight = (
            in_basis.t()
            .repeat(groups, 1)
            .reshape(groups * in_basis.shape[1], in_basis.shape[0], *ones)
        )
        hidden = self._conv(
            x,
            in_weight,
            None,
            stride=ones,
            padding=0,
            dilation=ones,
            groups=groups,
            pad=False,
        )
        # 2. the core with the kernel factors folded in, repeated for every group
        # (in the parameters' dtype; under autocast the convolution casts it)
        kernel = self.core
        with autocast_off(kernel.device.type):
            for mode in range(2, 2 + self.spatial_dims):
                factor = self.factors[mode]
                kernel = torch.movedim(
                    torch.tensordot(factor, kernel, dims=([1], [mode])), 0, mode
                )
        kernel = kernel.repeat(groups, *([1] * (1 + self.spatial_dims)))
        hidden = self._conv(
            hidden,
            kernel,
            None,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=groups,
        )
        # 3. output basis: grouped 1x1 convolution, group g maps to its out channels
        out_weight = out_basis.reshape(*out_basis.shape, *ones)
        y = self._conv(
            hidden,
            out_weight,
            self.bias,
            stride=ones,
            padding=0,
            dilation=ones,
            groups=groups,
            pad=False,
        )
        if self.offset is not None:
            y = y + self._conv(
                x,
                self.offset,
                None,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                groups=self.groups,
            )
        return y

    def extra_repr(self) -> str:
        """The constructor options shown by ``repr(layer)``.

        Returns
        -------
        str
            Channels, kernel, stride, padding and groups, then the Tucker options.
        """
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, "
            f"groups={self.groups}, {super().extra_repr()}"
        )

    @classmethod
    def from_dense(
        cls, conv: nn.Module, rank: Any = None, tol: float | None = None, **options: Any
    ):
        """Tucker layer initialised by the (truncated) HOSVD of ``conv.weight``.

        Parameters
        ----------
        conv : nn.Conv1d, nn.Conv2d or nn.Conv3d
            Matching the class's dimension (subclasses too); its bias is copied.
        rank : int or sequence of int, optional
            Explicit initial rank (an int applies to the adaptive modes). Default
            (neither ``rank`` nor ``tol``): half of every adaptive mode.
        tol : float, optional
            Relative truncation tolerance in ``[0, 1)`` for the adaptive modes (fixed
            modes keep full rank); the total relative error of the initial weight is
            at most ``tol``.
        **options
            ``min_rank``, ``max_rank``, ``adaptive_modes``, ``implementation``,
            ``offset``, ``zero_core``.

        Returns
        -------
        TuckerConv1d, TuckerConv2d or TuckerConv3d
            A new layer on the device and in the dtype of ``conv.weight``; at full
            rank it computes what ``conv`` computes.

        Raises
        ------
        TypeError
            If ``conv`` is not a convolution of the class's dimension, ``tol`` is not
            a real number, or a rank is neither an int nor a sequence of ints.
        ValueError
            If both ``rank`` and ``tol`` are given, ``tol`` lies outside ``[0, 1)``,
            or an option is invalid (see :class:`TuckerConv2d`).

        References
        ----------
        .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
           decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.
        .. [2] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
           "Geometry-aware training of factorized layers in tensor Tucker format",
           NeurIPS 2024.
        """
        return _from_dense(cls, conv, rank, tol, options)


class TuckerConv1d(_TuckerConvNd):
    """Conv1d with a Tucker weight (modes: out, in/groups, kernel). Same signature as
    :class:`torch.nn.Conv1d` plus the Tucker options of :class:`TuckerLinear`.

    Weight ``(C_out, C_in / groups, k)``; input ``(N, C_in, L)`` or ``(C_in, L)``,
    output ``(N, C_out, L_out)`` or ``(C_out, L_out)``; see :class:`TuckerConv2d`.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size, stride, padding, dilation : int or tuple of int
        As for :class:`torch.nn.Conv1d`; ``padding`` may also be ``'same'``
        (stride 1 only) or ``'valid'``.
    groups : int, default 1
    bias : bool, default True
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, default 'zeros'
    rank, min_rank, max_rank : int or sequence of int, optional
        Initial rank and rank bounds (3 modes), as for :class:`TuckerConv2d`.
    adaptive_modes : sequence of int, optional
        Default ``(0, 1)``: the channel modes adapt, the kernel modes keep full size.
    implementation : {'dense', 'factorized'}, default 'dense'
        As for :class:`TuckerConv2d`.
    device, dtype : optional
        Of the parameters.
    init_weight, offset : tensor of shape (C_out, C_in / groups, k), optional
        Dense weight whose HOSVD initialises the layer; frozen weight added to the
        Tucker weight (adapters).
    zero_core : bool, default False
        Start from the zero core (adapters: ``dW = 0``).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts, ``padding_mode`` or a
        string ``padding`` is unknown, ``padding='same'`` meets a stride, or a
        Tucker option is invalid (see :class:`TuckerConv2d`).
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000 (the
       initialisation).
    """

    spatial_dims = 1


class TuckerConv2d(_TuckerConvNd):
    """Conv2d with a Tucker weight (modes: out, in/groups, kh, kw). Same signature as
    :class:`torch.nn.Conv2d` plus ``rank``, ``min_rank``, ``max_rank``,
    ``adaptive_modes`` (default: the two channel modes) and ``implementation``.

    The weight ``W`` of shape ``(C_out, C_in / groups, kh, kw)`` is
    ``C ×_1 U_out ×_2 U_in ×_3 U_h ×_4 U_w`` with core ``C`` of shape
    ``(r_out, r_in, r_h, r_w)`` and orthonormal factors ``U`` of shape
    ``(n_i, r_i)``. Input ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``), output
    ``(N, C_out, H_out, W_out)`` with ``H_out = floor((H + 2 padding[0] -
    dilation[0] (kh - 1) - 1) / stride[0] + 1)`` (likewise ``W_out``), as for
    :class:`torch.nn.Conv2d`.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size, stride, padding, dilation : int or tuple of int
        As for :class:`torch.nn.Conv2d`; ``padding`` may also be ``'same'`` (stride
        1 only) or ``'valid'``.
    groups : int, default 1
        Blocked connections, as for ``nn.Conv2d``; every group shares the bases.
    bias : bool, default True
        Learn an additive bias of shape ``(C_out,)``.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, default 'zeros'
    rank : int or sequence of int, optional
        Initial multilinear rank ``(r_out, r_in, r_h, r_w)``. An int ``r`` applies
        to the adaptive modes (``min(r, n_i)``) while the fixed modes keep their full
        size; a sequence gives every mode, each in ``[1, n_i]``. Default:
        ``max(1, n_i // 2)`` on every adaptive mode. An adaptive rank above the
        product of the other ranks is lowered to it (it would only store zeros).
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the adaptive ranks during rank-adaptive training (an int applies
        to every mode; default 1 and ``n_i``). ``max_rank`` is clipped to ``n_i``
        and ``min_rank`` to ``max_rank``; fixed modes stay at their rank.
    adaptive_modes : sequence of int, optional
        The modes whose rank may change. Default ``(0, 1)``: the channel modes adapt,
        the kernel modes keep full size.
    implementation : {'dense', 'factorized'}, default 'dense'
        ``'dense'``: rebuild ``W`` and run one ``F.conv2d`` (TDLRT then steps with
        the dense gradient ``dL/dW``). ``'factorized'``: never form ``W``: a 1x1
        convolution with ``U_in``, a convolution with the core (kernel factors
        folded in) and a 1x1 convolution with ``U_out`` (TDLRT then takes the
        parallel BUG step from the core and factor gradients).
    device, dtype : optional
        Of the parameters (default: torch's defaults, or ``init_weight``'s dtype).
    init_weight : tensor of shape (C_out, C_in / groups, kh, kw), optional
        Dense weight whose truncated HOSVD at ``rank`` initialises the layer
        (default: a Kaiming-uniform draw, as ``nn.Conv2d``).
    offset : tensor of shape (C_out, C_in / groups, kh, kw), optional
        Frozen weight (a buffer, never trained) added to the Tucker weight: adapters
        ``W0 + Tucker(dW)`` (:func:`~tuckerflow.nn.add_tucker_adapters`).
    zero_core : bool, default False
        Start from the zero core: ``W = 0`` with orthonormal bases (adapters).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts; ``padding_mode`` or a
        string ``padding`` is unknown; ``padding='same'`` meets a stride;
        ``implementation`` is unknown; an entry of ``adaptive_modes`` is not a mode
        (``0 <= m < 4``); ``rank``, ``min_rank`` or ``max_rank`` has not one entry
        per mode; an int ``rank`` is below 1 or a mode rank lies outside
        ``[1, n_i]``; or a ``min_rank`` or ``max_rank`` entry of an adaptive mode is
        below 1.
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000 (the
       initialisation).

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerConv2d
    >>> layer = TuckerConv2d(8, 16, 3, padding=1, rank=4)
    >>> tuple(layer(torch.randn(2, 8, 10, 10)).shape), layer.rank
    ((2, 16, 10, 10), (4, 4, 3, 3))
    """

    spatial_dims = 2


class TuckerConv3d(_TuckerConvNd):
    """Conv3d with a Tucker weight (modes: out, in/groups, kd, kh, kw).

    Same signature as :class:`torch.nn.Conv3d` plus the Tucker options; weight
    ``(C_out, C_in / groups, kd, kh, kw)``, input ``(N, C_in, D, H, W)`` (or
    unbatched), output ``(N, C_out, D_out, H_out, W_out)``; see
    :class:`TuckerConv2d`.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size, stride, padding, dilation : int or tuple of int
        As for :class:`torch.nn.Conv3d`; ``padding`` may also be ``'same'``
        (stride 1 only) or ``'valid'``.
    groups : int, default 1
    bias : bool, default True
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, default 'zeros'
    rank, min_rank, max_rank : int or sequence of int, optional
        Initial rank and rank bounds (5 modes), as for :class:`TuckerConv2d`.
    adaptive_modes : sequence of int, optional
        Default ``(0, 1)``: the channel modes adapt, the kernel modes keep full size.
    implementation : {'dense', 'factorized'}, default 'dense'
        As for :class:`TuckerConv2d`.
    device, dtype : optional
        Of the parameters.
    init_weight, offset : tensor of shape (C_out, C_in / groups, kd, kh, kw), optional
        Dense weight whose HOSVD initialises the layer; frozen weight added to the
        Tucker weight (adapters).
    zero_core : bool, default False
        Start from the zero core (adapters: ``dW = 0``).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts, ``padding_mode`` or a
        string ``padding`` is unknown, ``padding='same'`` meets a stride, or a
        Tucker option is invalid (see :class:`TuckerConv2d`).
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000 (the
       initialisation).
    """

    spatial_dims = 3


DENSE_TO_TUCKER = {
    nn.Linear: TuckerLinear,
    nn.Conv1d: TuckerConv1d,
    nn.Conv2d: TuckerConv2d,
    nn.Conv3d: TuckerConv3d,
}


def _from_dense(cls, module, rank, tol, options, expected=None):
    """``cls`` initialised by the HOSVD of ``module.weight`` (an ``expected``
    instance: by default the dense type ``DENSE_TO_TUCKER`` maps to ``cls``)."""
    if expected is None:
        expected = next(d for d, tucker in DENSE_TO_TUCKER.items() if tucker is cls)
    if not isinstance(module, expected):
        raise TypeError(
            f"{cls.__name__}.from_dense needs a {expected.__name__}, "
            f"got {type(module).__name__}"
        )
    weight = module.weight.detach()
    rank = initial_rank(weight, rank, tol, options.get("adaptive_modes"))
    kwargs = dict(
        rank=rank,
        device=weight.device,
        dtype=weight.dtype,
        init_weight=weight,
        **options,
    )
    return build_like(cls, module, **kwargs)


def initial_rank(
    weight: torch.Tensor,
    rank: Any,
    tol: float | None,
    adaptive_modes: Sequence[int] | None,
) -> Any:
    """The initial rank of a layer built from ``weight`` (the rule of ``from_dense``).

    ``rank`` as given, or, with ``tol``, the ranks of the HOSVD of ``weight`` (in
    :func:`factorization_dtype`) at relative tolerance ``tol`` on the adaptive modes
    (default ``(0, 1)``); fixed modes keep full rank.

    Raises
    ------
    ValueError
        If both ``rank`` and ``tol`` are given.
    """
    if rank is not None and tol is not None:
        raise ValueError("give either rank or tol, not both")
    if tol is None:
        return rank
    adaptive = (0, 1) if adaptive_modes is None else tuple(adaptive_modes)
    weight = weight.detach().to(factorization_dtype(weight.dtype))
    with tf.use_backend("pytorch"):
        fixed = tuple(
            weight.shape[m] if m not in adaptive else 1 for m in range(weight.dim())
        )
        return tf.hosvd(weight, tol=tol, min_rank=fixed).rank


def build_like(cls: type[nn.Module], module: nn.Module, **kwargs: Any) -> nn.Module:
    """Construct ``cls`` with the shape hyper-parameters of a Linear/ConvNd/
    ConvTransposeNd ``module``.

    Works between dense and Tucker layers in either direction; the bias (if any) is
    copied, everything else comes from ``kwargs``.
    """
    bias = module.bias is not None
    if hasattr(module, "in_features"):
        layer = cls(module.in_features, module.out_features, bias, **kwargs)
    else:
        if getattr(module, "transposed", False):
            kwargs = {"output_padding": module.output_padding, **kwargs}
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=bias,
            padding_mode=module.padding_mode,
            **kwargs,
        )
    if bias:
        with torch.no_grad():
            layer.bias.copy_(module.bias)
    return layer
