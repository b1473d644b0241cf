"""Put a model's weights on the Tucker manifold, and report the compression."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from .layers import DENSE_TO_TUCKER, TuckerLayer

__all__ = ["tuckerize", "compression_report", "CompressionReport"]

INITS = ("pretrained", "random")


def _matches(name: str, module: nn.Module, entries: Iterable[Any]) -> Any:
    for entry in entries:
        if isinstance(entry, type) and isinstance(module, entry):
            return entry
        if isinstance(entry, str) and (
            name == entry
            or fnmatch.fnmatchcase(name, entry)
            or name.endswith("." + entry)
        ):
            return entry
    return None


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, child = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, child


def tuckerize(
    model: nn.Module,
    *,
    tol: float | None = None,
    rank: Any = None,
    skip: Iterable[Any] = (),
    init: str = "pretrained",
    implementation: str = "dense",
    min_rank: Any = None,
    max_rank: Any = None,
    adaptive_modes: Any = None,
    budget: int | None = None,
    budget_criterion: str = "tolerance",
) -> nn.Module:
    """Replace ``nn.Linear`` and ``nn.Conv1d/2d/3d`` modules by Tucker layers, in place.

    Parameters
    ----------
    model : nn.Module
    tol : float, optional
        Initial ranks from the HOSVD of each weight: total relative error at most
        ``tol`` (adaptive modes only; kernel modes keep full rank).
    rank : int or sequence, optional
        Explicit initial rank (an int applies to the adaptive modes). With neither
        ``tol`` nor ``rank``: half of every adaptive mode.
    skip : iterable of str or type
        Module names (exact, glob pattern, or dotted suffix) or module types to keep
        dense, e.g. ``skip=("features.0", "classifier.2")``. A name that matches no
        module is an error (it is usually a typo).
    init : {'pretrained', 'random'}
        ``'pretrained'``: HOSVD of the current weights. ``'random'``: HOSVD of a fresh
        draw from PyTorch's default initialisation (training from scratch).
    implementation : {'dense', 'factorized'}
    min_rank, max_rank, adaptive_modes
        Passed to every new layer.
    budget : int, optional
        Total parameter count of all new Tucker weights: the initial ranks of all
        layers are allocated jointly from the HOSVD spectra of their weights
        (:func:`tuckerflow.ranks.ranks_from_global_budget`).
    budget_criterion : {'tolerance', 'energy', 'energy_per_parameter'}
        How the budget is shared (default: a common relative tolerance).

    Returns
    -------
    nn.Module
        ``model`` itself, modified.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    skip = tuple(skip)
    for entry in skip:
        if not isinstance(entry, (str, type)):
            raise TypeError(
                f"skip entries must be module names or types, got {entry!r}"
            )
    names = [name for name, _ in model.named_modules()]
    for entry in skip:
        if isinstance(entry, str) and not any(
            name == entry
            or fnmatch.fnmatchcase(name, entry)
            or name.endswith("." + entry)
            for name in names
        ):
            raise ValueError(
                f"skip entry {entry!r} matches no module of the model; its modules "
                f"are {[n for n in names if n][:20]}"
            )
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in DENSE_TO_TUCKER and not _matches(name, module, skip)
    ]
    if not targets:
        warnings.warn("tuckerize: no Linear or Conv module to convert", stacklevel=2)
    if budget is not None and (rank is not None or tol is not None):
        raise ValueError("give one of rank, tol and budget")
    options = {
        "min_rank": min_rank,
        "max_rank": max_rank,
        "adaptive_modes": adaptive_modes,
        "implementation": implementation,
    }
    sources = [
        (name, module, _fresh_copy(module) if init == "random" else module)
        for name, module in targets
    ]
    ranks = [rank] * len(sources)
    if budget is not None:
        ranks = _budget_ranks(sources, budget, options, budget_criterion)
    for (name, module, source), layer_rank in zip(sources, ranks):
        layer = DENSE_TO_TUCKER[type(module)].from_dense(
            source, rank=layer_rank, tol=tol, **options
        )
        parent, child = _parent(model, name)
        setattr(parent, child, layer)
    return model


