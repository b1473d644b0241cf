"""Backend selection and the few backend-neutral helpers the core needs.

All numerical code in :mod:`tuckerflow` calls ``tl.*`` and ``tl.tenalg.*`` only, so it
runs on whatever TensorLy backend is active. :func:`use_backend` switches the backend
for one block of code without leaving any trace on the caller's (or another thread's)
backend state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tensorly as tl
from tensorly.backend import BackendManager as _MANAGER

__all__ = ["use_backend", "available_backends"]


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block of code with the TensorLy backend ``name``, for this thread only.

    A thin wrapper around :func:`tensorly.backend_context` (with
    ``local_threadsafe=True``). TensorLy's context manager, on exit, writes the old
    backend into the process-wide default as well; this wrapper undoes that, so the
    global default, other threads, and this thread's own setting are exactly as they
    were before the block.

    Parameters
    ----------
    name : {'numpy', 'pytorch', 'cupy', 'jax', 'tensorflow', 'paddle'}
        TensorLy backend to activate inside the block (tuckerflow is tested on
        numpy, pytorch and cupy; see :func:`available_backends`).

    Raises
    ------
    ValueError
        If ``name`` is not a TensorLy backend.
    ImportError
        If the backend's array library is not installed.

    Examples
    --------
    >>> import tensorly as tl
    >>> from tuckerflow import use_backend
    >>> with use_backend("numpy"):
    ...     tl.get_backend()
    'numpy'
    """
    if name not in _MANAGER.available_backend_names:
        raise ValueError(
            f"backend must be one of {_MANAGER.available_backend_names}, got {name!r}"
        )
    local_state = _MANAGER._THREAD_LOCAL_DATA.__dict__
    had_local = "backend" in local_state
    old_local = local_state.get("backend")
    context = tl.backend_context(name, local_threadsafe=True)
    context.__enter__()  # changes nothing if it raises
    try:
        yield
    finally:
        # TensorLy's exit rewrites the process-wide default; keep whatever it is now
        # (another thread may legitimately have changed it meanwhile)
        global_state = (_MANAGER._backend, _MANAGER._default_backend)
        context.__exit__(None, None, None)
        _MANAGER._backend, _MANAGER._default_backend = global_state
        if had_local:
            local_state["backend"] = old_local
        else:
            local_state.pop("backend", None)


def available_backends() -> list[str]:
    """Names of the TensorLy backends whose array library imports here.

    Returns
    -------
    list of str
        Subset of ``['numpy', 'pytorch', 'cupy']`` that can be activated.
    """
    names = []
    for name in ("numpy", "pytorch", "cupy"):
        try:
            _MANAGER.load_backend(name)
        except Exception:  # ImportError, or cupy without a usable GPU
            continue
        names.append(name)
    return names


def plain_context(tensor: Any) -> dict:
    """``tl.context(tensor)`` without ``requires_grad``.

    New arrays built from it (``tl.zeros(shape, **ctx)``) must never become autograd
    leaves, whatever the tensor they copy dtype and device from.
    """
    context = dict(tl.context(tensor))
    context.pop("requires_grad", None)
    return context


def to_float(scalar: Any) -> float:
    """Convert a 0-d tensor of any backend to a Python float."""
    return float(tl.to_numpy(scalar))


def machine_epsilon(tensor: Any) -> float:
    """Machine epsilon of the tensor's floating-point dtype."""
    return float(tl.finfo(tensor.dtype).eps)


def is_finite(tensor: Any) -> bool:
    """Whether every entry of ``tensor`` is finite (one reduction, one sync)."""
    if math.prod(tl.shape(tensor)) == 0:
        return True
    # max propagates NaN on every backend; inf stays inf
    return math.isfinite(to_float(tl.max(tl.abs(tensor))))
