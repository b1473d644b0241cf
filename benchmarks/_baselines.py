"""Baseline factorizations the studies compare against (plain PyTorch, vanilla SGD).

* :class:`LowRankLinear`, :class:`LowRankConv2d`: a rank-``r`` matrix ``U V^T`` (for a
  convolution, of the kernel flattened to ``out x (in k k)``: a ``k x k`` convolution to
  ``r`` channels, then a 1x1 convolution), the matrix low-rank baseline.
* :func:`tltorch_tucker_conv`: TensorLy-Torch's Tucker ``FactorizedConv`` (the standard
  "vanilla" Tucker layer trained by SGD on its factors), when tltorch is installed.
* :func:`tltorch_factorized`: TensorLy-Torch's CP or tensor-train ``FactorizedConv``
  at a given parameter count per layer.
* :func:`matched_matrix_rank`: the matrix rank with the parameter count of a Tucker
  layer, for comparisons at equal size.
* :func:`tucker_at_ranks`: our Tucker layers at fixed ranks (the ``vanilla`` and
  ``rgd`` baselines); :class:`RiemannianSGD`: Riemannian gradient descent with the
  HOSVD retraction on them.
* :class:`MagnitudePruning` and :func:`snip`: unstructured pruning (global magnitude
  with a gradual schedule; SNIP at initialization) through ``torch.nn.utils.prune``;
  :func:`weight_count` counts a pruned layer's unmasked weights.
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

    @classmethod
    def like(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """A fresh rank-``rank`` layer with ``linear``'s sizes and bias."""
        return cls(
            linear.in_features, linear.out_features, rank, linear.bias is not None
        )

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
            replace(model, name, LowRankLinear.like(module, rank))
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
            replace(model, name, LowRankLinear.like(module, rank))
    return model


def weight_count(model: nn.Module) -> int:
    """Stored weights of all factorized or dense conv/linear layers (no biases).

    A layer pruned by ``torch.nn.utils.prune`` counts the nonzeros of its
    ``weight_mask`` (the sparse format's indices are not counted); its
    ``weight_orig`` is the dense parameter behind the mask, not a second weight.
    """
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
            mask = getattr(module, "weight_mask", None)
            total += (
                module.weight.numel() if mask is None else int(mask.count_nonzero())
            )
    return total


def _inside_factorized(model: nn.Module, target: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, (LowRankLinear, LowRankConv2d)) and any(
            child is target for child in module.modules()
        ):
            return True
    return False


def tucker_at_ranks(model: nn.Module, ranks: dict[str, tuple[int, ...]]) -> nn.Module:
    """Replace the named layers by our Tucker layers at fixed ranks.

    Each layer is freshly initialized (``reset_parameters``) and converted at exactly
    ``ranks[name]`` (``min_rank = max_rank = rank``: the ranks never change).

    Parameters
    ----------
    model : nn.Module
        Modified in place.
    ranks : dict of str to tuple of int
        The Tucker rank of each layer to replace, by module name.

    Returns
    -------
    nn.Module
        ``model``.
    """
    import copy

    from tuckerflow.nn.layers import DENSE_TO_TUCKER

    modules = dict(model.named_modules())
    for name, rank in ranks.items():
        fresh = copy.deepcopy(modules[name])
        fresh.reset_parameters()
        rank = tuple(rank)
        layer = DENSE_TO_TUCKER[type(fresh)].from_dense(
            fresh, rank=rank, min_rank=rank, max_rank=rank
        )
        replace(model, name, layer)
    return model


class RiemannianSGD:
    """Riemannian gradient descent on the Tucker layers, SGD on everything else.

    Every Tucker layer takes ``W <- R(W - lr P(W) G)`` at its current rank
    (:func:`tuckerflow.rgd_step`: projected gradient, truncated-HOSVD retraction;
    Kressner, Steinlechner, Vandereycken, BIT 54, 2014), from the dense weight
    gradient ``G`` (``gradient_source="weight"``); RGD keeps no momentum. Biases and
    batch norm take ``torch.optim.SGD``. Only ``zero_grad`` and ``step`` exist (what
    the studies' training loop calls).

    Parameters
    ----------
    model : nn.Module
        Its Tucker layers must have ``implementation="dense"`` and orthonormal factors.
    lr : float
        Step of the Riemannian update.
    ordinary_lr, momentum : float
        ``torch.optim.SGD`` settings of the other parameters.
    """

    def __init__(
        self, model: nn.Module, lr: float, ordinary_lr: float, momentum: float
    ):
        from tuckerflow.nn import TuckerLayer

        self.model = model
        self.riemannian = {"lr": lr}  # the Riemannian step's group (schedules set it)
        self.layers = [m for m in model.modules() if isinstance(m, TuckerLayer)]
        tucker = set()
        for layer in self.layers:
            layer.gradient_source = "weight"
            tucker.update(id(p) for p in layer.tucker_parameters())
        ordinary = [p for p in model.parameters() if id(p) not in tucker]
        self.ordinary = torch.optim.SGD(ordinary, lr=ordinary_lr, momentum=momentum)

    @property
    def param_groups(self) -> list[dict]:
        """The ordinary groups and the Riemannian step's ``{"lr": ...}``."""
        return [*self.ordinary.param_groups, self.riemannian]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        import tuckerflow as tf

        self.ordinary.step()
        with torch.no_grad(), tf.use_backend("pytorch"):
            for layer in self.layers:
                grad = layer.weight_gradient()
                if grad is not None:
                    point, _ = tf.rgd_step(
                        layer.tucker(),
                        grad,
                        self.riemannian["lr"],
                        rank=layer.rank,
                    )
                    layer.set_tucker(point)


