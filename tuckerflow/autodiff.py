"""Gradients from a scalar value function, on backends with automatic differentiation.

The core never imports an autodiff framework. Each backend's provider lives with the
adapter code for that framework and is imported only when asked for:
``pytorch`` -> :mod:`tuckerflow.nn.autodiff`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import tensorly as tl

__all__ = ["value_and_grad"]

_PROVIDERS = {"pytorch": "tuckerflow.nn.autodiff"}


def value_and_grad(value_fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    """Turn ``value_fn(tensor, *args) -> scalar`` into ``objective -> (value, grad)``.

    The backend active when the returned objective is *called* decides which autodiff
    engine computes the gradient.

    Parameters
    ----------
    value_fn : callable
        Differentiable scalar function of a dense tensor of the active backend.

    Returns
    -------
    callable
        ``objective(tensor, *args) -> (float, gradient tensor)``.

    Raises
    ------
    TypeError
        If ``value_fn`` is not callable.
    NotImplementedError
        Raised by the returned objective when it is called on a backend without a
        provider (e.g. numpy).
    """
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable, got {type(value_fn).__name__}")

    def objective(tensor: Any, *args: Any) -> tuple[Any, Any]:
        backend = tl.get_backend()
        if backend not in _PROVIDERS:
            raise NotImplementedError(
                f"value_fn needs a backend with automatic differentiation "
                f"({', '.join(sorted(_PROVIDERS))}); the active backend is "
                f"{backend!r}: pass objective(tensor) -> (value, grad) instead, or "
                "run under tuckerflow.use_backend('pytorch')"
            )
        provider = importlib.import_module(_PROVIDERS[backend])
        return provider.value_and_grad(value_fn)(tensor, *args)

    return objective
