"""Which Tucker layer replaces which dense module: one ordered registry.

:func:`~tuckerflow.nn.tuckerize` and :func:`~tuckerflow.nn.add_tucker_adapters`
convert a module with the first entry whose dense type it is an instance of
(``isinstance``, so subclasses such as the ``NonDynamicallyQuantizableLinear``
``out_proj`` of ``nn.MultiheadAttention`` are found). Entries are kept most specific
first: a type is registered before every registered base class of it.

A subclass that overrides ``forward``, has extra parameters, a parametrized weight
(``torch.nn.utils.parametrize``: weight or spectral normalisation) or is a lazy
module not run yet would lose that behaviour as the base class's Tucker layer: it is
left dense, and the conversion lists it in a warning together with every other
Linear- or Conv-like module it leaves dense (``nn.Bilinear``, a transformers
``Conv1D``, ...). Registering the exact subclass (:func:`register_tucker_layer`)
converts it after all.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from .attention import TuckerMultiheadAttention
from .layers import (
    TuckerConv1d,
    TuckerConv2d,
    TuckerConv3d,
    TuckerLayer,
    TuckerLinear,
)
from .transposed import (
    TuckerConvTranspose1d,
    TuckerConvTranspose2d,
    TuckerConvTranspose3d,
)

__all__ = ["register_tucker_layer", "registered_tucker_layers"]

# (dense type, Tucker class), most specific first; the first isinstance match wins
_REGISTRY: list[tuple[type[nn.Module], type[nn.Module]]] = [
    (nn.MultiheadAttention, TuckerMultiheadAttention),
    (nn.ConvTranspose1d, TuckerConvTranspose1d),
    (nn.ConvTranspose2d, TuckerConvTranspose2d),
    (nn.ConvTranspose3d, TuckerConvTranspose3d),
    (nn.Conv1d, TuckerConv1d),
    (nn.Conv2d, TuckerConv2d),
    (nn.Conv3d, TuckerConv3d),
    (nn.Linear, TuckerLinear),
]

# the parameters a built-in dense type holds itself; a subclass with others loses them
_OWN_PARAMETERS: tuple[tuple[type[nn.Module], frozenset[str]], ...] = (
    (
        nn.MultiheadAttention,
        frozenset(
            (
                "in_proj_weight",
                "in_proj_bias",
                "q_proj_weight",
                "k_proj_weight",
                "v_proj_weight",
                "bias_k",
                "bias_v",
            )
        ),
    ),
    (nn.Linear, frozenset(("weight", "bias"))),
    (_ConvNd, frozenset(("weight", "bias"))),
)

_BUILT_IN = frozenset(dense for dense, _ in _REGISTRY)

_LINEAR_LIKE_TYPES = (nn.Linear, nn.Bilinear, _ConvNd, nn.MultiheadAttention)
_LINEAR_LIKE_NAME = re.compile(r"linear|conv", re.IGNORECASE)


def register_tucker_layer(
    dense_type: type[nn.Module], tucker_cls: type[nn.Module]
) -> None:
    """Convert instances of ``dense_type`` (and its subclasses) into ``tucker_cls``.

    The entry goes before every registered base class of ``dense_type`` (most
    specific first; the first ``isinstance`` match wins) and replaces an earlier
    entry for the same type. An exact registration also converts a subclass that
    overrides ``forward``, which the entry of its base class leaves dense.

    Parameters
    ----------
    dense_type : type
        An ``nn.Module`` subclass, e.g. a custom ``nn.Linear`` subclass.
    tucker_cls : type
        A :class:`~tuckerflow.nn.TuckerLayer` subclass with a classmethod
        ``from_dense(module, rank=None, tol=None, **options)`` (options:
        ``min_rank``, ``max_rank``, ``adaptive_modes``, ``implementation``) used by
        :func:`~tuckerflow.nn.tuckerize`. For
        :func:`~tuckerflow.nn.add_tucker_adapters` and
        :func:`~tuckerflow.nn.merge_adapters` its constructor must take the dense
        layer's shape arguments like the built-in layers (``in_features,
        out_features, bias`` or the ``nn.ConvNd`` signature) plus ``rank``,
        ``offset`` and ``zero_core``.

    Raises
    ------
    TypeError
        If ``dense_type`` is not an ``nn.Module`` subclass, or ``tucker_cls`` is not
        a ``TuckerLayer`` subclass with a ``from_dense`` classmethod.

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import TuckerLinear, register_tucker_layer
    >>> class ScaledLinear(nn.Linear):
    ...     def forward(self, x):
    ...         return 2 * super().forward(x)
    >>> register_tucker_layer(ScaledLinear, TuckerLinear)  # doctest: +SKIP
    """
    if not (isinstance(dense_type, type) and issubclass(dense_type, nn.Module)):
        raise TypeError(f"dense_type must be an nn.Module class, got {dense_type!r}")
    if not (
        isinstance(tucker_cls, type)
        and issubclass(tucker_cls, (TuckerLayer, TuckerMultiheadAttention))
        and callable(getattr(tucker_cls, "from_dense", None))
    ):
        raise TypeError(
            "tucker_cls must be a TuckerLayer subclass with a from_dense classmethod, "
            f"got {tucker_cls!r}"
        )
    entries = [entry for entry in _REGISTRY if entry[0] is not dense_type]
    position = next(
        (i for i, (dense, _) in enumerate(entries) if issubclass(dense_type, dense)),
        len(entries),
    )
    entries.insert(position, (dense_type, tucker_cls))
    _REGISTRY[:] = entries


def registered_tucker_layers() -> list[tuple[type[nn.Module], type[nn.Module]]]:
    """The registry in matching order.

    Returns
    -------
    list of (type, type)
        ``(dense type, Tucker class)`` pairs, most specific first (a copy).
    """
    return list(_REGISTRY)


def is_tucker(module: nn.Module) -> bool:
    """Whether ``module`` is already a Tucker module (never converted again)."""
    return isinstance(module, (TuckerLayer, TuckerMultiheadAttention))


def dense_type_of(tucker_cls: type[nn.Module]) -> type[nn.Module] | None:
    """The dense type a Tucker class was registered for (first entry), or None."""
    return next((dense for dense, tucker in _REGISTRY if tucker is tucker_cls), None)


def dense_weight(module: nn.Module) -> Any:
    """The dense weight a conversion of ``module`` factorizes."""
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_weight
    return module.weight


def main_tucker_layer(built: nn.Module) -> TuckerLayer:
    """The Tucker layer that replaces :func:`dense_weight` in a converted module."""
    if isinstance(built, TuckerMultiheadAttention):
        return built.in_proj
    return built


def linear_like(module: nn.Module) -> bool:
    """A module that computes a linear map of its input with a weight of its own:
    ``nn.Linear``, ``nn.Bilinear``, any convolution, ``nn.MultiheadAttention``, or a
    class named like one (``*Linear*``, ``*Conv*``) with a weight parameter of 2 or
    more dimensions (e.g. transformers' ``Conv1D``). Tucker modules are not."""
    if is_tucker(module):
        return False
    if isinstance(module, _LINEAR_LIKE_TYPES):
        return True
    weight = module._parameters.get("weight")
    return (
        _LINEAR_LIKE_NAME.search(type(module).__name__) is not None
        and isinstance(weight, nn.Parameter)
        and not is_lazy(weight)
        and weight.dim() >= 2
    )


def lookup(module: nn.Module) -> tuple[type[nn.Module] | None, str | None]:
    """The Tucker class that converts ``module``, or why it stays dense.

    Returns
    -------
    (type or None, str or None)
        ``(tucker_cls, None)`` if a registered entry converts it; ``(None, reason)``
        for a Linear- or Conv-like module that stays dense; ``(None, None)`` for
        anything else (and for Tucker modules).
    """
    if is_tucker(module):
        return None, None
    for dense_type, tucker_cls in _REGISTRY:
        if isinstance(module, dense_type):
            reason = _unsupported(module, dense_type)
            return (None, reason) if reason else (tucker_cls, None)
    if linear_like(module):
        return None, f"no Tucker layer is registered for {type(module).__name__}"
    return None, None


def _unsupported(module: nn.Module, dense_type: type[nn.Module]) -> str | None:
    """Why the registered conversion of ``module`` would change what it computes."""
    name = type(module).__name__
    if parametrize.is_parametrized(module):
        return (
            "its weight is parametrized (torch.nn.utils.parametrize, e.g. weight or "
            "spectral normalisation), which the Tucker layer would drop"
        )
    for parameter in module._parameters.values():
        if parameter is not None and is_lazy(parameter):
            return "a lazy module not initialized yet: run one forward pass first"
    if type(module) is not dense_type and type(module).forward is not (
        dense_type.forward
    ):
        return (
            f"{name} subclasses {dense_type.__name__} and overrides forward(); "
            f"as a Tucker {dense_type.__name__} its own behaviour would be lost"
        )
    own = next(
        (names for base, names in _OWN_PARAMETERS if issubclass(dense_type, base)),
        None,
    )
    if own is not None and dense_type in _BUILT_IN:  # a user's entry knows its type
        extra = sorted(
            key
            for key, value in module._parameters.items()
            if value is not None and key not in own
        )
        if extra:
            return (
                f"{name} has parameters {extra} that the Tucker layer would drop "
                "(torch.nn.utils.weight_norm?)"
            )
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        return (
            "separate query/key/value weights (kdim or vdim differs from embed_dim); "
            "only the packed in_proj_weight is supported (its out_proj is converted)"
        )
    if isinstance(module, (nn.Linear, _ConvNd)) and not isinstance(
        module._parameters.get("weight"), nn.Parameter
    ):
        return f"{name} has no weight parameter"
    return None