def _budget_ranks(
    sources, budget: int, options: dict, criterion: str
) -> list[tuple[int, ...]]:
    """Initial ranks of all layers from one budget, on the HOSVD spectra."""
    import tuckerflow as tf
    from tuckerflow.hosvd import core_singular_vectors
    from tuckerflow.ranks import ranks_from_global_budget

    adaptive = options["adaptive_modes"]
    adaptive = (0, 1) if adaptive is None else tuple(adaptive)
    floor = options["min_rank"] or 1
    problems = []
    for _, _, source in sources:
        weight = source.weight.detach()
        shape = tuple(weight.shape)
        floors = (floor,) * len(shape) if isinstance(floor, int) else tuple(floor)
        high = tuple(
            min(n, math.prod(shape) // n) if m in adaptive else n
            for m, n in enumerate(shape)
        )
        low = tuple(
            min(f, h) if m in adaptive else n
            for m, (n, f, h) in enumerate(zip(shape, floors, high))
        )
        pinned = [m not in adaptive for m in range(len(shape))]
        with tf.use_backend("pytorch"):
            _, spectra = core_singular_vectors(weight, skip=pinned)
        problems.append(
            {
                "spectra": [None if s is None else s.cpu().numpy() for s in spectra],
                "shape": shape,
                "min_rank": low,
                "max_rank": high,
                "norm": float(weight.norm()),
            }
        )
    return ranks_from_global_budget(problems, budget, criterion=criterion)


def _fresh_copy(module: nn.Module) -> nn.Module:
    import copy

    fresh = copy.deepcopy(module)
    fresh.reset_parameters()
    return fresh


@dataclasses.dataclass
class CompressionReport:
    """Per-layer ranks and parameter counts of the Tucker layers of a model.

    Attributes
    ----------
    rows : list of dict
        ``name, type, shape, rank, parameters, dense_parameters``.
    compressed, dense : int
        Sums over the Tucker layers (weights only).
    total_parameters : int
        All parameters of the model (Tucker, biases, dense layers).
    """

    rows: list[dict[str, Any]]
    compressed: int
    dense: int
    total_parameters: int

    @property
    def compression(self) -> float:
        """``1 - compressed / dense`` over the factorized layers (the paper's rate)."""
        return 1.0 - self.compressed / self.dense if self.dense else 0.0

    def __str__(self) -> str:
        header = (
            f"{'layer':<24} {'type':<13} {'weight shape':<18} {'rank':<18} "
            f"{'params':>9} {'dense':>9} {'kept':>7}"
        )
        lines = [header, "-" * len(header)]
        for row in self.rows:
            lines.append(
                f"{row['name']:<24} {row['type']:<13} {row['shape']!s:<18} "
                f"{row['rank']!s:<18} {row['parameters']:>9,} "
                f"{row['dense_parameters']:>9,} "
                f"{row['parameters'] / row['dense_parameters']:>7.1%}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"Tucker layers: {self.compressed:,} of {self.dense:,} weights "
            f"(compression {self.compression:.2%}); model parameters "
            f"{self.total_parameters:,}"
        )
        return "\n".join(lines)


def compression_report(model: nn.Module) -> CompressionReport:
    """Ranks, parameter counts and the compression rate ``1 - c/f`` of a model.

    ``c`` counts the stored Tucker weights (``prod(r) + sum(n_i r_i)`` per layer),
    ``f`` the dense weights they replace; biases and dense layers are not included
    (``total_parameters`` counts everything).
    """
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, TuckerLayer):
            rows.append(
                {
                    "name": name or type(module).__name__,
                    "type": type(module).__name__,
                    "shape": module.weight_shape,
                    "rank": module.rank,
                    "parameters": module.parameter_count(),
                    "dense_parameters": module.dense_parameter_count(),
                }
            )
    total = sum(p.numel() for p in model.parameters())
    return CompressionReport(
        rows,
        sum(r["parameters"] for r in rows),
        sum(r["dense_parameters"] for r in rows),
        total,
    )
