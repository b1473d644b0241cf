"""Atomic checkpoints of a model and its optimizer (ranks included)."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint"]

FORMAT = 1


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **extra: Any,
) -> pathlib.Path:
    """Write model, optimizer, RNG state and ``extra`` to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed to disk, and then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows), so a process
    killed mid-save leaves the previous checkpoint intact.

    Parameters
    ----------
    path : str or path
    model : nn.Module
    optimizer : torch.optim.Optimizer, optional
    **extra
        Anything else to store (epoch, step, metrics); plain Python values and tensors.

    Returns
    -------
    pathlib.Path
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "extra": extra,
    }
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
    map_location: Any = None,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``extra``.

    Tucker layers take the stored ranks whatever ranks the freshly built model has.
    A checkpoint of another architecture raises a ValueError/RuntimeError naming the
    mismatching layer.
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tuckerflow checkpoint (format {FORMAT})")
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        torch.set_rng_state(payload["rng"])
    return payload["extra"]
