"""Shared construction helpers of the Tucker layers outside :mod:`.layers`.

:func:`initial_rank` is the rank rule of ``from_dense`` (an explicit rank, or the
HOSVD ranks at a tolerance on the adaptive modes); :func:`build_like` constructs a
layer with the hyper-parameters of another one, transposed convolutions included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import tuckerflow as tf

from . import layers


def initial_rank(
    weight: torch.Tensor,
    rank: Any,
    tol: float | None,
    adaptive_modes: Sequence[int] | None,
) -> Any:
    """The initial rank of a layer built from ``weight``.

    ``rank`` as given, or, with ``tol``, the ranks of the HOSVD of ``weight`` at
    relative tolerance ``tol`` on the adaptive modes (fixed modes keep full rank),
    the rule of :meth:`TuckerLinear.from_dense`.
    """
    if rank is not None and tol is not None:
        raise ValueError("give either rank or tol, not both")
    if tol is None:
        return rank
    adaptive = (0, 1) if adaptive_modes is None else tuple(adaptive_modes)
    weight = weight.detach().to(layers.factorization_dtype(weight.dtype))
    with tf.use_backend("pytorch"):
        fixed = tuple(
            weight.shape[m] if m not in adaptive else 1 for m in range(weight.dim())
        )
        return tf.hosvd(weight, tol=tol, min_rank=fixed).rank


def is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` is a transposed convolution (dense or Tucker)."""
    return bool(getattr(module, "transposed", False))


def build_like(cls: type[nn.Module], module: nn.Module, **kwargs: Any) -> nn.Module:
    """Construct ``cls`` with the shape hyper-parameters of ``module``.

    :func:`tuckerflow.nn.layers.build_like` extended to transposed convolutions
    (``output_padding``; the constructor order of ``nn.ConvTransposeNd``). Works
    between dense and Tucker layers in either direction; the bias (if any) is copied
    into the new layer's own parameter.
    """
    if not is_transposed(module):
        return layers.build_like(cls, module, **kwargs)
    bias = module.bias is not None
    layer = cls(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        output_padding=module.output_padding,
        groups=module.groups,
        bias=bias,
        dilation=module.dilation,
        padding_mode=module.padding_mode,
        **kwargs,
    )
    if bias:
        with torch.no_grad():
            layer.bias.copy_(module.bias)
    return layer
