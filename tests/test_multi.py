"""The multi-tensor update (tuckerflow.integrators.multi) against the single-tensor
path, and the factorization counts of the single-tensor fast path (issue 14)."""

from __future__ import annotations

import collections
import contextlib

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
from tuckerflow.integrators.bug import parallel_augment_unchecked
from tuckerflow.integrators.multi import (
    finish_multi,
    parallel_augment_multi,
    tdlrt_augment_multi,
    to_host,
)
from tuckerflow.integrators.tdlrt import tdlrt_augment_unchecked
from tuckerflow.ranks import parameter_count

# (shape, rank, min_rank, max_rank): convolution-like kernels pinned at full rank,
# matrices, 3-mode tensors with free full-rank modes; repeated shapes form groups
MODEL = [
    ((16, 8, 3, 3), (4, 4, 3, 3), (2, 2, 3, 3), (8, 8, 3, 3)),
    ((16, 8, 3, 3), (4, 4, 3, 3), (2, 2, 3, 3), (8, 8, 3, 3)),
    ((16, 8, 3, 3), (4, 4, 3, 3), (2, 2, 3, 3), (8, 8, 3, 3)),
    ((12, 10), (3, 3), (1, 1), (12, 10)),
    ((12, 10), (3, 3), (1, 1), (12, 10)),
    ((6, 7, 5), (2, 3, 2), (1, 1, 1), (6, 7, 5)),
    ((5, 6, 4), (5, 3, 4), (1, 1, 1), (5, 6, 4)),
    ((5, 6, 4), (5, 3, 4), (1, 1, 1), (5, 6, 4)),
]


def _dtype(precision):
    return getattr(tl.backend, precision)


def _tolerance(precision):
    # float64: rounding of differently ordered contractions and a batched SVD; float32:
    # the same relative perturbation, amplified over the steps by at most the inverse
    # gap of the core spectra (the tensors are random, gaps O(1)): 1e3 eps
    return 1e-12 if precision == "float64" else 1e3 * float(np.finfo(np.float32).eps)


