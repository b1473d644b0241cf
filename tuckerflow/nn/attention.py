"""``nn.MultiheadAttention`` whose packed input projection is a Tucker layer.

``nn.MultiheadAttention`` keeps the query, key and value projections in one packed
parameter ``in_proj_weight`` of shape ``(3 E, E)`` and reads it (and
``out_proj.weight``) directly in ``F.multi_head_attention_forward`` and in the fused
inference fast path, never through a submodule's forward. The subclass here serves
``in_proj_weight`` from a contained :class:`~tuckerflow.nn.TuckerLinear` ``in_proj``
of shape ``(3 E, E)`` (no bias: ``in_proj_bias`` stays the attention module's
parameter), so every code path of the parent class, the fast path and
``nn.TransformerEncoderLayer`` included, runs unchanged on the rebuilt weight, and
:class:`~tuckerflow.nn.TDLRT` finds ``in_proj`` like any Tucker layer. ``out_proj`` is
an ``nn.Linear`` subclass; it becomes a :class:`TuckerLinear` of its own (the parent
reads its ``weight`` property).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers import TuckerLayer, TuckerLinear, initial_rank

__all__ = ["TuckerMultiheadAttention"]


class TuckerMultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention with Tucker-format projection weights.

    Same signature and forward as :class:`torch.nn.MultiheadAttention` (masks,
    ``batch_first``, ``need_weights``, the inference fast path) plus the Tucker
    options. The packed projection ``in_proj_weight`` ``(3 E, E)`` is the weight of
    the contained :class:`~tuckerflow.nn.TuckerLinear` ``in_proj`` (``in_features =
    E``, ``out_features = 3 E``, no bias: ``in_proj_bias`` stays a parameter of this
    module);
    ``out_proj`` ``(E, E)`` is a :class:`TuckerLinear` when ``tucker_out_proj``.
    Both are trained by :class:`~tuckerflow.nn.TDLRT` like any Tucker layer
    (Zangrando et al. 2024).

    Shapes as for ``nn.MultiheadAttention``: query ``(L, N, E)`` (``(N, L, E)`` with
    ``batch_first``, ``(L, E)`` unbatched), key and value ``(S, N, E)``; output
    ``(L, N, E)`` and, with ``need_weights``, attention weights ``(N, L, S)``
    (averaged over heads) or ``(N, num_heads, L, S)``.

    Parameters
    ----------
    embed_dim, num_heads : int
    dropout : float, default 0.0
    bias : bool, default True
    add_bias_kv, add_zero_attn : bool, default False
    kdim, vdim : int, optional
        Must equal ``embed_dim`` (or be None): the packed projection needs one input
        size for query, key and value.
    batch_first : bool, default False
    device, dtype : optional
    rank, min_rank, max_rank, adaptive_modes
        Tucker options of ``in_proj`` (weight shape ``(3 E, E)``) and, for an int
        (or absent) ``rank``, of ``out_proj``; see :class:`TuckerLinear`.
    implementation : {'dense', 'factorized'}
        The parent class needs the dense weights, so both rebuild ``W``;
        ``'factorized'`` only makes :class:`TDLRT` take its gradients from the core
        and factors (``method='parallel'``).
    tucker_out_proj : bool, default True
        Make ``out_proj`` a :class:`TuckerLinear` too.
    init_weight : tensor of shape (3 E, E), optional
        Dense ``in_proj_weight`` whose HOSVD initialises ``in_proj`` (default: the
        parent class's Xavier draw).
    offset : tensor of shape (3 E, E), optional
        Frozen weight added to ``in_proj``'s Tucker weight (adapters).
    zero_core : bool, default False
        Start ``in_proj`` from the zero core (adapters).

    Raises
    ------
    ValueError
        If ``kdim`` or ``vdim`` differs from ``embed_dim``, ``embed_dim`` or
        ``num_heads`` is not positive (``nn.MultiheadAttention``), or a Tucker option
        is invalid (see :class:`~tuckerflow.nn.TuckerLinear`).
    TypeError
        If ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence
        of ints.
    AssertionError
        If ``embed_dim`` is not divisible by ``num_heads`` (``nn.MultiheadAttention``
        asserts it).

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] PEFT (Hugging Face): LoRA on ``nn.MultiheadAttention`` adapts the packed
       ``in_proj_weight`` and ``out_proj`` the same way.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerMultiheadAttention
    >>> attention = TuckerMultiheadAttention(16, 4, rank=4, batch_first=True)
    >>> x = torch.randn(2, 5, 16)
    >>> out, weights = attention(x, x, x)
    >>> tuple(out.shape), attention.in_proj.rank
    ((2, 5, 16), (4, 4))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        rank: Any = None,
        min_rank: Any = None,
        max_rank: Any = None,
        adaptive_modes: Sequence[int] | None = None,
        implementation: str = "dense",
        tucker_out_proj: bool = True,
        init_weight: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        zero_core: bool = False,
    ) -> None:
        for name, value in (("kdim", kdim), ("vdim", vdim)):
            if value is not None and value != embed_dim:
                raise ValueError(
                    f"{type(self).__name__} needs the packed in_proj_weight: {name}="
                    f"{value} must equal embed_dim={embed_dim} (or be None)"
                )
        super().__init__(
            embed_dim,
            num_heads,
            dropout=dropout,
            bias=bias,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
            batch_first=batch_first,
            device=device,
            dtype=dtype,
        )
        drawn = self._parameters.pop("in_proj_weight")  # served by in_proj from now
        tucker = {
            "rank": rank,
            "min_rank": min_rank,
            "max_rank": max_rank,
            "adaptive_modes": adaptive_modes,
            "implementation": implementation,
        }
        self.in_proj = TuckerLinear(
            embed_dim,
            3 * embed_dim,
            bias=False,
            device=drawn.device,
            dtype=drawn.dtype,
            init_weight=drawn.detach() if init_weight is None else init_weight,
            offset=offset,
            zero_core=zero_core,
            **tucker,
        )
        if tucker_out_proj:
            square = {
                key: value if isinstance(value, int) or value is None else None
                for key, value in tucker.items()
                if key in ("rank", "min_rank", "max_rank")
            }
            self.out_proj = TuckerLinear.from_dense(
                self.out_proj,
                adaptive_modes=adaptive_modes,
                implementation=implementation,
                **square,
            )

    @property
    def in_proj_weight(self) -> torch.Tensor:
        """The packed projection weight ``(3 E, E)``: ``in_proj.weight``, rebuilt
        from the Tucker factors (with ``in_proj``'s offset, if any).

        Raises
        ------
        AttributeError
            While ``nn.MultiheadAttention.__init__`` runs, before the dense draw
            exists (so that it can register it).
        """
        in_proj = self._modules.get("in_proj")
        if in_proj is None:  # inside nn.MultiheadAttention.__init__
            parameter = self._parameters.get("in_proj_weight")
            if parameter is None:
                raise AttributeError("in_proj_weight")
            return parameter
        return in_proj.weight

    def tucker_layers(self) -> list[TuckerLayer]:
        """The Tucker layers of this module: ``in_proj`` and, if it is one,
        ``out_proj``.

        Returns
        -------
        list of TuckerLayer
        """
        return [m for m in (self.in_proj, self.out_proj) if isinstance(m, TuckerLayer)]

    @classmethod
    def from_dense(
        cls,
        attention: nn.MultiheadAttention,
        rank: Any = None,
        tol: float | None = None,
        *,
        adapter: bool = False,
        **options: Any,
    ) -> TuckerMultiheadAttention:
        """Tucker version of a dense ``nn.MultiheadAttention`` (its ``in_proj``).

        ``in_proj`` is the (truncated) HOSVD of ``attention.in_proj_weight``; every
        other parameter and option is copied. ``out_proj`` is a copy of
        ``attention.out_proj`` (an ``nn.Linear``):
        :func:`~tuckerflow.nn.tuckerize` converts it as the separate layer it is
        (so it can be skipped on its own), or call ``TuckerLinear.from_dense`` on
        it.

        Parameters
        ----------
        attention : nn.MultiheadAttention
            With the packed projection (``kdim == vdim == embed_dim``).
        rank : int or (int, int), optional
            Initial rank of ``in_proj`` (weight shape ``(3 E, E)``).
        tol : float, optional
            Instead of ``rank``: HOSVD ranks at this relative tolerance.
        adapter : bool, default False
            Build an adapter instead: ``in_proj_weight = W0 + Tucker(dW)`` with
            ``W0`` the dense weight (a frozen buffer) and ``dW`` starting at zero
            (zero core, random orthonormal bases), as
            :func:`~tuckerflow.nn.add_tucker_adapters` does for a Linear.
        **options
            ``min_rank``, ``max_rank``, ``adaptive_modes``, ``implementation``.

        Returns
        -------
        TuckerMultiheadAttention
            A new module; with full ranks (or as an adapter) it computes what
            ``attention`` computes.

        Raises
        ------
        TypeError
            If ``attention`` is not a dense ``nn.MultiheadAttention``.
        ValueError
            If it has separate query/key/value weights (``kdim`` or ``vdim`` differs
            from ``embed_dim``), both ``rank`` and ``tol`` are given, ``tol`` is
            given with ``adapter=True``, or an option is invalid.

        References
        ----------
        .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular
           value decomposition", SIAM J. Matrix Anal. Appl. 21(4), 1253-1278, 2000.
        .. [2] E. J. Hu, Y. Shen, P. Wallis, Z. Allen-Zhu, Y. Li, S. Wang, L. Wang,
           W. Chen, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022
           (``adapter=True``).
        """
        if not isinstance(attention, nn.MultiheadAttention) or isinstance(
            attention, TuckerMultiheadAttention
        ):
            raise TypeError(
                f"{cls.__name__}.from_dense needs a dense nn.MultiheadAttention, got "
                f"{type(attention).__name__}"
            )
        if not attention._qkv_same_embed_dim:
            raise ValueError(
                f"{cls.__name__}.from_dense needs the packed in_proj_weight; this "
                f"attention has separate q/k/v weights (kdim={attention.kdim}, "
                f"vdim={attention.vdim}, embed_dim={attention.embed_dim})"
            )
        weight = attention.in_proj_weight.detach()
        if adapter:
            if tol is not None:
                raise ValueError("an adapter starts at dW = 0: give rank, not tol")
            init = {"offset": weight, "zero_core": True}
        else:
            rank = initial_rank(weight, rank, tol, options.get("adaptive_modes"))
            init = {"init_weight": weight}
        new = cls(
            attention.embed_dim,
            attention.num_heads,
            dropout=attention.dropout,
            bias=attention.in_proj_bias is not None,
            add_bias_kv=attention.bias_k is not None,
            add_zero_attn=attention.add_zero_attn,
            batch_first=attention.batch_first,
            device=weight.device,
            dtype=weight.dtype,
            rank=rank,
            tucker_out_proj=False,
            **init,
            **options,
        )
        with torch.no_grad():
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                source = getattr(attention, name)
                if source is not None:
                    getattr(new, name).copy_(source)
        new.out_proj = copy.deepcopy(attention.out_proj)
        new.train(attention.training)
        return new

    def to_dense(self) -> nn.MultiheadAttention:
        """A plain ``nn.MultiheadAttention`` with the current weights.

        ``in_proj_weight`` is the rebuilt ``in_proj.weight`` (adapter offset
        included); biases and options are copied. ``out_proj`` is this module's own
        ``out_proj`` object (a Tucker layer stays one: fold it separately, as
        :func:`~tuckerflow.nn.merge_adapters` does).

        Returns
        -------
        nn.MultiheadAttention
        """
        weight = self.in_proj_weight.detach()
        dense = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.in_proj_bias is not None,
            add_bias_kv=self.bias_k is not None,
            add_zero_attn=self.add_zero_attn,
            batch_first=self.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            dense.in_proj_weight.copy_(weight)
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                source = getattr(self, name)
                if source is not None:
                    getattr(dense, name).copy_(source)
        dense.out_proj = self.out_proj
        dense.train(self.training)
        return dense
