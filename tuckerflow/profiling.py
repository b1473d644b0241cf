"""Optional per-phase timing of the integrators.

The steps mark their phases with :func:`phase`; nothing is measured unless a caller
opens :func:`record_phases`, so the cost when not profiling is one context-variable
lookup per phase.

Examples
--------
>>> import numpy as np, tuckerflow as tf
>>> from tuckerflow.profiling import record_phases
>>> Y = tf.random_tucker((20, 20, 20), 4, random_state=0)
>>> with record_phases() as seconds:
...     _ = tf.tdlrt_step(Y, np.ones((20, 20, 20)), 0.1, tol=0.1)
>>> sorted(seconds)
['augmentation', 'contractions', 'core step', 'truncation']
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["record_phases", "phase"]

_RECORDER: contextvars.ContextVar = contextvars.ContextVar("recorder", default=None)


@contextmanager
def record_phases(sync: Callable[[], None] | None = None) -> Iterator[dict]:
    """Collect wall-clock seconds per phase of every step run inside the block.

    Parameters
    ----------
    sync : callable, optional
        Called before every clock reading, e.g. ``torch.cuda.synchronize`` so that
        asynchronous GPU work is attributed to the right phase.

    Yields
    ------
    dict
        ``{phase name: accumulated seconds}``, filled as the steps run.
    """
    seconds: defaultdict[str, float] = defaultdict(float)
    token = _RECORDER.set((seconds, sync))
    try:
        yield seconds
    finally:
        _RECORDER.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Attribute the enclosed code to ``name`` when a recorder is active.

    Parameters
    ----------
    name : str
        Phase name, the key of the seconds in :func:`record_phases`'s dict.
    """
    active = _RECORDER.get()
    if active is None:
        yield
        return
    seconds, sync = active
    if sync is not None:
        sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        if sync is not None:
            sync()
        seconds[name] += time.perf_counter() - start