def _run(precision, optimizer, method, batched, rule_kind, steps=5):
    dtype = _dtype(precision)
    points = [
        tf.random_tucker(shape, rank, random_state=i, dtype=dtype)
        for i, (shape, rank, _, _) in enumerate(MODEL)
    ]
    states = None
    if optimizer == "momentum":
        states = [tf.Momentum.init(p, 0.9) for p in points]
    elif optimizer == "adam":
        states = [tf.Adam.init(p) for p in points]
    rng = np.random.default_rng(0)
    history = []
    for _ in range(steps):
        grads = [
            tl.tensor(rng.standard_normal(shape), dtype=dtype)
            + 1e-2 * tl.tucker_to_tensor(p)  # weight decay, as the caller adds it
            for p, (shape, *_) in zip(points, MODEL)
        ]
        if rule_kind == "tol":
            rules = [dict(tol=0.2, min_rank=lo, max_rank=hi) for *_, lo, hi in MODEL]
        elif rule_kind == "budget":  # a per-tensor budget: 90% of the initial size
            rules = [
                dict(budget=int(0.9 * parameter_count(shape, rank)), min_rank=lo)
                for shape, rank, lo, _ in MODEL
            ]
        else:  # fixed ranks as a budget decides them: the current ones
            rules = [
                dict(rank=tuple(p.rank), min_rank=lo, max_rank=hi)
                for p, (*_, lo, hi) in zip(points, MODEL)
            ]
        cores = [p.core for p in points]
        factors = [list(p.factors) for p in points]
        if batched:
            augment = (
                tdlrt_augment_multi if method == "tdlrt" else parallel_augment_multi
            )
            out = finish_multi(augment(cores, factors, grads, 0.05, states), rules)
        else:
            augment = (
                tdlrt_augment_unchecked
                if method == "tdlrt"
                else parallel_augment_unchecked
            )
            out = [
                augment(c, f, g, 0.05, state=None if states is None else s).finish(
                    **rule
                )
                for c, f, g, s, rule in zip(
                    cores, factors, grads, states or [None] * len(MODEL), rules
                )
            ]
        points = [point for point, _ in out]
        if states is not None:
            states = [state for _, state in out]
        else:  # no state given: none comes back
            assert all(state is None for _, state in out)
        history.append(
            [
                (p.rank, tl.to_numpy(tl.tucker_to_tensor(p)), s)
                for p, s in zip(points, states or [None] * len(MODEL))
            ]
        )
    return history


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", [None, "momentum", "adam"])
@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug"])
@pytest.mark.parametrize("rule_kind", ["tol", "rank", "budget"])
def test_multi_matches_single(backend, precision, optimizer, method, rule_kind):
    # the truncation and the state transport are batched too (finish_multi): per
    # group of equal shapes and new ranks; the tolerance and budget rules change
    # ranks, so groups split and merge between steps
    single = _run(precision, optimizer, method, False, rule_kind)
    multi = _run(precision, optimizer, method, True, rule_kind)
    tol = _tolerance(precision)
    ranks_changed = False
    for step_single, step_multi in zip(single, multi):
        for (rank_a, dense_a, state_a), (rank_b, dense_b, state_b) in zip(
            step_single, step_multi
        ):
            assert rank_a == rank_b
            scale = max(1.0, np.abs(dense_a).max())
            assert np.abs(dense_a - dense_b).max() <= tol * scale
            if state_a is not None:
                for name, value in state_a._buffers().items():
                    other = state_b._buffers()[name]
                    pairs = (
                        [(value, other)]
                        if name.startswith("core")
                        else zip(value, other)
                    )
                    for a, b in pairs:
                        a, b = tl.to_numpy(a), tl.to_numpy(b)
                        assert a.shape == b.shape
                        if precision == "float32":
                            # a singular vector's sign follows its largest entry;
                            # two entries equal to rounding can pick different
                            # signs (the weight is the same, its coordinates and
                            # the state's flip together): compare up to sign
                            a, b = np.abs(a), np.abs(b)
                        assert np.abs(a - b).max() <= tol * max(1.0, np.abs(a).max())
    for step in single:
        ranks_changed |= any(r != m[1] for (r, _, _), m in zip(step, MODEL))
    if rule_kind != "rank":
        assert ranks_changed  # the comparison covers rank changes


@contextlib.contextmanager
def _factorization_counts(names=("qr", "svd", "eigh"), counted=lambda *a: True):
    """Count ``tl.qr`` and ``tl.svd`` calls (every QR and SVD of the steps), or the
    calls of other backend functions ``names`` (those whose arguments pass
    ``counted``)."""
    counts: collections.Counter = collections.Counter()
    backend = tl.backend.BackendManager._THREAD_LOCAL_DATA.__dict__.get(
        "backend", tl.backend.BackendManager._backend
    )

    def counter(name):
        function = getattr(backend, name)

        def wrapped(*args, **kwargs):
            counts[name] += bool(counted(*args))
            return function(*args, **kwargs)

        return wrapped

    for name in names:
        backend.__dict__[name] = counter(name)
    try:
        yield counts
    finally:
        for name in names:
            backend.__dict__.pop(name, None)


def _conv_layer(dtype, seed=0):
    # a 16 -> 8 convolution with a 3 x 3 kernel at rank (4, 4, 3, 3), the kernel
    # modes pinned at full rank as a network layer pins them
    point = tf.random_tucker(
        (16, 8, 3, 3), (4, 4, 3, 3), random_state=seed, dtype=dtype
    )
    grad = tl.tensor(
        np.random.default_rng(seed).standard_normal((16, 8, 3, 3)), dtype=dtype
    )
    return point, grad


RULE = dict(rank=(4, 4, 3, 3), min_rank=(4, 4, 3, 3), max_rank=(4, 4, 3, 3))


