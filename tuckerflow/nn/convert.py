"""Put a model's weights on the Tucker manifold, and report the compression."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .attention import TuckerMultiheadAttention
from .layers import TuckerLayer, factorization_dtype
from .registry import dense_weight, lookup, main_tucker_layer

__all__ = ["tuckerize", "compression_report", "CompressionReport"]

INITS = ("pretrained", "random")


def _matches(name: str, module: nn.Module, entries: Iterable[Any]) -> Any:
    """The first entry naming ``module`` itself (exact name, glob pattern, dotted
    suffix, or type), or None; descendants are handled by :func:`_select`."""
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


def _select(model: nn.Module, entries: Iterable[Any], keyword: str) -> dict[str, Any]:
    """Modules chosen by ``entries`` (``skip`` or ``target_modules``), with subtrees.

    An entry (exact name, glob pattern, dotted suffix, or type) that matches a module
    selects the module and every descendant of it, so naming a container such as
    ``"classifier"`` selects all its layers (name-prefix semantics, as in PEFT).

    Returns
    -------
    dict
        ``{module name: the entries that match it or one of its ancestors}``.

    Raises
    ------
    TypeError
        If an entry is neither a str nor a type.
    ValueError
        If a str entry matches no module of the model (usually a typo).
    """
    entries = tuple(entries)
    for entry in entries:
        if not isinstance(entry, (str, type)):
            raise TypeError(
                f"{keyword} entries must be module names or types, got {entry!r}"
            )
    # every name of every module: a module used twice can be named by either
    modules = list(model.named_modules(remove_duplicate=False))
    direct: dict[str, list[Any]] = {}
    for entry in entries:
        hits = [name for name, module in modules if _matches(name, module, (entry,))]
        if isinstance(entry, str) and not hits:
            raise ValueError(
                f"{keyword} entry {entry!r} matches no module of the model; its "
                f"modules are {[n for n, _ in modules if n][:20]}"
            )
        for name in hits:
            direct.setdefault(name, []).append(entry)
    selected = {}
    for name in dict.fromkeys(name for name, _ in modules):
        # the module itself and its ancestors ("" is the root)
        parts = name.split(".") if name else []
        found = [
            entry
            for depth in range(len(parts) + 1)
            for entry in direct.get(".".join(parts[:depth]), ())
        ]
        if found:
            selected[name] = tuple(found)
    return selected


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, child = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, child


def _unique_modules(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """Every module once, with all the names it has in ``model`` (a module used
    under several names, or inside a module used twice, has several), in the order
    of first appearance (parents before children)."""
    names: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), (module, []))[1].append(name)
    return list(names.values())


def _plan(
    groups: list[tuple[nn.Module, list[str]]], chosen: Any
) -> tuple[list[tuple[list[str], nn.Module, type]], list[tuple[list[str], str]]]:
    """Which of the chosen modules are converted, by which Tucker class, and which
    Linear/Conv-like ones stay dense (with the reason).

    ``chosen(names)`` says whether a module (by all its names) is to be converted.
    """
    targets, left = [], []
    for module, names in groups:
        if not chosen(names):
            continue
        cls, reason = lookup(module)
        if cls is not None and names == [""]:
            reason = (
                "it is the model itself, which cannot be replaced in place: use "
                f"{cls.__name__}.from_dense(model)"
            )
            cls = None
        names = [n for n in names if n]  # the root has no name to install under
        if cls is not None:
            targets.append((names, module, cls))
        elif reason is not None:
            left.append((names or [""], f"{type(module).__name__}: {reason}"))
    return targets, left


def _left_dense_warning(caller: str, left: list, fix: str) -> None:
    if not left:
        return
    warnings.warn(
        f"{caller}: {len(left)} Linear/Conv-like module(s) left dense:\n"
        + "\n".join(f"  {names[0] or '(model)'} ({reason})" for names, reason in left)
        + "\n"
        + fix,
        UserWarning,
        stacklevel=3,
    )


def _check_ties(
    groups: list[tuple[nn.Module, list[str]]],
    targets: list[tuple[list[str], nn.Module, type]],
    caller: str,
    fix: str,
) -> None:
    """Refuse to convert a module that shares a Parameter with another module.

    The same module under several names is no tie (one new layer replaces it under
    every name); two modules holding one Parameter (an output layer tied to an
    embedding, two Linears sharing a weight) would be untied by the conversion and
    differ after the first step.

    Raises
    ------
    ValueError
        Naming every shared parameter, the modules holding it, and ``fix``.
    """
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for module, names in groups:
        for key, parameter in module._parameters.items():
            if parameter is not None:
                label = f"{names[0]}.{key}" if names[0] else key
                holders.setdefault(id(parameter), []).append((module, label))
    lines, involved = [], []
    for names, module, _ in targets:
        for key, parameter in module._parameters.items():
            if parameter is None:
                continue
            others = [label for m, label in holders[id(parameter)] if m is not module]
            if others:
                lines.append(f"  {names[0]}.{key} is also {', '.join(others)}")
                involved += [names[0]] + [o.rpartition(".")[0] for o in others]
    if lines:
        involved = tuple(dict.fromkeys(n for n in involved if n))
        raise ValueError(
            f"{caller}: these modules share a Parameter with another module; "
            "converting them would untie the weights (they would differ after one "
            "step):\n" + "\n".join(lines) + "\n" + fix.format(names=involved)
        )


def _install(model: nn.Module, names: list[str], new: nn.Module) -> None:
    """Put ``new`` under every name (one module for all of them: ties are kept)."""
    for name in names:
        parent, child = _parent(model, name)
        setattr(parent, child, new)


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
    cap_at_dense: bool = True,
) -> nn.Module:
    """Replace Linear, Conv, ConvTranspose and attention modules by Tucker layers,
    in place.

    A weight of shape ``(n_1, ..., n_d)`` (``(out, in)`` for a linear layer,
    ``(out, in / groups, *kernel)`` for a convolution, ``(in, out / groups,
    *kernel)`` for a transposed one, the packed ``(3 E, E)`` ``in_proj_weight`` of
    an ``nn.MultiheadAttention``) becomes an orthonormal Tucker tensor ``C ×_i U_i``
    with core ``C`` of shape ``(r_1, ..., r_d)`` and factors ``U_i`` of shape
    ``(n_i, r_i)``: ``prod(r) + sum_i n_i r_i`` stored weights instead of
    ``prod(n)``.

    Which module becomes which layer: the first entry of the registry
    (:func:`~tuckerflow.nn.registered_tucker_layers`) whose dense type the module is
    an instance of, so subclasses are converted too (``nn.MultiheadAttention``'s
    ``out_proj``). ``nn.Linear`` -> :class:`TuckerLinear`, ``nn.ConvNd`` ->
    :class:`TuckerConvNd`, ``nn.ConvTransposeNd`` ->
    :class:`TuckerConvTransposeNd`, ``nn.MultiheadAttention`` ->
    :class:`TuckerMultiheadAttention` (its ``in_proj``; its ``out_proj`` is
    converted as the Linear it is, and can be skipped on its own). A subclass that
    overrides ``forward``, has extra parameters or a parametrized weight, a lazy
    module not yet run, a ``MultiheadAttention`` with separate q/k/v weights, and
    any Linear- or Conv-like module without a registered Tucker layer
    (``nn.Bilinear``, transformers' ``Conv1D``) stay dense, listed in a warning.

    Tied weights: a module used under several names becomes one Tucker layer
    installed under every name (the tie holds through training;
    :func:`compression_report` counts it once). Distinct modules sharing a
    ``Parameter`` (an output layer tied to an embedding) cannot stay tied as
    separate Tucker layers: ``tuckerize`` refuses them (see Raises).

    Parameters
    ----------
    model : nn.Module
        Converted in place (its submodules are replaced).
    tol : float, optional
        Initial ranks from the HOSVD of each weight: total relative error at most
        ``tol`` (dimensionless, ``||W - W_tucker|| <= tol ||W||``; adaptive modes
        only, kernel modes keep full rank).
    rank : int or sequence, optional
        Explicit initial rank (an int applies to the adaptive modes). With neither
        ``tol`` nor ``rank``: half of every adaptive mode.
    skip : iterable of str or type
        Modules to keep dense, by name (exact, glob pattern, or dotted suffix) or type,
        e.g. ``skip=("features.0", "classifier")``. An entry that matches a module
        also keeps every module inside it dense: ``"classifier"`` keeps
        ``classifier.1``, ``classifier.3``, ... (name-prefix semantics, as in PEFT);
        a type such as a custom block class keeps all of its layers.
    init : {'pretrained', 'random'}
        ``'pretrained'``: HOSVD of the current weights. ``'random'``: HOSVD of a fresh
        draw from PyTorch's default initialisation (training from scratch).
    implementation : {'dense', 'factorized'}, default 'dense'
        Forward of every new layer (see :class:`~tuckerflow.nn.TuckerLinear`).
    min_rank, max_rank : int or sequence of int, optional
        Rank bounds of every new layer (an int applies to every adaptive mode).
    adaptive_modes : sequence of int, optional
        Modes whose rank adapts; default ``(0, 1)`` (the channel modes).
    budget : int, optional
        Total parameter count of all new Tucker weights: the initial ranks of all
        layers are allocated jointly from the HOSVD spectra of their weights
        (:func:`tuckerflow.ranks.ranks_from_global_budget`).
    budget_criterion : {'tolerance', 'energy', 'energy_per_parameter'}
        How the budget is shared (default: a common relative tolerance).
    cap_at_dense : bool, default True
        Never let a layer store more weights than the dense weight it replaces: where
        the ranks asked for (by ``tol``, ``rank``, ``budget`` or the default) would
        give ``prod(r) + sum_i n_i r_i > prod(n)``, lower the adaptive-mode ranks to
        the break-even point, dropping the HOSVD directions of least singular-value
        energy first (:func:`tuckerflow.ranks.ranks_from_global_budget` with the
        layer's dense size as its budget, criterion ``'energy'``). Fixed modes
        (a convolution's kernel modes) keep their rank, and no rank goes below
        ``min_rank``. The layer is then exactly the truncated HOSVD of its weight at
        the capped ranks, so its initial error exceeds ``tol``: a ``UserWarning``
        lists every capped layer with its ranks, weight counts and errors (not when
        neither ``tol``, ``rank`` nor ``budget`` was given: the default half ranks
        are a starting point, not a request, and are capped quietly). ``False``
        keeps the ranks asked for and warns about every layer larger than its dense
        weight, with the counts.

    Returns
    -------
    nn.Module
        ``model`` itself, modified.

    Raises
    ------
    TypeError
        If a ``skip`` entry is neither a str nor a type, ``cap_at_dense`` is not a
        bool, ``init='random'`` meets a module without ``reset_parameters``, or
        ``rank``, ``min_rank`` or ``max_rank`` is neither an int nor a sequence of
        ints.
    ValueError
        If ``init`` is unknown, a ``skip`` name matches no module of the model
        (usually a typo; the message lists the module names), more than one of
        ``rank``, ``tol`` and ``budget`` is given, ``budget_criterion`` is unknown, a
        Tucker option is invalid for a new layer (``implementation``, ``rank``,
        ``min_rank``, ``max_rank``, ``adaptive_modes``: see
        :class:`~tuckerflow.nn.TuckerLinear`), or a module to convert shares a
        ``Parameter`` with another module (the message names both and the ``skip``
        that keeps them dense). Every check, including those of the new layers,
        runs before the model is modified.

    Warns
    -----
    UserWarning
        When a layer's ranks asked for by ``tol``, ``rank`` or ``budget`` were
        capped at its dense size (name, ranks before and
        after, stored weights, relative errors; pass ``cap_at_dense=False`` to keep
        the ranks asked for), when a Tucker layer stores more weights than its dense
        weight (``cap_at_dense=False``, or a layer so thin that even its minimum ranks
        do not fit: keep it dense with ``skip``), when no module is converted, and
        once listing every Linear- or Conv-like module left dense that ``skip`` did
        not name, with the reason (fix: :func:`register_tucker_layer`, or ``skip``).

    Notes
    -----
    The cap holds for the initial ranks only. Rank-adaptive training
    (:class:`~tuckerflow.nn.TDLRT` with a tolerance) may grow a layer's ranks up to
    its ``max_rank`` (default: the full mode sizes) and thereby past its dense size
    again. To keep the model small during training, give ``TDLRT`` a parameter
    ``budget`` or bound the ranks with ``max_rank``, and check
    :func:`compression_report` afterwards.

    References
    ----------
    .. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 2000.
    .. [2] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.

    Examples
    --------
    >>> from tuckerflow.nn import tuckerize
    >>> from tuckerflow.nn.models import LeNet5
    >>> model = tuckerize(LeNet5(), rank=4, skip=("classifier",))
    >>> type(model.features[3]).__name__, type(model.classifier[1]).__name__
    ('TuckerConv2d', 'Linear')
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(cap_at_dense, bool):
        raise TypeError(f"cap_at_dense must be True or False, got {cap_at_dense!r}")
    if budget is not None and (rank is not None or tol is not None):
        raise ValueError("give one of rank, tol and budget")
    skipped = _select(model, skip, "skip")
    groups = _unique_modules(model)
    # a module is kept dense when any of its names is skipped
    targets, left = _plan(groups, lambda names: not any(n in skipped for n in names))
    _check_ties(groups, targets, "tuckerize", _TIE_FIX_TUCKERIZE)
    if not targets:
        warnings.warn("tuckerize: no Linear or Conv module to convert", stacklevel=2)
    options = {
        "min_rank": min_rank,
        "max_rank": max_rank,
        "adaptive_modes": adaptive_modes,
        "implementation": implementation,
    }
    sources = [
        (names, module, cls, _fresh_copy(module) if init == "random" else module)
        for names, module, cls in targets
    ]
    ranks = [rank] * len(sources)
    if budget is not None:
        ranks = _budget_ranks(
            [dense_weight(source) for *_, source in sources],
            budget,
            options,
            budget_criterion,
        )
    # build every layer before replacing any: a rejected option leaves the model as is
    built, capped, oversized = [], [], []
    for (names, module, cls, source), layer_rank in zip(sources, ranks):
        new = cls.from_dense(source, rank=layer_rank, tol=tol, **options)
        if isinstance(new, TuckerMultiheadAttention):
            # out_proj stays the model's own module: converted (or skipped) as the
            # Linear it is, like every other module
            new.out_proj = module.out_proj
        layer, weight = main_tucker_layer(new), dense_weight(source)
        name = names[0] if layer is new else f"{names[0]}.in_proj"
        if layer.parameter_count() > layer.dense_parameter_count():
            cap = _break_even_rank(layer, weight) if cap_at_dense else None
            if cap is None:
                floor = _floor_rank(layer)
                reason = (
                    "cap_at_dense=False"
                    if not cap_at_dense
                    else f"no ranks fit: even the minimum ranks {floor} store "
                    f"{_count(layer, floor):,}"
                )
                oversized.append(_oversized_line(name, layer, reason))
            else:
                capped.append(_cap(name, layer, cap, weight.detach()))
        built.append((names, new))
    for names, new in built:  # parents before children (a MultiheadAttention's
        _install(model, names, new)  # out_proj goes into the new attention module)
    asked = rank is not None or tol is not None or budget is not None
    if capped and asked:
        warnings.warn(
            f"tuckerize: capped the ranks of {len(capped)} layer(s) that would "
            "store more weights than their dense weight (the truncated HOSVD at the "
            "capped ranks; the initial error rises):\n"
            + "\n".join(capped)
            + "\nPass cap_at_dense=False to keep the ranks asked for (the model then "
            "grows), or skip=(name, ...) to keep a layer dense.",
            UserWarning,
            stacklevel=2,
        )
    if oversized:
        warnings.warn(
            f"tuckerize: {len(oversized)} Tucker layer(s) store more weights than the "
            "dense weight they replace:\n"
            + "\n".join(oversized)
            + "\nKeep such a layer dense with skip=(name, ...), or ask for smaller "
            "ranks (rank, tol, min_rank).",
            UserWarning,
            stacklevel=2,
        )
    _left_dense_warning(
        "tuckerize",
        left,
        "Register a Tucker layer for a type with tuckerflow.nn.register_tucker_layer"
        "(DenseType, TuckerType), or keep a module dense on purpose with "
        "skip=(name, ...) (no warning then).",
    )
    return model


_TIE_FIX_TUCKERIZE = (
    "Keep them dense with skip={names!r}, or untie them first (give each module "
    "its own nn.Parameter). One module used under several names is no problem: one "
    "Tucker layer replaces it under every name."
)


def _count(layer: TuckerLayer, rank: tuple[int, ...]) -> int:
    from tuckerflow.ranks import parameter_count

    return parameter_count(layer.weight_shape, rank)


def _floor_rank(layer: TuckerLayer) -> tuple[int, ...]:
    """The smallest ranks the cap may use: ``min_rank`` on the adaptive modes (never
    above the current rank), the current rank on the fixed modes."""
    return tuple(
        min(low, r) if mode in layer.adaptive_modes else r
        for mode, (low, r) in enumerate(zip(layer.min_rank, layer.rank))
    )


def _break_even_rank(layer: TuckerLayer, weight: torch.Tensor) -> tuple | None:
    """Ranks at most ``layer.rank`` whose Tucker tensor stores at most the dense
    size and keeps the most singular-value energy of ``weight``; None if even the
    floor ranks are too large."""
    import tuckerflow as tf
    from tuckerflow.hosvd import core_singular_vectors
    from tuckerflow.ranks import ranks_from_global_budget

    dense = layer.dense_parameter_count()
    low, high = _floor_rank(layer), layer.rank
    if _count(layer, low) > dense:
        return None
    # float16/bfloat16 have no SVD: the spectra in float32
    weight = weight.detach().to(factorization_dtype(weight.dtype))
    with tf.use_backend("pytorch"):
        _, spectra = core_singular_vectors(
            weight, skip=[lo == hi for lo, hi in zip(low, high)]
        )
    problem = {
        "spectra": [None if s is None else s.cpu().numpy() for s in spectra],
        "shape": layer.weight_shape,
        "min_rank": low,
        "max_rank": high,
        "norm": float(weight.norm()),
    }
    (rank,) = ranks_from_global_budget([problem], dense, criterion="energy")
    # a mode rank above the product of the others adds weights and no accuracy (a
    # matrix's two ranks, e.g.): the layer's own rule lowers it
    return layer._complete_rank(rank, layer.adaptive_modes)


def _relative_error(layer: TuckerLayer, weight: torch.Tensor) -> float:
    with torch.no_grad():
        norm = float(weight.norm())
        return float((layer.weight - weight).norm()) / norm if norm else 0.0


def _cap(name: str, layer: TuckerLayer, rank: tuple, weight: torch.Tensor) -> str:
    """Truncate ``layer`` (a truncated HOSVD) to ``rank`` by keeping its leading
    singular directions; return the warning line."""
    before, count_before = layer.rank, layer.parameter_count()
    error_before = _relative_error(layer, weight)
    core = layer.core.detach()[tuple(slice(0, r) for r in rank)]
    factors = [f.detach()[:, :r] for f, r in zip(layer.factors, rank)]
    layer.set_tucker((core, factors))
    return (
        f"  {name}: rank {before} -> {layer.rank}, {count_before:,} -> "
        f"{layer.parameter_count():,} stored weights (dense "
        f"{layer.dense_parameter_count():,}), relative error {error_before:.3g} -> "
        f"{_relative_error(layer, weight):.3g}"
    )


def _oversized_line(name: str, layer: TuckerLayer, reason: str) -> str:
    count, dense = layer.parameter_count(), layer.dense_parameter_count()
    return (
        f"  {name}: rank {layer.rank} stores {count:,} weights, the dense weight "
        f"{dense:,} ({count / dense:.1%}; {reason})"
    )


def _budget_ranks(
    weights, budget: int, options: dict, criterion: str
) -> list[tuple[int, ...]]:
    """Initial ranks of all layers from one budget, on the HOSVD spectra."""
    import tuckerflow as tf
    from tuckerflow.hosvd import core_singular_vectors
    from tuckerflow.ranks import ranks_from_global_budget

    adaptive = options["adaptive_modes"]
    adaptive = (0, 1) if adaptive is None else tuple(adaptive)
    floor = options["min_rank"] or 1
    problems = []
    for weight in weights:
        # float16/bfloat16 have no SVD: the spectra in float32
        weight = weight.detach().to(factorization_dtype(weight.dtype))
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
    reset = getattr(fresh, "reset_parameters", None) or getattr(
        fresh, "_reset_parameters", None
    )
    if reset is None:
        raise TypeError(
            f"init='random' needs {type(module).__name__}.reset_parameters() to draw "
            "a fresh weight"
        )
    reset()
    return fresh


@dataclasses.dataclass
class CompressionReport:
    """Per-layer ranks and parameter counts of the Tucker layers of a model.

    Attributes
    ----------
    rows : list of dict
        ``name, type, shape, rank, parameters, dense_parameters, aliases`` (the
        layer's other names in the model: a shared layer is one row).
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
        """``1 - compressed / dense`` over the factorized layers (the paper's rate);
        negative when the Tucker layers store more weights than the dense ones."""
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
        if self.compression >= 0:
            rate = f"compression {self.compression:.2%}"
        else:
            rate = (
                f"no compression: {self.compressed / self.dense:.2f} times the dense "
                f"weights, {-self.compression:.2%} more"
            )
        lines.append(
            f"Tucker layers: {self.compressed:,} of {self.dense:,} weights "
            f"({rate}); model parameters {self.total_parameters:,}"
        )
        shared = [r for r in self.rows if r.get("aliases")]
        if shared:
            lines.append(
                "shared layers, counted once: "
                + "; ".join(f"{r['name']} = {', '.join(r['aliases'])}" for r in shared)
            )
        larger = [r for r in self.rows if r["parameters"] > r["dense_parameters"]]
        if larger:
            lines.append(
                f"{len(larger)} layer(s) store more weights than their dense weight: "
                + ", ".join(
                    f"{r['name']} ({r['parameters']:,} > {r['dense_parameters']:,})"
                    for r in larger
                )
            )
        return "\n".join(lines)


def stored_parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Elements of the model's parameters, without the TDLRT gradient carriers.

    ``weight_delta`` (see :class:`~tuckerflow.nn.TuckerLayer`) has the dense weight's
    shape but stores one element and is no weight: it is left out, so the count is
    the same before and after a :class:`~tuckerflow.nn.TDLRT` optimizer is built.

    Parameters
    ----------
    model : nn.Module
    trainable_only : bool, default False
        Count only the parameters with ``requires_grad``.

    Returns
    -------
    int
        Number of stored parameter entries (each shared parameter once).
    """
    carriers = {
        id(module.weight_delta)
        for module in model.modules()
        if isinstance(module, TuckerLayer) and module.weight_delta is not None
    }
    return sum(
        p.numel()
        for p in model.parameters()
        if id(p) not in carriers and (p.requires_grad or not trainable_only)
    )


def compression_report(model: nn.Module) -> CompressionReport:
    """Ranks, parameter counts and the compression rate ``1 - c/f`` of a model.

    ``c`` counts the stored Tucker weights (``prod(r) + sum(n_i r_i)`` per layer),
    ``f`` the dense weights they replace; biases and dense layers are not included
    (``total_parameters`` counts everything). A layer used under several names (tied
    weights kept by :func:`tuckerize`) is one row, counted once; its other names are
    in the row's ``aliases``. The rate is negative when ``c > f``;
    the printed report then says "no compression" and names every layer that stores
    more than its dense weight.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    CompressionReport
    """
    rows = []
    for module, names in _unique_modules(model):
        if isinstance(module, TuckerLayer):
            rows.append(
                {
                    "name": names[0] or type(module).__name__,
                    "type": type(module).__name__,
                    "shape": module.weight_shape,
                    "rank": module.rank,
                    "parameters": module.parameter_count(),
                    "dense_parameters": module.dense_parameter_count(),
                    "aliases": tuple(names[1:]),
                }
            )
    total = stored_parameter_count(model)
    return CompressionReport(
        rows,
        sum(r["parameters"] for r in rows),
        sum(r["dense_parameters"] for r in rows),
        total,
    )
