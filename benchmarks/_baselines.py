"""Baseline factorizations the studies compare against (plain PyTorch, vanilla SGD).

* :class:`LowRankLinear`, :class:`LowRankConv2d`: a rank-``r`` matrix ``U V^T`` (for a
  convolution, of the kernel flattened to ``out x (in k k)``: a ``k x k`` convolution to
  ``r`` channels, then a 1x1 convolution), the matrix low-rank baseline.
* :func:`tltorch_tucker_conv`: TensorLy-Torch's Tucker ``FactorizedConv`` (the standard
  "vanilla" Tucker layer trained by SGD on its factors), when tltorch is installed.
* :func:`matched_matrix_rank`: the matrix rank with the parameter count of a Tucker
  layer, for comparisons at equal size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankLinear(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, rank: int, bias: bool = True
    ):
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x):
        return self.second(self.first(x))

    def weight_count(self) -> int:
        return self.first.weight.numel() + self.second.weight.numel()


class LowRankConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, rank: int):
        super().__init__()
        self.first = nn.Conv2d(
            conv.in_channels,
            rank,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=False,
        )
        self.second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x):
        return self.second(self.first(x))

    def weight_count(self) -> int:
        return self.first.weight.numel() + self.second.weight.numel()


def matched_matrix_rank(shape: tuple[int, ...], parameters: int) -> int:
    """Largest rank of an ``out x (in k...)`` matrix with at most ``parameters``."""
    rows, cols = shape[0], math.prod(shape[1:])
    return max(1, min(rows, cols, parameters // (rows + cols)))


def replace(model: nn.Module, name: str, module: nn.Module) -> None:
    *path, child = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, child, module)


def matrix_low_rank(model: nn.Module, parameters: dict[str, int]) -> nn.Module:
    """Replace the named conv/linear layers by rank-matched low-rank matrices."""
    for name, module in list(model.named_modules()):
        if name not in parameters:
            continue
        shape = tuple(module.weight.shape)
        rank = matched_matrix_rank(shape, parameters[name])
        if isinstance(module, nn.Conv2d):
            replace(model, name, LowRankConv2d(module, rank))
        else:
            replace(
                model,
                name,
                LowRankLinear(
                    module.in_features,
                    module.out_features,
                    rank,
                    module.bias is not None,
                ),
            )
    return model


def tltorch_tucker(model: nn.Module, ranks: dict[str, tuple[int, ...]]) -> nn.Module:
    """Convolutions as tltorch Tucker ``FactorizedConv`` (factorized forward), linear
    layers as low-rank matrices of the same parameter count; trained by plain SGD."""
    import tltorch

    from tuckerflow.ranks import parameter_count

    torch.manual_seed(torch.initial_seed() % 2**31)
    for name, module in list(model.named_modules()):
        if name not in ranks:
            continue
        shape = tuple(module.weight.shape)
        if isinstance(module, nn.Conv2d):
            layer = tltorch.FactorizedConv.from_conv(
                module,
                rank=tuple(ranks[name]),
                factorization="tucker",
                implementation="factorized",
            )
            replace(model, name, layer)
        else:
            rank = matched_matrix_rank(shape, parameter_count(shape, ranks[name]))
            replace(
                model,
                name,
                LowRankLinear(
                    module.in_features,
                    module.out_features,
                    rank,
                    module.bias is not None,
                ),
            )
    return model


def weight_count(model: nn.Module) -> int:
    """Stored weights of all factorized or dense conv/linear layers (no biases)."""
    from tuckerflow.nn import TuckerLayer

    total = 0
    for module in model.modules():
        if isinstance(module, TuckerLayer):
            total += module.parameter_count()
        elif isinstance(module, (LowRankLinear, LowRankConv2d)):
            total += module.weight_count()
        elif type(module).__name__ == "FactorizedConv":
            total += sum(
                p.numel() for n, p in module.named_parameters() if "bias" not in n
            )
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not _inside_factorized(
            model, module
        ):
            total += module.weight.numel()
    return total


def _inside_factorized(model: nn.Module, target: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, (LowRankLinear, LowRankConv2d)) and any(
            child is target for child in module.modules()
        ):
            return True
    return False
