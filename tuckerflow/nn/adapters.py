"""LoRA-style fine-tuning with Tucker adapters: ``W = W0 (frozen) + Tucker(dW)``.

The update ``dW`` starts at zero (zero core, orthonormal bases) and is trained
rank-adaptively with :class:`~tuckerflow.nn.TDLRT`, which needs no inverse of the core
and therefore starts from the zero core without trouble. Convolution adapters keep the
kernel's tensor structure (LoRA flattens it into a matrix).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from .attention import TuckerMultiheadAttention
from .convert import (
    _check_ties,
    _install,
    _left_dense_warning,
    _plan,
    _select,
    _unique_modules,
    stored_parameter_count,
)
from .layers import TuckerLayer, build_like
from .registry import dense_type_of

__all__ = ["add_tucker_adapters", "merge_adapters", "trainable_parameters"]


def add_tucker_adapters(
    model: nn.Module,
    target_modules: Iterable[Any],
    *,
    rank: Any = 4,
    min_rank: Any = 1,
    max_rank: Any = None,
    adaptive_modes: Any = None,
    implementation: str = "dense",
    verbose: bool = True,
) -> nn.Module:
    """Wrap the targeted Linear/Conv modules as ``W0 + Tucker(dW)`` and freeze the rest.

    A targeted module is adapted by the first registry entry it is an instance of
    (:func:`~tuckerflow.nn.registered_tucker_layers`): ``nn.Linear`` and its
    subclasses, ``nn.ConvNd``, ``nn.ConvTransposeNd``, and ``nn.MultiheadAttention``,
    whose packed ``in_proj_weight`` ``(3 E, E)`` gets a Tucker update through
    :class:`~tuckerflow.nn.TuckerMultiheadAttention` while its ``out_proj`` is
    adapted as the Linear it is (both when a target names the attention module, as
    PEFT does). Targeted modules that cannot be adapted (see
    :func:`~tuckerflow.nn.tuckerize`) are listed in a warning. A module used under
    several names gets one adapter under every name; modules sharing a
    ``Parameter`` with another module are refused.

    Parameters
    ----------
    model : nn.Module
        Modified in place: targeted modules replaced, every other parameter frozen.
    target_modules : iterable of str or type
        Names (exact, glob, or dotted suffix such as ``"query"``) or types of the
        modules to adapt; every other parameter is frozen. An entry that matches a
        container adapts every Linear/Conv module inside it (``"encoder.layer.0"``
        adapts all of that block's layers), as ``skip`` does in
        :func:`~tuckerflow.nn.tuckerize`.
    rank : int or sequence, default 4
        Initial adapter rank (an int applies to the adaptive modes).
    max_rank : int or sequence, optional
        Largest adapter rank; default ``2 * rank`` for an int ``rank``. An update
        ``dW`` that starts at zero has no scale of its own, so a relative tolerance
        alone would let the first steps keep nearly every direction.
    min_rank : int or sequence, default 1
        Smallest adapter rank during rank-adaptive training.
    adaptive_modes : sequence of int, optional
        Modes whose rank adapts; default ``(0, 1)`` (the channel modes).
    implementation : {'dense', 'factorized'}, default 'dense'
        Forward of the adapter layers (see :class:`~tuckerflow.nn.TuckerLinear`).
    verbose : bool, default True
        Print the trainable-parameter count (like PEFT).

    Returns
    -------
    nn.Module
        ``model`` itself, modified.

    Raises
    ------
    TypeError
        If an entry of ``target_modules`` is neither a str nor a type, or ``rank``,
        ``min_rank`` or ``max_rank`` is neither an int nor a sequence of ints.
    ValueError
        If ``target_modules`` is empty, a name in it matches no module (usually a
        typo; the message lists the module names), an entry selects no Linear/Conv
        module (neither the module it matches nor anything inside it), or a module
        to adapt shares a ``Parameter`` with another module (tied weights would be
        untied; the message names them), the model holds a lazy module not
        initialized yet (it cannot be frozen), or a Tucker option is invalid
        (``implementation``, ranks: see :class:`~tuckerflow.nn.TuckerLinear`). The
        model is left untouched.

    Warns
    -----
    UserWarning
        Listing the targeted Linear/Conv-like modules that get no adapter, with the
        reason.

    References
    ----------
    .. [1] E. J. Hu, Y. Shen, P. Wallis, Z. Allen-Zhu, Y. Li, S. Wang, L. Wang,
       W. Chen, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    .. [2] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """
    if max_rank is None and isinstance(rank, int) and not isinstance(rank, bool):
        max_rank = 2 * rank
    targets = tuple(target_modules)
    if not targets:
        raise ValueError("target_modules is empty")
    selected = _select(model, targets, "target_modules")
    groups = _unique_modules(model)
    matched, left = _plan(groups, lambda names: any(n in selected for n in names))
    useless = [
        entry
        for entry in targets
        if not any(
            entry in selected.get(name, ()) for names, _, _ in matched for name in names
        )
    ]
    if useless:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        reasons = "".join(f"\n  {names[0]} ({reason})" for names, reason in left)
        raise ValueError(
            f"target_modules entries {useless} select no Linear/Conv module (neither "
            f"the modules they match nor anything inside them); module types in the "
            f"model: {kinds}"
            + (f"; selected but not convertible:{reasons}" if reasons else "")
        )
    _check_ties(groups, matched, "add_tucker_adapters", _TIE_FIX_ADAPTERS)
    lazy = [
        names[0]
        for module, names in groups
        if any(is_lazy(p) for p in module._parameters.values() if p is not None)
    ]
    if lazy:
        raise ValueError(
            f"add_tucker_adapters freezes every parameter, but {lazy} are lazy "
            "modules not initialized yet: run one forward pass first"
        )
    tucker = dict(
        rank=rank,
        min_rank=min_rank,
        max_rank=max_rank,
        adaptive_modes=adaptive_modes,
        implementation=implementation,
    )
    # build every adapter before touching the model: a rejected option changes nothing
    adapters = []
    for names, module, cls in matched:
        if issubclass(cls, TuckerMultiheadAttention):
            adapter = cls.from_dense(module, adapter=True, **tucker)
            adapter.out_proj = module.out_proj  # adapted (or not) on its own
        else:
            weight = module.weight.detach()
            adapter = build_like(
                cls,
                module,
                device=weight.device,
                dtype=weight.dtype,
                offset=weight,
                zero_core=True,
                **tucker,
            )
        adapters.append((names, adapter))
    for names, adapter in adapters:  # parents before children
        _install(model, names, adapter)
    # only the new Tucker updates train: base weights, biases, everything else frozen
    trainable = {
        id(parameter)
        for _, adapter in adapters
        for layer in adapter.modules()
        if isinstance(layer, TuckerLayer) and layer.offset is not None
        for parameter in (layer.core, *layer.factors)
    }
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    _left_dense_warning(
        "add_tucker_adapters",
        left,
        "These targets get no adapter. Register a Tucker layer for a type with "
        "tuckerflow.nn.register_tucker_layer(DenseType, TuckerType), or leave them "
        "out of target_modules.",
    )
    if verbose:
        trainable, total = trainable_parameters(model)
        print(
            f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )
    return model


_TIE_FIX_ADAPTERS = (
    "Leave {names!r} out of target_modules, or untie them first (give each module "
    "its own nn.Parameter). One module used under several names is no problem: one "
    "adapter replaces it under every name."
)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (frozen adapter offsets excluded from
    neither: they are buffers, not parameters).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    (int, int)
        Elements of the parameters with ``requires_grad``, and of all parameters
        (each shared parameter once; the TDLRT optimizer's zero ``weight_delta``
        gradient carriers are not weights and are not counted).
    """
    trainable = stored_parameter_count(model, trainable_only=True)
    total = stored_parameter_count(model)
    return trainable, total


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into a plain dense module with ``W0 + dW``.

    A :class:`TuckerLinear`/``TuckerConvNd``/``TuckerConvTransposeNd`` adapter
    becomes the registered dense type (``nn.Linear``, ...; a subclass such as
    ``NonDynamicallyQuantizableLinear`` comes back as its registered base class,
    which computes the same), a :class:`TuckerMultiheadAttention` adapter an
    ``nn.MultiheadAttention``. A module used under several names is replaced under
    every name.

    Parameters
    ----------
    model : nn.Module
        Modified in place.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError
        If an adapter's class was never registered
        (:func:`~tuckerflow.nn.register_tucker_layer`), so its dense type is
        unknown.
    """
    for module, names in _unique_modules(model):
        if (
            isinstance(module, TuckerMultiheadAttention)
            and module.in_proj.offset is not None
        ):
            _install(model, [n for n in names if n], module.to_dense())
    merged = []
    for module, names in _unique_modules(model):
        if not (isinstance(module, TuckerLayer) and module.offset is not None):
            continue
        cls = dense_type_of(type(module))
        if cls is None:
            raise TypeError(
                f"merge_adapters: {type(module).__name__} is not registered, so its "
                "dense type is unknown; register it with register_tucker_layer"
            )
        weight = module.weight.detach()
        factory = {"device": weight.device, "dtype": weight.dtype}
        dense = build_like(cls, module, **factory)
        with torch.no_grad():
            dense.weight.copy_(weight)
        merged.append(([n for n in names if n], dense))
    for names, dense in merged:
        _install(model, names, dense)
    return model
