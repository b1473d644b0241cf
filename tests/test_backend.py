"""use_backend leaves every piece of TensorLy's backend state exactly as it found it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorly as tl
from tensorly.backend import BackendManager

import tuckerflow as tf

torch = pytest.importorskip("torch")


def _state():
    local = BackendManager._THREAD_LOCAL_DATA.__dict__
    return (
        "backend" in local,
        getattr(local.get("backend"), "backend_name", None),
        BackendManager._backend.backend_name,
        BackendManager._default_backend,
    )


def test_switches_inside_and_restores_outside():
    before = _state()
    with tf.use_backend("pytorch"):
        assert tl.get_backend() == "pytorch"
        assert tl.is_tensor(torch.zeros(2))
        assert not tl.is_tensor(np.zeros(2))
    assert _state() == before
    assert tl.get_backend() == "numpy"


def test_nested_and_exception_safe():
    before = _state()
    with pytest.raises(RuntimeError, match="boom"):
        with tf.use_backend("pytorch"):
            with tf.use_backend("numpy"):
                assert tl.get_backend() == "numpy"
            assert tl.get_backend() == "pytorch"
            raise RuntimeError("boom")
    assert _state() == before


def test_does_not_touch_global_default_seen_by_other_threads():
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        with tf.use_backend("pytorch"):
            seen["worker_inside"] = tl.get_backend()
            inside.set()
            release.wait(10)
        seen["worker_after"] = tl.get_backend()

    before = _state()
    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(10)
    # while the worker is inside its block, this thread still sees its own backend
    seen["main_during"] = tl.get_backend()
    release.set()
    thread.join(10)
    assert seen["worker_inside"] == "pytorch"
    assert seen["main_during"] == "numpy"
    assert seen["worker_after"] == "numpy"
    assert _state() == before


def test_keeps_a_concurrent_global_change_made_by_another_thread():
    """A worker's exit must not overwrite a global default changed meanwhile."""
    entered, changed = threading.Event(), threading.Event()

    def worker():
        with tf.use_backend("numpy"):
            entered.set()
            changed.wait(10)

    original = BackendManager._backend
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert entered.wait(10)
        BackendManager._backend = BackendManager.load_backend("pytorch")
        changed.set()
        thread.join(10)
        assert BackendManager._backend.backend_name == "pytorch"
    finally:
        BackendManager._backend = original


def test_unknown_backend_is_rejected_without_side_effects():
    before = _state()
    with pytest.raises(ValueError, match=r"backend must be one of.*'nope'"):
        with tf.use_backend("nope"):
            pass
    assert _state() == before


def test_available_backends_lists_numpy_and_pytorch():
    names = tf.available_backends()
    assert names[:2] == ["numpy", "pytorch"]


def test_import_without_torch():
    """The core never imports torch: it must import with torch unavailable."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any 'import torch' now raises ImportError
        import tuckerflow as tf
        Y = tf.random_tucker((4, 5, 6), (2, 2, 3), random_state=0)
        loaded = "torch" in sys.modules and sys.modules["torch"]
        print(tf.truncate(Y, rank=1).rank, loaded)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(1,", "1,", "1)", "None"]
