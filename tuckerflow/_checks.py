"""Input validation shared by the public functions.

Every check raises before any computation, so a rejected call changes nothing. The
messages name the argument and the offending value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import tensorly as tl

from .backend import is_finite, machine_epsilon, plain_context, to_float

__all__: list[str] = []


def check_tensor(tensor: Any, name: str) -> None:
    """Raise TypeError unless ``tensor`` belongs to the active TensorLy backend."""
    if not tl.is_tensor(tensor):
        raise TypeError(
            f"{name} must be a tensor of the active TensorLy backend "
            f"{tl.get_backend()!r}, got "
            f"{type(tensor).__module__}.{type(tensor).__name__}; "
            "convert it with tl.tensor(...) or activate its backend with "
            "tuckerflow.use_backend(...)"
        )


def check_finite(tensor: Any, name: str) -> None:
    """Raise ValueError if ``tensor`` holds NaN or Inf."""
    if not is_finite(tensor):
        raise ValueError(f"{name} contains NaN or Inf entries")


def check_floating(tensor: Any, name: str) -> None:
    """Raise TypeError unless ``tensor`` has a real floating-point dtype."""
    try:
        tl.finfo(tensor.dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must have a floating-point dtype, got {tensor.dtype}"
        ) from error
    if "complex" in str(tensor.dtype):
        raise TypeError(f"{name} must be real, got dtype {tensor.dtype}")


def check_dense(
    tensor: Any, name: str, *, min_ndim: int = 2, finite: bool = True
) -> None:
    """Validate a dense tensor argument: backend, dtype, order, finiteness.

    ``finite=False`` skips the (one full pass) finiteness check for callers that check
    a contraction of the tensor instead.
    """
    check_tensor(tensor, name)
    if getattr(tensor, "is_sparse", False) or getattr(tensor, "is_sparse_csr", False):
        raise TypeError(
            f"{name} is a sparse tensor: the steps contract a dense gradient; for a "
            "sparse gradient (e.g. tensor completion) compute the projected gradients "
            "from its entries and call tuckerflow.parallel_bug_update (how-to: "
            "'Sparse gradients')"
        )
    check_floating(tensor, name)
    if tl.ndim(tensor) < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} modes, got shape {tl.shape(tensor)}"
        )
    if finite:
        check_finite(tensor, name)


def orthonormality_error(factor: Any) -> float:
    """``max |U^T U - I|``: the cheap (n r^2) orthonormality defect of a factor."""
    rank = tl.shape(factor)[1]
    gram = tl.dot(tl.transpose(factor), factor)
    return to_float(tl.max(tl.abs(gram - tl.eye(rank, **plain_context(factor)))))


def orthonormality_tolerance(factor: Any) -> float:
    """Accepted orthonormality defect: ``sqrt(eps)`` of the dtype.

    Rounding leaves a defect of a few ``eps`` after QR or SVD, and our integrators keep
    it there; half the digits is far above that and far below any factor that is not
    orthonormal by construction (a random Gaussian matrix has a defect of order one).
    """
    return math.sqrt(machine_epsilon(factor))


def check_tucker(
    tucker: Any, name: str = "tucker", *, orthonormal: bool = True
) -> tuple[Any, list[Any]]:
    """Validate an orthonormal Tucker tensor and return ``(core, factors)``.

    Accepts a :class:`tensorly.tucker_tensor.TuckerTensor` or any ``(core, factors)``
    pair. Checks backend, dtype, shapes, finiteness and (optionally) orthonormality of
    the factors.
    """
    try:
        core, factors = tucker
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a TuckerTensor or a (core, factors) pair, "
            f"got {type(tucker).__name__}"
        ) from error
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise TypeError(
            f"{name} factors must be a list of matrices, got {type(factors).__name__}"
        )
    factors = list(factors)
    check_tensor(core, f"{name} core")
    check_floating(core, f"{name} core")
    order = tl.ndim(core)
    if order < 2:
        raise ValueError(
            f"{name} core must have at least 2 modes, got shape {tl.shape(core)}"
        )
    if len(factors) != order:
        raise ValueError(
            f"{name} has a core with {order} modes but {len(factors)} factors"
        )
    core_shape = tl.shape(core)
    for mode, factor in enumerate(factors):
        label = f"{name} factors[{mode}]"
        check_tensor(factor, label)
        if tl.ndim(factor) != 2:
            raise ValueError(f"{label} must be a matrix, got shape {tl.shape(factor)}")
        if factor.dtype != core.dtype:
            raise TypeError(
                f"{label} has dtype {factor.dtype} but the core has {core.dtype}; "
                "use one dtype for core and factors"
            )
        rows, cols = tl.shape(factor)
        if cols != core_shape[mode]:
            raise ValueError(
                f"{label} has shape {(rows, cols)} but the core has size "
                f"{core_shape[mode]} in mode {mode}: factors[{mode}].shape[1] must "
                f"equal core.shape[{mode}]"
            )
        if orthonormal and cols > rows:
            raise ValueError(
                f"{label} has shape {(rows, cols)}: an orthonormal factor cannot have "
                f"more columns than rows (rank {cols} > mode size {rows})"
            )
    check_finite(core, f"{name} core")
    for mode, factor in enumerate(factors):
        check_finite(factor, f"{name} factors[{mode}]")
    if orthonormal:
        for mode, factor in enumerate(factors):
            defect = orthonormality_error(factor)
            tolerance = orthonormality_tolerance(factor)
            if not defect <= tolerance:
                raise ValueError(
                    f"{name} factors[{mode}] is not orthonormal: max|U^T U - I| = "
                    f"{defect:.2e} exceeds {tolerance:.1e} (sqrt of the {factor.dtype} "
                    "machine epsilon); orthonormalize it, e.g. with tuckerflow.hosvd"
                )
    return core, factors


def tucker_shape(factors: Sequence[Any]) -> tuple[int, ...]:
    """Shape of the full tensor represented by ``factors``."""
    return tuple(tl.shape(factor)[0] for factor in factors)


def _as_int(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{label} must be an integer, got {value!r}")
    return int(value)


def _per_mode(value: Any, order: int, label: str) -> tuple[tuple[int, ...], bool]:
    """Expand an int or a sequence of ints; returns (values, was_scalar)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value),) * order, True
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{label} must be an int or a sequence of {order} ints, got {value!r}"
        )
    if len(value) != order:
        raise ValueError(
            f"{label} must have one entry per mode ({order}), "
            f"got {len(value)}: {tuple(value)}"
        )
    return tuple(_as_int(v, f"{label}[{i}]") for i, v in enumerate(value)), False


