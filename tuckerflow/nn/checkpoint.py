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
        Destination file; its folder is created if needed, an existing file is
        replaced.
    model : nn.Module
        Saved as ``model.state_dict()`` (Tucker layers store their current ranks).
    optimizer : torch.optim.Optimizer, optional
        Saved as ``optimizer.state_dict()``.
    **extra
        Anything else to store (epoch, step, metrics); plain Python values and tensors
        (what ``torch.load(..., weights_only=True)`` can read back).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        If the folder cannot be created or written (the temporary file is removed
        and an existing checkpoint at ``path`` is left intact). Any error of
        ``torch.save`` is re-raised the same way.
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

    Parameters
    ----------
    path : str or path
        A file written by :func:`save_checkpoint`.
    model : nn.Module
        Loaded in place with ``load_state_dict`` (strict).
    optimizer : torch.optim.Optimizer, optional
        Loaded in place with ``load_state_dict``; create it on ``model`` before
        loading (:class:`~tuckerflow.nn.TDLRT` keeps the same ``Parameter`` objects
        when ranks change).
    restore_rng : bool, default True
        Restore torch's CPU random-number generator state saved with the checkpoint.
    map_location : optional
        Passed to ``torch.load`` (e.g. ``"cpu"`` to load a GPU checkpoint on a
        machine without one).

    Returns
    -------
    dict
        The ``extra`` keyword arguments given to :func:`save_checkpoint`.

    Raises
    ------
    ValueError
        If ``path`` holds a torch file that is no tuckerflow checkpoint of this
        format, holds no optimizer state while ``optimizer`` is given, or a Tucker
        layer's stored core or factors do not fit its weight shape (another
        architecture).
    RuntimeError
        From ``load_state_dict``: missing or unexpected keys, or a size mismatch of
        an ordinary parameter.
    FileNotFoundError
        If ``path`` does not exist. A file that is no torch file at all fails in
        ``torch.load`` with its own error (``UnpicklingError``, ``KeyError``, ...).
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
