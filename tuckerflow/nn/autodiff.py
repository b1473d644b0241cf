"""PyTorch provider for :func:`tuckerflow.autodiff.value_and_grad`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["value_and_grad"]


def value_and_grad(value_fn: Callable[..., Any]) -> Callable[..., tuple[float, Any]]:
    """``objective(tensor, *args) -> (float, grad)`` computed by ``torch.autograd``.

    The input is detached and a fresh leaf is differentiated, so nothing outside the
    call keeps a graph alive.
    """

    def objective(tensor: torch.Tensor, *args: Any) -> tuple[float, torch.Tensor]:
        leaf = tensor.detach().requires_grad_(True)
        with torch.enable_grad():
            value = value_fn(leaf, *args)
            if not (isinstance(value, torch.Tensor) and value.numel() == 1):
                raise TypeError(
                    "value_fn must return a scalar torch tensor, got "
                    f"{type(value).__name__}"
                )
            (grad,) = torch.autograd.grad(value, leaf)
        return float(value.detach()), grad.detach()

    return objective