def available_ranks(dims: Sequence[int]) -> tuple[int, ...]:
    """Largest meaningful rank per mode: ``min(dims[i], prod of the other dims)``."""
    total = math.prod(dims)
    return tuple(min(d, total // d) for d in dims)


def check_rank(
    rank: Any,
    dims: Sequence[int],
    shape: Sequence[int],
    *,
    name: str = "rank",
    augmented_from: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Validate an explicit target rank against the available ``dims``.

    ``shape`` is the full tensor's shape (mode sizes) and ``dims`` the sizes of what is
    being truncated (the tensor itself, or a Tucker core). An int applies to every mode
    and is capped at what each mode offers; a sequence is taken literally and must fit.
    ``augmented_from`` is the rank of the point before an augmented step (or a
    retraction), when ``dims`` are the augmented sizes ``min(2 r_i, n_i)``: a rank above
    them is then explained as the limit of one step.
    """
    order = len(dims)
    values, scalar = _per_mode(rank, order, name)
    bound = available_ranks(dims)
    result = []
    for mode, value in enumerate(values):
        label = name if scalar else f"{name}[{mode}]"
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
        if scalar:
            result.append(min(value, bound[mode]))
            continue
        if value > shape[mode]:
            raise ValueError(
                f"{label}={value} exceeds the mode size {shape[mode]} of mode {mode} "
                f"(shape {tuple(shape)}): a mode of size {shape[mode]} has rank at "
                f"most {shape[mode]}; ask for {label} <= {shape[mode]}, or pass an int "
                "rank, which is capped at every mode's size"
            )
        if value > dims[mode] and augmented_from is not None:
            raise ValueError(
                _above_augmented(label, value, mode, dims, shape, augmented_from)
            )
        if value > dims[mode]:
            raise ValueError(
                f"{label}={value} exceeds the current rank {dims[mode]} of mode "
                f"{mode}: truncation cannot increase a rank; ask for {label} <= "
                f"{dims[mode]}"
            )
        if value > bound[mode]:
            raise ValueError(
                f"{label}={value} exceeds {bound[mode]}, the product of the other "
                f"modes' sizes {tuple(d for i, d in enumerate(dims) if i != mode)}: no "
                "tensor of this shape has a larger multilinear rank in that mode"
            )
        result.append(value)
    return tuple(result)


def _above_augmented(
    label: str,
    value: int,
    mode: int,
    dims: Sequence[int],
    shape: Sequence[int],
    before: Sequence[int],
) -> str:
    """Why a step cannot reach ``value``: its augmented basis is only ``dims[mode]``."""
    size, rank, limit = shape[mode], before[mode], dims[mode]
    formula = (
        f"min(2*{rank}, {size}) = {limit}"
        if limit == min(2 * rank, size)
        else f"{limit}"
    )
    return (
        f"{label}={value} exceeds the augmented rank {limit} of mode {mode}: the "
        "truncation after an augmented step (or a retraction) keeps at most the "
        f"augmented basis, whose size is min(2*r_{mode}, n_{mode}) = {formula} for "
        f"the current rank r_{mode}={rank} (the current basis plus at most as many "
        "new directions), so one step can at most double a rank; ask for "
        f"{label} <= {limit} in this step and raise it over the following steps, or "
        "pass tol to let the ranks grow on their own"
    )


def check_rank_bounds(
    min_rank: Any, max_rank: Any, dims: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate ``min_rank``/``max_rank`` and cap them at what ``dims`` offers."""
    order = len(shape)
    bound = available_ranks(dims)
    lows, low_scalar = _per_mode(min_rank, order, "min_rank")
    if max_rank is None:
        highs, high_scalar = tuple(shape), True
    else:
        highs, high_scalar = _per_mode(max_rank, order, "max_rank")
    for label, values, scalar in (
        ("min_rank", lows, low_scalar),
        ("max_rank", highs, high_scalar),
    ):
        for mode, value in enumerate(values):
            where = label if scalar else f"{label}[{mode}]"
            if value < 1:
                raise ValueError(f"{where} must be >= 1, got {value}")
            if not scalar and value > shape[mode]:
                raise ValueError(
                    f"{where}={value} exceeds the mode size {shape[mode]} of mode "
                    f"{mode} "
                    f"(shape {tuple(shape)})"
                )
    for mode in range(order):
        if lows[mode] > highs[mode]:
            raise ValueError(
                f"min_rank {lows[mode]} exceeds max_rank {highs[mode]} in mode {mode}"
            )
    lows = tuple(min(low, b) for low, b in zip(lows, bound))
    highs = tuple(min(high, b) for high, b in zip(highs, bound))
    return lows, highs


def check_tol(tol: Any, relative: bool, *, name: str = "tol") -> float:
    """Validate a truncation tolerance: [0, 1) when relative, >= 0 otherwise."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {tol!r}")
    tol = float(tol)
    if not math.isfinite(tol):
        raise ValueError(f"{name} must be finite, got {tol}")
    if relative and not 0.0 <= tol < 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1) when relative=True (a fraction of the norm), "
            f"got {tol}"
        )
    if not relative and tol < 0.0:
        raise ValueError(f"{name} must be >= 0, got {tol}")
    return tol


def _describe(value: Any) -> str:
    """``numpy.ndarray of shape (3, 4)``, ``tuple of 3 items``, ``float 0.5``."""
    kind = type(value)
    if tl.is_tensor(value) or hasattr(value, "shape"):
        return f"{kind.__module__}.{kind.__name__} of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{kind.__name__} of {len(value)} items"
    text = repr(value)
    return f"{kind.__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_objective_output(output: Any, name: str = "objective") -> tuple[float, Any]:
    """Validate what :func:`~tuckerflow.integrate`'s objective returned.

    It must be a ``(value, grad)`` pair: a real scalar (a number or a one-element
    tensor of any backend) and a tensor of the active backend. Returns
    ``(float(value), grad)``; the gradient's shape, dtype and finiteness are left to
    the caller and the step.
    """
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        raise TypeError(
            f"{name} must return a (value, grad) pair -- the objective value and its "
            f"Euclidean gradient with respect to the full tensor -- got "
            f"{_describe(output)}; to differentiate a scalar function automatically "
            "instead, pass integrate(None, ..., value_fn=f) on the pytorch backend"
        )
    value, grad = output
    number = None
    if not isinstance(value, (str, bytes)):
        try:
            number = to_float(value) if tl.is_tensor(value) else float(value)
        except (TypeError, ValueError):
            number = None
    if number is None:
        raise TypeError(
            f"{name} must return (value, grad) with value a real scalar (a number or "
            f"a one-element tensor), got {_describe(value)} as value; check the order "
            "of the pair"
        )
    check_tensor(grad, f"the gradient returned by {name}")
    return number, grad


def check_positive(value: Any, name: str) -> float:
    """Validate a finite, strictly positive real number (a learning rate, a step)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value