@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug"])
def test_fast_path_factorization_counts(backend, method):
    # per adaptive mode: one QR of the core unfolding (K-step coordinates), one QR of
    # the augmented basis, one SVD of the augmented core's unfolding, one QR of the
    # truncated factor (orthonormality cannot drift, P8) and one QR of the new core
    # unfolding (moving the K-state); nothing for the kernel modes. Before issue 14:
    # 14 QR (every mode reparametrized twice, a QR before each SVD) and 2 SVD.
    point, grad = _conv_layer(_dtype("float64"))
    state = tf.Momentum.init(point, 0.9)
    augment = (
        tdlrt_augment_unchecked if method == "tdlrt" else parallel_augment_unchecked
    )
    with _factorization_counts() as counts:
        augment(point.core, list(point.factors), grad, 0.1, state=state).finish(**RULE)
    assert counts == {"qr": 8, "svd": 2}
    with _factorization_counts() as counts:  # without state: no K-state to move
        augment(point.core, list(point.factors), grad, 0.1).finish(**RULE)
    assert counts == {"qr": 6, "svd": 2}


def test_multi_path_batches_the_augmentation(backend):
    dtype = _dtype("float64")
    layers = [_conv_layer(dtype, seed) for seed in range(6)]
    cores = [p.core for p, _ in layers]
    factors = [list(p.factors) for p, _ in layers]
    grads = [g for _, g in layers]
    with _factorization_counts() as counts:
        steps = tdlrt_augment_multi(cores, factors, grads, 0.1)
    # one batched QR per adaptive mode for the K-step coordinates, one per basis,
    # whatever the number of layers
    assert counts == {"qr": 4}
    with _factorization_counts() as counts:
        finish_multi(steps, [RULE] * len(steps))
    # one batched SVD per adaptive mode, and the truncation batched too: one QR of
    # the truncated factors per adaptive mode, whatever the number of layers (it
    # was one per adaptive mode and layer before the truncation was batched)
    assert counts == {"svd": 2, "qr": 2}


@pytest.mark.parametrize("rule_kind", ["tol", "budget"])
def test_finish_multi_reads_the_device_once(rule_kind):
    # every spectrum and norm of every step reaches the host in one transfer; the
    # ranks are decided there and the truncation is indexed by Python ints
    with tf.use_backend("pytorch"):
        dtype = _dtype("float64")
        points = [
            tf.random_tucker(shape, rank, random_state=i, dtype=dtype)
            for i, (shape, rank, _, _) in enumerate(MODEL)
        ]
        rng = np.random.default_rng(0)
        grads = [
            tl.tensor(rng.standard_normal(shape), dtype=dtype) for shape, *_ in MODEL
        ]
        states = [tf.Momentum.init(p, 0.9) for p in points]
        steps = tdlrt_augment_multi(
            [p.core for p in points],
            [list(p.factors) for p in points],
            grads,
            0.05,
            states,
        )
        if rule_kind == "tol":
            rules = [dict(tol=0.2, min_rank=lo, max_rank=hi) for *_, lo, hi in MODEL]
        else:
            rules = [
                dict(budget=int(0.9 * parameter_count(shape, rank)), min_rank=lo)
                for shape, rank, lo, _ in MODEL
            ]
        # (host arrays pass through tl.to_numpy too: not a transfer)
        with _factorization_counts(
            ("to_numpy",), counted=lambda x: not isinstance(x, np.ndarray)
        ) as counts:
            finish_multi(steps, rules)
    assert counts == {"to_numpy": 1}


def test_to_host_keeps_shapes_and_values(backend):
    a = tl.tensor(np.arange(6.0).reshape(2, 3), dtype=_dtype("float32"))
    b = tl.tensor(np.array(2.5), dtype=_dtype("float64"))
    out = to_host([a, b, a > 2])
    assert [x.shape for x in out] == [(2, 3), (), (2, 3)]
    assert all(x.dtype == np.float64 for x in out)
    np.testing.assert_array_equal(out[0], np.arange(6.0).reshape(2, 3))
    assert out[1] == 2.5
    np.testing.assert_array_equal(out[2], np.arange(6.0).reshape(2, 3) > 2)
    assert to_host([]) == []