def _tltorch_count(conv: nn.Conv2d, factorization: str, rank: int) -> int:
    import tltorch

    layer = tltorch.FactorizedConv(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        order=2,
        factorization=factorization,
        rank=rank,
        implementation="factorized",
    )
    return sum(p.numel() for n, p in layer.named_parameters() if "bias" not in n)


def tltorch_factorized(
    model: nn.Module, parameters: dict[str, int], factorization: str
) -> nn.Module:
    """Convolutions as tltorch CP or TT ``FactorizedConv`` (factorized forward), linear
    layers as low-rank matrices, each with at most ``parameters[name]`` weights.

    The rank is an int, the largest whose layer fits (CP: ``r (1 + sum n_i)``,
    weights vector included; TT: one rank ``r`` between all cores); the layer starts
    from tltorch's decomposition of the fresh convolution. Trained by plain SGD.

    Parameters
    ----------
    model : nn.Module
        Modified in place.
    parameters : dict of str to int
        Weight count to match, by module name.
    factorization : {'cp', 'tt'}
        tltorch's factorization.

    Returns
    -------
    nn.Module
        ``model``.
    """
    import tltorch

    for name, module in list(model.named_modules()):
        if name not in parameters:
            continue
        target = parameters[name]
        if isinstance(module, nn.Conv2d):
            rank = 1
            while _tltorch_count(module, factorization, rank + 1) <= target:
                rank += 1
            layer = tltorch.FactorizedConv.from_conv(
                module,
                rank=rank,
                factorization=factorization,
                implementation="factorized",
            )
            replace(model, name, layer)
        else:
            rank = matched_matrix_rank(tuple(module.weight.shape), target)
            replace(model, name, LowRankLinear.like(module, rank))
    return model


class MagnitudePruning:
    """An optimizer wrapper that prunes by global weight magnitude on a schedule.

    After optimizer step ``ceil(i steps / rounds)`` (``i = 1 .. rounds``) the
    smallest-magnitude weights of ``modules`` (all together, L1 unstructured) are
    masked until ``(total - keep) (1 - (1 - i / rounds)^3)`` are pruned: the gradual
    schedule of Zhu and Gupta ("To prune, or not to prune", 2017), reaching ``keep``
    weights at step ``steps``; training then goes on with the masks (fine-tuning).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Updates the weights (the pruned ones stay masked).
    modules : list of nn.Module
        Conv/linear layers whose ``weight`` is pruned.
    keep : int
        Weights left unmasked at the end.
    steps : int
        Optimizer steps of the schedule (at least 1).
    rounds : int
        Pruning rounds (at most ``steps`` are used).
    """

    def __init__(self, optimizer, modules, keep: int, steps: int, rounds: int = 10):
        self.optimizer = optimizer
        self.targets = [(module, "weight") for module in modules]
        self.total = sum(module.weight.numel() for module in modules)
        rounds = max(1, min(rounds, steps))
        pruned = self.total - keep
        self.schedule = [
            (math.ceil(i * steps / rounds), round(pruned * (1 - (1 - i / rounds) ** 3)))
            for i in range(1, rounds + 1)
        ]
        self.steps_taken = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        from torch.nn.utils import prune

        self.optimizer.step()
        self.steps_taken += 1
        while self.schedule and self.schedule[0][0] <= self.steps_taken:
            _, target = self.schedule.pop(0)
            pruned = self.total - sum(weight_count(m) for m, _ in self.targets)
            if target > pruned:
                prune.global_unstructured(
                    self.targets,
                    pruning_method=prune.L1Unstructured,
                    amount=target - pruned,
                )


def snip(model: nn.Module, names: list[str], images, labels, keep: int) -> nn.Module:
    """SNIP (Lee, Ajanthan, Torr, ICLR 2019): prune at initialization by ``|g w|``.

    The connection sensitivity ``|dL/dw * w|`` of every weight of the named layers on
    one batch; the ``keep`` largest over all layers stay, the others are masked
    (``torch.nn.utils.prune.custom_from_mask``) for the whole training. The batch's
    forward runs on a copy, so batch-norm statistics are untouched.

    Parameters
    ----------
    model : nn.Module
        Modified in place (masks added).
    names : list of str
        Conv/linear layers to prune.
    images, labels : tensor
        The batch.
    keep : int
        Weights left unmasked.

    Returns
    -------
    nn.Module
        ``model``.
    """
    import copy

    import torch.nn.functional as F
    from torch.nn.utils import prune

    probe = copy.deepcopy(model)
    probe_modules = dict(probe.named_modules())
    weights = [probe_modules[name].weight for name in names]
    loss = F.cross_entropy(probe(images), labels)
    grads = torch.autograd.grad(loss, weights)
    scores = torch.cat([(g * w).abs().flatten() for g, w in zip(grads, weights)])
    flat = torch.zeros_like(scores)
    flat[torch.topk(scores, keep).indices] = 1
    modules = dict(model.named_modules())
    start = 0
    for name, weight in zip(names, weights):
        mask = flat[start : start + weight.numel()].view_as(weight)
        prune.custom_from_mask(modules[name], "weight", mask)
        start += weight.numel()
    return model
