"""The step functions: rank rules, tol = 0, backend agreement (P7), and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import LeastSquares, dense, randn, shapes_and_ranks, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.contractions import GradientContractions
from tuckerflow.integrators._blocks import reparametrize
from tuckerflow.linalg import augment_basis

RANK_ADAPTIVE = [tf.tdlrt_step, tf.parallel_bug_step]


@settings(max_examples=30)
@given(
    data=shapes_and_ranks(min_size=3),
    seed=st.integers(0, 2**16),
    tol=st.floats(0.0, 0.9),
    lr=st.floats(1e-3, 10.0),
    which=st.integers(0, 1),
)
def test_ranks_stay_within_bounds(backend, data, seed, tol, lr, which):
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed)
    G = randn(shape, seed=seed + 1, dtype=tl.backend.float64)
    low = tuple(min(2, n) for n in shape)
    high = tuple(max(lo, min(n, r + 1)) for lo, n, r in zip(low, shape, rank))
    result, _ = RANK_ADAPTIVE[which](Y, G, lr, tol=tol, min_rank=low, max_rank=high)
    assert all(lo <= r <= hi for lo, r, hi in zip(low, result.rank, high))


@settings(max_examples=30)
@given(data=shapes_and_ranks(min_size=3), seed=st.integers(0, 2**16))
def test_tolerance_zero_never_discards_energy(backend, data, seed):
    """With tol = 0 the step equals the untruncated Galerkin update Y0 - h Pi G."""
    shape, rank = data
    Y = tf.random_tucker(shape, rank, random_state=seed)
    G = randn(shape, seed=seed + 1, dtype=tl.backend.float64)
    h = 0.3
    contractions = GradientContractions(G, Y.factors)
    bases = []
    for mode, factor in enumerate(Y.factors):
        q, _ = reparametrize(Y.core, mode)
        bases.append(
            augment_basis(factor, tl.dot(contractions.unfolded_partial(mode), q))
        )
    projected = tl.tenalg.multi_mode_dot(
        tl.tenalg.multi_mode_dot(G, bases, transpose=True), bases
    )
    expected = dense(Y) - h * to_np(projected)
    result, _ = tf.tdlrt_step(Y, G, h, tol=0.0)
    scale = np.linalg.norm(expected) + h * np.linalg.norm(to_np(G))
    assert np.linalg.norm(dense(result) - expected) <= 1e-13 * scale


def test_fixed_rank_and_budget_rules(backend):
    Y = tf.random_tucker((10, 9, 8), (3, 3, 3), random_state=0)
    G = randn((10, 9, 8), seed=1, dtype=tl.backend.float64)
    assert tf.tdlrt_step(Y, G, 0.1, rank=(3, 2, 4))[0].rank == (3, 2, 4)
    for budget in (60, 150, 400):
        result, _ = tf.tdlrt_step(Y, G, 0.1, budget=budget)
        assert tf.parameter_count(result.shape, result.rank) <= budget


def test_bug_step_keeps_the_rank_and_uses_the_second_gradient(backend):
    A = randn((7, 8, 9), seed=0, dtype=tl.backend.float64)
    objective = LeastSquares(A)
    Y = tf.random_tucker((7, 8, 9), (2, 3, 2), random_state=1)
    calls = []

    def grad_fn(W):
        calls.append(W)
        return objective.grad(W)

    result, _ = tf.bug_step(Y, objective.grad(Y.to_tensor()), 0.5, grad_fn=grad_fn)
    assert result.rank == (2, 3, 2) and len(calls) == 1
    assert objective.value(result.to_tensor()) < objective.value(Y.to_tensor())


def test_rgd_rank_adaptive(backend):
    A = tf.random_tucker((7, 8, 9), (3, 3, 3), random_state=0).to_tensor()
    Y = tf.random_tucker((7, 8, 9), (1, 1, 1), random_state=1)
    G = LeastSquares(A).grad(Y.to_tensor())
    grown, _ = tf.rgd_step(Y, G, 1.0, tol=1e-8)
    assert grown.rank == (2, 2, 2)  # the tangent space at rank 1 holds rank <= 2
    assert tf.rgd_step(Y, G, 1.0)[0].rank == (1, 1, 1)


STATEFUL = ["tdlrt_step", "parallel_bug_step", "parallel_bug_update"]
STATELESS = ["bug_step", "rgd_step", "vanilla_step"]


def _step_calls(Y, G):
    """Every public step function as ``call(state) -> result``; the stateless ones
    take no state argument."""
    contractions = GradientContractions(G, Y.factors)
    k_grads = [
        tl.dot(contractions.unfolded_partial(mode), reparametrize(Y.core, mode)[0])
        for mode in range(len(Y.factors))
    ]
    core_grad = contractions.core_gradient()
    return {
        "tdlrt_step": lambda s: tf.tdlrt_step(Y, G, 0.1, tol=0.1, state=s),
        "parallel_bug_step": lambda s: tf.parallel_bug_step(
            Y, G, 0.1, tol=0.1, state=s
        ),
        "parallel_bug_update": lambda s: tf.parallel_bug_update(
            Y, core_grad, k_grads, 0.1, tol=0.1, state=s
        ),
        "bug_step": lambda s: tf.bug_step(Y, G, 0.1, grad_fn=lambda W: G, state=s),
        "rgd_step": lambda s: tf.rgd_step(Y, G, 0.1, state=s),
        "vanilla_step": lambda s: tf.vanilla_step(Y, G, 0.1, state=s),
    }


def test_the_list_of_step_functions_is_complete():
    public = {
        name
        for name in tf.integrators.__all__
        if name.endswith("_step") or name.endswith("_update")
    }
    assert public == set(STATEFUL + STATELESS)


@pytest.mark.parametrize("name", STATEFUL + STATELESS)
def test_every_step_returns_tucker_and_state(backend, name):
    """``(tucker, state)`` always (issue 14): the state None without one."""
    Y = tf.random_tucker((5, 6, 7), (2, 3, 2), random_state=0)
    G = randn((5, 6, 7), seed=1, dtype=tl.backend.float64)
    call = _step_calls(Y, G)[name]
    result = call(None)
    assert type(result) is tuple and len(result) == 2
    assert isinstance(result[0], tl.tucker_tensor.TuckerTensor)
    assert result[1] is None
    if name in STATEFUL:
        for state in (tf.Momentum.init(Y, 0.9), tf.Adam.init(Y)):
            result = call(state)
            assert type(result) is tuple and len(result) == 2
            tucker, new = result
            assert isinstance(tucker, tl.tucker_tensor.TuckerTensor)
            assert type(new) is type(state)
            new.check(tucker.core, tucker.factors)
    else:  # the same loop for every step: state=None is taken, a state refused
        with pytest.raises(ValueError, match=f"{name} keeps no optimizer state"):
            call(tf.Momentum.init(Y, 0.9))


@pytest.mark.parametrize("with_state", [False, True])
def test_finish_and_the_multi_functions_return_tucker_and_state(backend, with_state):
    from tuckerflow.integrators.multi import (
        decompose_multi,
        finish_multi,
        tdlrt_augment_multi,
        truncate_multi,
    )
    from tuckerflow.integrators.tdlrt import tdlrt_augment_unchecked

    Y = tf.random_tucker((5, 6, 7), (2, 3, 2), random_state=0)
    G = randn((5, 6, 7), seed=1, dtype=tl.backend.float64)
    state = tf.Momentum.init(Y, 0.9) if with_state else None
    core, factors = Y.core, list(Y.factors)

    def check(result):
        assert type(result) is tuple and len(result) == 2
        assert isinstance(result[0], tl.tucker_tensor.TuckerTensor)
        assert (result[1] is None) != with_state

    check(tdlrt_augment_unchecked(core, factors, G, 0.1, state=state).finish(tol=0.1))
    states = [state, state] if with_state else None
    steps = tdlrt_augment_multi([core, core], [factors, factors], [G, G], 0.1, states)
    for result in finish_multi(steps, [{"tol": 0.1}] * 2):
        check(result)
    steps = tdlrt_augment_multi([core, core], [factors, factors], [G, G], 0.1, states)
    bounds = [{"min_rank": 1, "max_rank": None}] * 2
    decompose_multi(steps, bounds)
    for result in truncate_multi(steps, [(2, 2, 2)] * 2, bounds):
        check(result)


def _iterates(backend, method):
    with tf.use_backend(backend):
        shape = (8, 7, 6)
        A = tl.tensor(
            np.random.default_rng(0).standard_normal(shape), dtype=tl.backend.float64
        )
        objective = LeastSquares(A)
        start = tf.random_tucker(shape, (3, 2, 3), random_state=1)
        options = {"tol": 0.05} if method in ("tdlrt", "parallel_bug") else {}
        lr = 0.01 if method == "vanilla" else 0.2  # vanilla diverges at 0.2 here
        result = tf.integrate(
            objective, start, method=method, lr=lr, steps=15, **options
        )
        return dense(result.tucker), result.history.ranks


@pytest.mark.skipif(
    "pytorch" not in tf.available_backends(), reason="needs the pytorch backend"
)
@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug", "bug", "rgd", "vanilla"])
def test_p7_numpy_and_pytorch_give_the_same_iterates(method):
    reference, ranks = _iterates("numpy", method)
    for other in [b for b in tf.available_backends() if b != "numpy"]:
        result, other_ranks = _iterates(other, method)
        assert other_ranks == ranks
        np.testing.assert_allclose(result, reference, rtol=1e-9, atol=1e-9)


class TestBadInput:
    def setup_method(self):
        self.Y = tf.random_tucker((5, 6, 7), (2, 3, 2), random_state=0)
        self.G = tl.tensor(np.random.default_rng(1).standard_normal((5, 6, 7)))

    def _unchanged(self, call):
        before = (dense(self.Y), to_np(self.G).copy())
        call()
        after = (dense(self.Y), to_np(self.G))
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])

    @pytest.mark.parametrize("step", [*RANK_ADAPTIVE, tf.rgd_step])
    def test_non_finite_gradient(self, step):
        bad = to_np(self.G).copy()
        bad[1, 2, 3] = np.inf
        with pytest.raises(ValueError, match="grad contains NaN or Inf"):
            step(self.Y, tl.tensor(bad), 0.1, tol=0.1)
        bad[1, 2, 3] = np.nan
        with pytest.raises(ValueError, match="grad contains NaN or Inf"):
            tf.vanilla_step(self.Y, tl.tensor(bad), 0.1)

    def test_wrong_gradient_shape(self):
        with pytest.raises(ValueError, match=r"grad has shape \(5, 6\) but the Tucker"):
            tf.tdlrt_step(self.Y, tl.tensor(np.ones((5, 6))), 0.1, tol=0.1)

    @pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
    def test_bad_learning_rate(self, lr):
        def call():
            with pytest.raises(ValueError, match=r"lr must be finite and > 0"):
                tf.tdlrt_step(self.Y, self.G, lr, tol=0.1)

        self._unchanged(call)

    def test_tolerance_out_of_range(self):
        def call():
            with pytest.raises(ValueError, match=r"tol must lie in \[0, 1\)"):
                tf.tdlrt_step(self.Y, self.G, 0.1, tol=1.5)

        self._unchanged(call)

    def test_missing_rank_rule(self):
        with pytest.raises(ValueError, match="give one of tol"):
            tf.tdlrt_step(self.Y, self.G, 0.1)

    def test_state_of_another_point(self):
        other = tf.Momentum.init(tf.random_tucker((5, 6, 7), (2, 2, 2)))
        with pytest.raises(ValueError, match=r"state.core has shape \(2, 2, 2\)"):
            tf.tdlrt_step(self.Y, self.G, 0.1, tol=0.1, state=other)

    def test_gradient_from_another_backend(self):
        torch = pytest.importorskip("torch")
        with pytest.raises(TypeError, match="grad must be a tensor of the active"):
            tf.tdlrt_step(
                self.Y, torch.ones(5, 6, 7, dtype=torch.float64), 0.1, tol=0.1
            )

    def test_bug_needs_a_gradient_callable(self):
        with pytest.raises(TypeError, match="grad_fn must be callable"):
            tf.bug_step(self.Y, self.G, 0.1, grad_fn=None)
        with pytest.raises(ValueError, match=r"grad_fn\(\.\.\.\) contains NaN"):
            tf.bug_step(self.Y, self.G, 0.1, grad_fn=lambda W: W * np.nan)
