"""Shared fixtures: every backend-neutral test runs on each available backend and dtype.

Backends: numpy always, pytorch when torch imports, cupy when CUDA is usable (skipped
with a reason otherwise). Tolerances derive from the dtype's machine epsilon.
"""

from __future__ import annotations

import os

import pytest
import tensorly as tl
from hypothesis import HealthCheck, settings

import tuckerflow as tf

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _cupy_reason() -> str | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "cupy is installed but no CUDA device is visible"
    except Exception as error:  # ImportError, CUDARuntimeError, ...
        return f"cupy backend unavailable: {type(error).__name__}: {error}"
    return None


def _torch_reason() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        return f"pytorch backend unavailable: {error}"
    return None


BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param(
        "pytorch",
        id="pytorch",
        marks=pytest.mark.skipif(
            _torch_reason() is not None, reason=str(_torch_reason())
        ),
    ),
    pytest.param(
        "cupy",
        id="cupy",
        marks=pytest.mark.skipif(
            _cupy_reason() is not None, reason=str(_cupy_reason())
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Activate one TensorLy backend for the duration of a test."""
    with tf.use_backend(request.param):
        yield request.param


@pytest.fixture(params=["float64", "float32"])
def dtype(request, backend):
    """A backend dtype object (e.g. ``torch.float32``) of the active backend.

    ``tl.float64`` is NumPy's whatever the backend (a static import in TensorLy
    0.10); ``tl.backend.float64`` dispatches to the active backend.
    """
    return getattr(tl.backend, request.param)
