"""Transposed convolutions whose weight is an orthonormal Tucker tensor.

``nn.ConvTransposeNd`` stores its weight as ``(in_channels, out_channels / groups,
*kernel)``; the Tucker layers keep that layout, so the modes are: input channels
(all groups), output channels per group, then the kernel dimensions. By default the
two channel modes adapt and the kernel modes keep full rank, as for
:class:`~tuckerflow.nn.TuckerConv2d`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _ntuple

from .layers import TuckerLayer, _from_dense, autocast_off

__all__ = ["TuckerConvTranspose1d", "TuckerConvTranspose2d", "TuckerConvTranspose3d"]

_DENSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _TuckerConvTransposeNd(TuckerLayer):
    """Shared implementation of :class:`TuckerConvTranspose1d`, ``2d`` and ``3d``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, output_padding, dilation : int or tuple of int
        As for ``nn.ConvTransposeNd`` (integer padding only, as there).
    groups : int, default 1
    bias : bool, default True
    padding_mode : {'zeros'}
        The only mode ``nn.ConvTransposeNd`` supports.
    rank : int or sequence of int, optional
        Initial Tucker rank of the weight ``(in, out / groups, *kernel)``; an int
        applies to the adaptive modes. Default: half of every adaptive mode.
    min_rank, max_rank : int or sequence of int, optional
        Bounds for rank-adaptive training.
    adaptive_modes : sequence of int, optional
        Default ``(0, 1)``: the two channel modes adapt, the kernel modes keep full
        size.
    implementation : {'dense', 'factorized'}
        ``'dense'``: rebuild the weight and run one ``F.conv_transposeNd``.
        ``'factorized'``: never form the weight: a grouped 1x1 convolution with the
        input basis, a transposed convolution with the core (kernel factors folded
        in), and a grouped 1x1 convolution with the output basis.
    device, dtype : optional
    init_weight : tensor, optional
        Dense weight whose (truncated) HOSVD initialises the layer.
    offset : tensor, optional
        Frozen weight added to the Tucker weight (adapters).
    zero_core : bool, default False
        Start from the zero core (adapters: ``dW = 0``).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts, the padding is not made
        of ints, ``padding_mode`` is not ``'zeros'``, an ``output_padding`` is not
        smaller than its stride or dilation, or a Tucker option is invalid (see
        :class:`TuckerConvTranspose2d`).
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """

    spatial_dims: int
    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
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
        if padding_mode != "zeros":
            raise ValueError(
                "transposed convolutions support only padding_mode='zeros' (as "
                f"nn.ConvTranspose{self.spatial_dims}d), got {padding_mode!r}"
            )
        if isinstance(padding, str):
            raise ValueError(
                f"transposed convolutions take integer padding, got {padding!r}"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = ntuple(kernel_size)
        self.stride = ntuple(stride)
        self.padding = ntuple(padding)
        self.output_padding = ntuple(output_padding)
        self.dilation = ntuple(dilation)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if not 0 <= op < max(s, d):
                raise ValueError(
                    f"output_padding {self.output_padding} must be smaller than the "
                    f"stride {self.stride} or the dilation {self.dilation} in every "
                    "dimension"
                )
        factory = {"device": device, "dtype": dtype}
        shape = (in_channels, out_channels // groups, *self.kernel_size)
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
        # nn.ConvTransposeNd's fan-in: weight.size(1) * kernel volume
        fan_in = (out_channels // groups) * math.prod(self.kernel_size)
        self._setup_bias_and_offset(bias, out_channels, fan_in, offset, factory)

    def _output_padding(
        self, x: torch.Tensor, output_size: Sequence[int] | None
    ) -> tuple[int, ...]:
        """``output_padding``, or the one that gives ``output_size`` (the rule of
        ``nn.ConvTransposeNd``)."""
        if output_size is None:
            return self.output_padding
        dims = self.spatial_dims
        leading = 2 if x.dim() == dims + 2 else 1
        output_size = list(output_size)
        if len(output_size) == leading + dims:
            output_size = output_size[leading:]
        if len(output_size) != dims:
            raise ValueError(
                f"ConvTranspose{dims}D: for {x.dim()}D input, output_size must have "
                f"{dims} or {leading + dims} elements (got {len(output_size)})"
            )
        smallest = [
            (x.size(d + leading) - 1) * self.stride[d]
            - 2 * self.padding[d]
            + self.dilation[d] * (self.kernel_size[d] - 1)
            + 1
            for d in range(dims)
        ]
        largest = [low + s - 1 for low, s in zip(smallest, self.stride)]
        for size, low, high in zip(output_size, smallest, largest):
            if not low <= size <= high:
                raise ValueError(
                    f"requested an output size of {output_size}, but valid sizes "
                    f"range from {smallest} to {largest} (for an input of "
                    f"{tuple(x.shape[leading:])})"
                )
        return tuple(size - low for size, low in zip(output_size, smallest))

    def forward(
        self, x: torch.Tensor, output_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Transposed convolution of ``x``.

        Parameters
        ----------
        x : tensor of shape ``(batch, in_channels, *spatial)``
            Or unbatched ``(in_channels, *spatial)``.
        output_size : sequence of int, optional
            Spatial output size (or the full output shape); chooses the output
            padding, as for ``nn.ConvTransposeNd``.

        Returns
        -------
        tensor of shape ``(batch, out_channels, *spatial_out)``
            Unbatched ``(out_channels, *spatial_out)`` for an unbatched input;
            ``spatial_out[d] = (spatial[d] - 1) stride[d] - 2 padding[d] +
            dilation[d] (kernel_size[d] - 1) + output_padding[d] + 1``, as for
            ``nn.ConvTransposeNd``.

        Raises
        ------
        ValueError
            If ``output_size`` has the wrong number of entries or is not reachable
            from the input size.
        RuntimeError
            Inside a ``DistributedDataParallel`` that also reduces this
            TDLRT-trained layer's core and factors (the model was wrapped without
            :func:`~tuckerflow.nn.prepare_ddp`).
        """
        output_padding = self._output_padding(x, output_size)
        if self.implementation == "dense":
            return _CONV_TRANSPOSE[self.spatial_dims](
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                output_padding,
                self.groups,
                self.dilation,
            )
        return self._factorized_forward(x, output_padding)

    def _factorized_forward(
        self, x: torch.Tensor, output_padding: tuple[int, ...]
    ) -> torch.Tensor:
        self._check_data_parallel()
        dims, groups = self.spatial_dims, self.groups
        ones = (1,) * dims
        conv = _CONV[dims]
        in_basis, out_basis = self.factors[0], self.factors[1]
        rank_in = in_basis.shape[1]
        # 1. input basis: group g projects its own input channels (rows of U_in)
        in_weight = (
            in_basis.reshape(groups, self.in_channels // groups, rank_in)
            .transpose(1, 2)
            .reshape(groups * rank_in, self.in_channels // groups, *ones)
        )
        hidden = conv(x, in_weight, None, 1, 0, 1, groups)
        # 2. the core with the kernel factors folded in, the same in every group
        kernel = self.core
        with autocast_off(kernel.device.type):  # cast by the convolution under autocast
            for mode in range(2, 2 + dims):
                kernel = torch.movedim(
                    torch.tensordot(self.factors[mode], kernel, dims=([1], [mode])),
                    0,
                    mode,
                )
        kernel = kernel.repeat(groups, *([1] * (1 + dims)))
        hidden = _CONV_TRANSPOSE[dims](
            hidden,
            kernel,
            None,
            self.stride,
            self.padding,
            output_padding,
            groups,
            self.dilation,
        )
        # 3. output basis: U_out in every group (out / groups rows each)
        out_weight = out_basis.repeat(groups, 1).reshape(
            self.out_channels, out_basis.shape[1], *ones
        )
        y = conv(hidden, out_weight, self.bias, 1, 0, 1, groups)
        if self.offset is not None:
            y = y + _CONV_TRANSPOSE[dims](
                x,
                self.offset,
                None,
                self.stride,
                self.padding,
                output_padding,
                groups,
                self.dilation,
            )
        return y

    def extra_repr(self) -> str:
        """The constructor options shown by ``repr(layer)``.

        Returns
        -------
        str
            Channels, kernel, stride, padding, output padding, dilation and groups,
            then the Tucker options (:meth:`TuckerLayer.extra_repr`).
        """
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, "
            f"output_padding={self.output_padding}, dilation={self.dilation}, "
            f"groups={self.groups}, {super().extra_repr()}"
        )

    @classmethod
    def from_dense(
        cls,
        conv: nn.Module,
        rank: Any = None,
        tol: float | None = None,
        **options: Any,
    ) -> _TuckerConvTransposeNd:
        """Tucker layer initialised by the (truncated) HOSVD of ``conv.weight``.

        Parameters
        ----------
        conv : nn.ConvTranspose1d, nn.ConvTranspose2d or nn.ConvTranspose3d
            Matching the class's dimension; subclasses are accepted.
        rank : int or sequence of int, optional
            Explicit initial rank (an int applies to the adaptive modes).
        tol : float, optional
            Relative truncation tolerance for the adaptive modes (kernel modes keep
            full rank); the relative error of the initial weight is at most ``tol``.
        **options
            ``min_rank``, ``max_rank``, ``adaptive_modes``, ``implementation``,
            ``offset``, ``zero_core``.

        Returns
        -------
        TuckerConvTranspose1d, TuckerConvTranspose2d or TuckerConvTranspose3d
            A new layer (the bias is copied); with full ranks it computes what
            ``conv`` computes.

        Raises
        ------
        TypeError
            If ``conv`` is not a transposed convolution of the class's dimension,
            ``tol`` is not a real number, or a rank is neither an int nor a sequence
            of ints.
        ValueError
            If both ``rank`` and ``tol`` are given, ``tol`` lies outside ``[0, 1)``,
            or an option is invalid (see :class:`TuckerConvTranspose2d`).

        References
        ----------
        .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular
           value decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.
        .. [2] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
           "Geometry-aware training of factorized layers in tensor Tucker format",
           NeurIPS 2024.
        """
        return _from_dense(cls, conv, rank, tol, options, _DENSE[cls.spatial_dims])


class TuckerConvTranspose1d(_TuckerConvTransposeNd):
    """``nn.ConvTranspose1d`` with a Tucker weight (modes: in, out/groups, kernel).

    Same signature as :class:`torch.nn.ConvTranspose1d` plus the Tucker options
    (``rank``, ``min_rank``, ``max_rank``, ``adaptive_modes``, ``implementation``);
    see :class:`TuckerConvTranspose2d`. At full rank it computes exactly what the
    dense layer with the same weight computes (groups, stride, padding,
    ``output_padding``, dilation and ``forward(x, output_size)`` included).
    Input ``(N, C_in, L)`` or ``(C_in, L)``, output ``(N, C_out, L_out)`` or
    ``(C_out, L_out)``; weight ``(C_in, C_out / groups, k)``.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size, stride, padding, output_padding, dilation : int or tuple of int
        As for :class:`torch.nn.ConvTranspose1d` (integer padding only).
    groups : int, default 1
    bias : bool, default True
    padding_mode : {'zeros'}
        The only mode ``nn.ConvTranspose1d`` supports.
    rank, min_rank, max_rank : int or sequence of int, optional
        Initial rank and rank bounds, as for :class:`TuckerConvTranspose2d` (3
        modes).
    adaptive_modes : sequence of int, optional
        Default ``(0, 1)``: the channel modes adapt, the kernel modes keep full size.
    implementation : {'dense', 'factorized'}, default 'dense'
    device, dtype : optional
        Of the parameters.
    init_weight, offset : tensor of shape (C_in, C_out / groups, k), optional
        Dense weight to initialise from by its HOSVD; frozen weight added to the
        Tucker weight (adapters).
    zero_core : bool, default False
        Start from the zero core (adapters: ``dW = 0``).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts, the padding is not made
        of ints, ``padding_mode`` is not ``'zeros'``, an ``output_padding`` is not
        smaller than its stride or dilation, or a Tucker option is invalid (see
        :class:`TuckerConvTranspose2d`).
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """

    spatial_dims = 1


class TuckerConvTranspose2d(_TuckerConvTransposeNd):
    """``nn.ConvTranspose2d`` with a Tucker weight (modes: in, out/groups, kh, kw).

    The weight ``W = C ×_1 U_in ×_2 U_out ×_3 U_h ×_4 U_w`` has the dense layer's
    layout ``(in_channels, out_channels / groups, kh, kw)``; by default the two
    channel modes adapt and the kernel modes keep full size. Trained by
    :class:`~tuckerflow.nn.TDLRT` like the other Tucker layers (Zangrando et al.
    2024); :func:`~tuckerflow.nn.tuckerize` converts ``nn.ConvTranspose2d`` modules
    (UNet decoders) into it.

    Shapes: input ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``), output
    ``(N, C_out, H_out, W_out)`` with ``H_out = (H - 1) stride[0] - 2 padding[0] +
    dilation[0] (kh - 1) + output_padding[0] + 1`` (likewise ``W_out``), as for
    ``nn.ConvTranspose2d``.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size, stride, padding, output_padding, dilation : int or tuple of int
        As for :class:`torch.nn.ConvTranspose2d` (integer padding only).
    groups : int, default 1
    bias : bool, default True
    padding_mode : {'zeros'}
        The only mode ``nn.ConvTranspose2d`` supports.
    rank : int or sequence of int, optional
        Initial multilinear rank ``(r_in, r_out, r_h, r_w)`` of the weight. An int
        ``r`` applies to the adaptive modes (``min(r, n_i)``) while the fixed modes
        keep their full size; a sequence gives every mode, each in ``[1, n_i]``.
        Default: ``max(1, n_i // 2)`` on every adaptive mode. An adaptive rank above
        the product of the other ranks is lowered to it (it would only store zeros).
    min_rank, max_rank : int or sequence of int, optional
        Bounds on the adaptive ranks during rank-adaptive training (an int applies
        to every mode; default 1 and ``n_i``). Fixed modes stay at their rank;
        ``max_rank`` is clipped to ``n_i`` and ``min_rank`` to ``max_rank``.
    adaptive_modes : sequence of int, optional
        The modes whose rank may change. Default ``(0, 1)``: the channel modes adapt,
        the kernel modes keep full size.
    implementation : {'dense', 'factorized'}, default 'dense'
        ``'dense'``: rebuild the weight and run one ``F.conv_transpose2d``.
        ``'factorized'``: never form it (1x1 convolution with the input basis,
        transposed convolution with the core, 1x1 convolution with the output
        basis); :class:`~tuckerflow.nn.TDLRT` then takes the parallel BUG step from
        the core and factor gradients.
    device, dtype : optional
        Of the parameters.
    init_weight : tensor of shape (C_in, C_out / groups, kh, kw), optional
        Dense weight whose truncated HOSVD initialises the layer (default: a
        Kaiming-uniform draw, as ``nn.ConvTranspose2d``).
    offset : tensor of shape (C_in, C_out / groups, kh, kw), optional
        Frozen weight (a buffer) added to the Tucker weight (adapters:
        ``W0 + Tucker(dW)``).
    zero_core : bool, default False
        Start from the zero core (adapters: ``dW = 0``).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts; the padding is not made
        of ints; ``padding_mode`` is not ``'zeros'``; an ``output_padding`` is not
        smaller than its stride or dilation; ``implementation`` is unknown; an entry
        of ``adaptive_modes`` is not a mode (``0 <= m < 4``); ``rank``,
        ``min_rank`` or ``max_rank`` has not one entry per mode; an int ``rank`` is
        below 1 or a mode rank lies outside ``[1, n_i]``; or a ``min_rank`` or
        ``max_rank`` entry of an adaptive mode is below 1.
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tuckerflow.nn import TuckerConvTranspose2d
    >>> dense = nn.ConvTranspose2d(8, 4, 3, stride=2, output_padding=1)
    >>> layer = TuckerConvTranspose2d.from_dense(dense, rank=(8, 4, 3, 3))
    >>> x = torch.randn(1, 8, 5, 5)
    >>> bool(torch.allclose(layer(x), dense(x), atol=1e-5))
    True
    """

    spatial_dims = 2


class TuckerConvTranspose3d(_TuckerConvTransposeNd):
    """``nn.ConvTranspose3d`` with a Tucker weight (modes: in, out/groups, kd, kh,
    kw); see :class:`TuckerConvTranspose2d`.

    Input ``(N, C_in, D, H, W)`` or unbatched, output ``(N, C_out, D_out, H_out,
    W_out)``; weight ``(C_in, C_out / groups, kd, kh, kw)``.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``; both divisible by ``groups``.
    kernel_size, stride, padding, output_padding, dilation : int or tuple of int
        As for :class:`torch.nn.ConvTranspose3d` (integer padding only).
    groups : int, default 1
    bias : bool, default True
    padding_mode : {'zeros'}
        The only mode ``nn.ConvTranspose3d`` supports.
    rank, min_rank, max_rank : int or sequence of int, optional
        Initial rank and rank bounds, as for :class:`TuckerConvTranspose2d` (5
        modes).
    adaptive_modes : sequence of int, optional
        Default ``(0, 1)``: the channel modes adapt, the kernel modes keep full size.
    implementation : {'dense', 'factorized'}, default 'dense'
    device, dtype : optional
        Of the parameters.
    init_weight, offset : tensor of shape (C_in, C_out / groups, kd, kh, kw), optional
        Dense weight to initialise from by its HOSVD; frozen weight added to the
        Tucker weight (adapters).
    zero_core : bool, default False
        Start from the zero core (adapters: ``dW = 0``).

    Raises
    ------
    ValueError
        If ``groups`` does not divide both channel counts, the padding is not made
        of ints, ``padding_mode`` is not ``'zeros'``, an ``output_padding`` is not
        smaller than its stride or dilation, or a Tucker option is invalid (see
        :class:`TuckerConvTranspose2d`).
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    """

    spatial_dims = 3
