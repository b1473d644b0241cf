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

from .convert import _parent, _select
from .layers import DENSE_TO_TUCKER, TuckerLayer, build_like

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

    Parameters
    ----------
    model : nn.Module
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
    min_rank, adaptive_modes, implementation
        Passed to the adapter layers.
    verbose : bool
        Print the trainable-parameter count (like PEFT).

    Returns
    -------
    nn.Module
        ``model`` itself, modified.

    Raises
    ------
    TypeError
        If an entry of ``target_modules`` is neither a str nor a type.
    ValueError
        If ``target_modules`` is empty, a name in it matches no module (usually a
        typo; the message lists the module names), or an entry selects no Linear/Conv
        module (neither the module it matches nor anything inside it). The model is
        left untouched.

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
    matched = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in DENSE_TO_TUCKER and name in selected
    ]
    useless = [
        entry
        for entry in targets
        if not any(entry in selected[name] for name, _ in matched)
    ]
    if useless:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            f"target_modules entries {useless} select no Linear/Conv module (neither "
            f"the modules they match nor anything inside them); module types in the "
            f"model: {kinds}"
        )
    # build every adapter before touching the model: a rejected option changes nothing
    adapters = []
    for name, module in matched:
        cls = DENSE_TO_TUCKER[type(module)]
        weight = module.weight.detach()
        options = dict(
            rank=rank,
            min_rank=min_rank,
            max_rank=max_rank,
            adaptive_modes=adaptive_modes,
            implementation=implementation,
            device=weight.device,
            dtype=weight.dtype,
            offset=weight,
            zero_core=True,
        )
        adapters.append((name, build_like(cls, module, **options)))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, adapter in adapters:
        if adapter.bias is not None:
            adapter.bias.requires_grad_(False)
        parent, child = _parent(model, name)
        setattr(parent, child, adapter)
    if verbose:
        trainable, total = trainable_parameters(model)
        print(
            f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (frozen adapter offsets excluded from
    neither: they are buffers, not parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into a plain ``nn.Linear``/``nn.ConvNd`` with ``W0 + dW``."""
    dense_of = {tucker: dense for dense, tucker in DENSE_TO_TUCKER.items()}
    adapters = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, TuckerLayer) and module.offset is not None
    ]
    for name, adapter in adapters:
        cls = dense_of[type(adapter)]
        weight = adapter.weight.detach()
        factory = {"device": weight.device, "dtype": weight.dtype}
        merged = build_like(cls, adapter, **factory)
        with torch.no_grad():
            merged.weight.copy_(weight)
        parent, child = _parent(model, name)
        setattr(parent, child, merged)
    return model
