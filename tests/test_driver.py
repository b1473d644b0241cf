"""integrate: history, callbacks, mini-batches, autodiff objectives, failures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import LeastSquares, dense

import tuckerflow as tf


def _problem():
    A = tf.random_tucker((8, 9, 10), (3, 3, 3), random_state=0).to_tensor()
    return LeastSquares(A), tf.random_tucker((8, 9, 10), (1, 1, 1), random_state=1)


@pytest.mark.parametrize("method", ["tdlrt", "parallel_bug", "bug", "rgd", "vanilla"])
def test_history_is_complete_and_the_loss_goes_down(backend, method):
    objective, start = _problem()
    adaptive = method in ("tdlrt", "parallel_bug")
    options = {"tol": 1e-6} if adaptive else {}
    if not adaptive:  # fixed rank: start at the target's rank
        start = tf.random_tucker((8, 9, 10), (3, 3, 3), random_state=1)
    lr = 0.05 if method == "vanilla" else 0.5
    result = tf.integrate(objective, start, method=method, lr=lr, steps=25, **options)
    history = result.history
    assert result.steps == 25
    assert len(history.loss) == len(history.ranks) == len(history.parameters) == 26
    assert len(history.time) == len(history.lr) == 25 and min(history.time) > 0
    assert history.ranks[0] == start.rank
    assert history.parameters[-1] == tf.parameter_count((8, 9, 10), history.ranks[-1])
    assert history.loss[-1] < 0.5 * history.loss[0]
    if adaptive:
        assert history.ranks[-1] == (3, 3, 3)  # the rank adapts up to the target's


def test_learning_rate_schedule_and_callback_stop(backend):
    objective, start = _problem()
    seen = []

    def callback(step, tucker, loss):
        seen.append((step, tucker.rank, loss))
        return step == 4

    result = tf.integrate(
        objective,
        start,
        lr=lambda k: 1.0 / (k + 2),
        steps=50,
        tol=1e-6,
        callback=callback,
    )
    assert result.steps == 5 and [s[0] for s in seen] == [0, 1, 2, 3, 4]
    assert result.history.lr == [1.0 / (k + 2) for k in range(5)]


def test_batches_are_drawn_once_per_step(backend):
    objective, start = _problem()
    drawn, used = [], []

    def batches():
        for k in range(100):
            drawn.append(k)
            yield k

    def batch_objective(W, batch):
        used.append(batch)
        return objective(W)

    tf.integrate(batch_objective, start, lr=0.5, steps=6, tol=1e-3, batches=batches())
    # six steps, then the final loss on the last step's batch; none drawn beyond
    assert used == [0, 1, 2, 3, 4, 5, 5] and drawn == [0, 1, 2, 3, 4, 5]
    used.clear()
    drawn.clear()
    tf.integrate(
        batch_objective, start, method="bug", lr=0.5, steps=3, batches=batches()
    )
    assert used == [0, 0, 1, 1, 2, 2, 2]  # BUG takes its two gradients on one batch
    assert drawn == [0, 1, 2]


def _strict(objective):
    """A batch objective that rejects anything but a real batch (as most do)."""

    def batch_objective(W, batch):
        if not isinstance(batch, tuple):
            raise TypeError(f"expected a (weight, offset) batch, got {batch!r}")
        weight, offset = batch
        value, grad = objective(W)
        return weight * value + offset, weight * grad

    return batch_objective


def test_exactly_steps_batches_never_calls_the_objective_with_a_made_up_batch(
    backend,
):
    objective, start = _problem()
    batches = [(1.0, 0.0)] * 4 + [(0.5, 1.0)]  # the last step's batch is distinct
    result = tf.integrate(
        _strict(objective), start, lr=0.5, steps=5, tol=1e-6, batches=batches
    )
    history = result.history
    assert result.steps == 5
    assert len(history.loss) == len(history.ranks) == len(history.parameters) == 6
    # the final point's loss is taken on the last step's batch
    expected = 0.5 * objective.value(result.tucker.to_tensor()) + 1.0
    assert history.loss[-1] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("batches", [[], [(1.0, 0.0)] * 3], ids=["empty", "unused"])
def test_batches_without_a_step_record_no_loss(backend, batches):
    objective, start = _problem()
    iterator = iter(batches)
    steps = 5 if not batches else 0
    result = tf.integrate(
        _strict(objective), start, lr=0.5, steps=steps, tol=1e-6, batches=iterator
    )
    assert result.steps == 0 and result.history.loss == []
    assert result.history.ranks == [start.rank]
    assert len(list(iterator)) == len(batches)  # nothing drawn


@pytest.mark.parametrize("method", ["tdlrt", "bug"])
@pytest.mark.parametrize("k", [1, 3])
def test_objective_failing_at_step_k_keeps_the_last_good_point(backend, method, k):
    objective, start = _problem()
    options = {"tol": 1e-6} if method == "tdlrt" else {}
    evaluations_per_step = 2 if method == "bug" else 1
    calls = []

    def failing(W):
        if len(calls) == k * evaluations_per_step:
            raise KeyError("the data went away")
        calls.append(1)
        return objective(W)

    with pytest.raises(tf.IntegrationError, match=rf"step {k}: the objective") as info:
        tf.integrate(failing, start, method=method, lr=0.5, steps=10, **options)
    assert "KeyError" in str(info.value) and "after" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
    partial = info.value.result
    reference = tf.integrate(
        objective, start, method=method, lr=0.5, steps=k, **options
    )
    assert partial.steps == k
    assert partial.history.ranks == reference.history.ranks
    assert partial.history.loss == reference.history.loss[:k]  # one per completed step
    np.testing.assert_allclose(
        dense(partial.tucker), dense(reference.tucker), rtol=0, atol=0
    )


def test_objective_failing_at_the_final_point(backend):
    objective, start = _problem()
    calls = []

    def failing(W):
        calls.append(1)
        if len(calls) == 4:  # three steps, then the final evaluation
            raise RuntimeError("out of memory")
        return objective(W)

    with pytest.raises(
        tf.IntegrationError, match=r"the final point \(after 3 steps\)"
    ) as info:
        tf.integrate(failing, start, lr=0.5, steps=3, tol=1e-6)
    partial = info.value.result
    assert partial.steps == 3 and len(partial.history.loss) == 3
    assert len(partial.history.ranks) == 4


def test_a_failing_step_after_step_0_is_an_integration_error(backend):
    objective, start = _problem()
    with pytest.raises(
        tf.IntegrationError, match=r"step 2: tdlrt_step raised ValueError: lr must"
    ) as info:
        tf.integrate(
            objective, start, lr=lambda k: 0.5 if k < 2 else -1.0, steps=5, tol=1e-6
        )
    assert info.value.result.steps == 2


def test_a_failing_batches_iterable_after_step_0_is_an_integration_error(backend):
    objective, start = _problem()

    def batches():
        yield (1.0, 0.0)
        raise OSError("disk gone")

    with pytest.raises(
        tf.IntegrationError, match=r"step 1: the batches iterable raised OSError"
    ) as info:
        tf.integrate(
            _strict(objective), start, lr=0.5, steps=5, tol=1e-6, batches=batches()
        )
    assert info.value.result.steps == 1


def test_failures_at_step_0_propagate_unchanged(backend):
    objective, start = _problem()

    def failing(W):
        raise KeyError("the data went away")

    with pytest.raises(KeyError, match="the data went away"):
        tf.integrate(failing, start, lr=0.5, steps=5, tol=1e-6)
    with pytest.raises(ValueError, match=r"rank\[2\]=3 exceeds the augmented rank 2"):
        tf.integrate(objective, start, lr=0.5, steps=5, rank=(2, 2, 3))


def test_a_value_only_objective_after_step_0_is_an_integration_error(backend):
    objective, start = _problem()
    calls = []

    def sometimes_value_only(W):
        calls.append(1)
        value, grad = objective(W)
        return value if len(calls) == 3 else (value, grad)

    with pytest.raises(
        tf.IntegrationError,
        match=r"step 2: the objective raised TypeError: objective "
        r"must return a \(value, grad\) pair",
    ) as info:
        tf.integrate(sometimes_value_only, start, lr=0.5, steps=5, tol=1e-6)
    assert info.value.result.steps == 2


def test_value_fn_uses_pytorch_autodiff():
    torch = pytest.importorskip("torch")
    with tf.use_backend("pytorch"):
        objective, start = _problem()
        target = objective.target

        def value_fn(W):
            return 0.5 * torch.sum((W - target) ** 2)

        by_hand = tf.integrate(objective, start, lr=0.5, steps=8, tol=1e-4)
        auto = tf.integrate(None, start, value_fn=value_fn, lr=0.5, steps=8, tol=1e-4)
        np.testing.assert_allclose(auto.history.loss, by_hand.history.loss, rtol=1e-12)
        np.testing.assert_allclose(
            dense(auto.tucker), dense(by_hand.tucker), atol=1e-12
        )


def test_value_fn_on_numpy_says_what_to_do():
    _, start = _problem()
    with pytest.raises(NotImplementedError, match="active backend is 'numpy'"):
        tf.integrate(None, start, value_fn=lambda W: 0.0, lr=0.1, steps=1, tol=0.1)


def test_non_finite_gradient_keeps_the_last_good_point(backend):
    objective, start = _problem()

    def exploding(W):
        value, grad = objective(W)
        if len(calls) == 3:
            grad = grad * np.nan
        calls.append(value)
        return value, grad

    calls = []
    with pytest.raises(
        tf.IntegrationError, match="step 3: the gradient contains NaN or Inf"
    ) as info:
        tf.integrate(exploding, start, lr=0.5, steps=10, tol=1e-6)
    partial = info.value.result
    assert partial.steps == 3 and len(partial.history.ranks) == 4
    assert np.all(np.isfinite(dense(partial.tucker)))


def test_progress_bar(backend, capsys):
    pytest.importorskip("tqdm")
    objective, start = _problem()
    tf.integrate(objective, start, lr=0.5, steps=3, tol=1e-3, progress=True)
    assert "3/3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"method": "sgd"}, ValueError, "method must be one of"),
        ({"steps": -1}, ValueError, "steps must be a non-negative int"),
        ({"method": "bug", "tol": 0.1}, ValueError, "keeps a fixed rank"),
        ({"method": "rgd", "state": "x"}, ValueError, "state is supported by tdlrt"),
    ],
)
def test_bad_driver_arguments(kwargs, error, message):
    objective, start = _problem()
    options = {"lr": 0.1, "steps": 1, **kwargs}
    with pytest.raises(error, match=message):
        tf.integrate(objective, start, **options)


# ---------------------------------------------------------------- stopping rules


def _fit():
    A = tf.random_tucker((8, 9, 10), (3, 3, 3), random_state=0).to_tensor()
    return LeastSquares(A), tf.random_tucker((8, 9, 10), (3, 3, 3), random_state=1)


@pytest.mark.parametrize("line_search", [None, "armijo"])
def test_stopping_on_the_gradient_norm(backend, line_search):
    objective, start = _fit()
    lr = None if line_search else 0.5
    options = {"method": "rgd", "lr": lr, "steps": 200, "line_search": line_search}
    absolute = tf.integrate(objective, start, grad_tol=1e-6, **options)
    assert absolute.reason == "grad_tol"
    norms = absolute.history.grad_norm
    assert len(norms) == len(absolute.history.loss) == absolute.steps + 1
    assert norms[-1] <= 1e-6 < min(norms[:-1])
    relative = tf.integrate(objective, start, grad_rtol=1e-3, **options)
    assert relative.reason == "grad_rtol"
    norms = relative.history.grad_norm
    assert norms[-1] <= 1e-3 * norms[0] < min(norms[:-1])
    # the recorded norm is the inverse-free Riemannian gradient norm
    assert norms[-1] == pytest.approx(
        tf.projected_norm(relative.tucker, objective.grad(relative.tucker.to_tensor())),
        rel=1e-8,
    )


@pytest.mark.parametrize("line_search", [None, "armijo"])
def test_stopping_on_the_relative_decrease(backend, line_search):
    # a target of rank 5 fitted at rank 3: the loss levels off at a positive value
    A = tf.random_tucker((8, 9, 10), (5, 5, 5), random_state=0).to_tensor()
    objective = LeastSquares(A)
    start = tf.random_tucker((8, 9, 10), (3, 3, 3), random_state=1)
    lr = None if line_search else 0.5
    result = tf.integrate(
        objective,
        start,
        method="parallel_bug",
        rank=(3, 3, 3),
        lr=lr,
        steps=500,
        line_search=line_search,
        loss_rtol=1e-3,
    )
    assert result.reason == "loss_rtol" and result.steps < 500
    loss = result.history.loss
    assert abs(loss[-2] - loss[-1]) <= 1e-3 * abs(loss[-2])
    assert all(abs(a - b) > 1e-3 * abs(a) for a, b in itertools.pairwise(loss[:-1]))
    if line_search is None:
        assert result.history.grad_norm == []  # not needed, not computed


def test_stopping_on_time_and_the_other_reasons(backend):
    objective, start = _fit()
    slow_calls = []

    def slow(W):
        slow_calls.append(1)
        import time

        time.sleep(0.05)
        return objective(W)

    timed = tf.integrate(slow, start, lr=0.5, steps=100, tol=1e-6, max_time=0.12)
    assert timed.reason == "max_time" and 1 <= timed.steps <= 4
    searched = tf.integrate(
        slow, start, steps=100, tol=1e-6, max_time=0.12, line_search="armijo"
    )
    assert searched.reason == "max_time" and searched.steps <= 4
    assert tf.integrate(objective, start, lr=0.5, steps=3, tol=1e-6).reason == "steps"
    stopped = tf.integrate(
        objective, start, lr=0.5, steps=9, tol=1e-6, callback=lambda *a: True
    )
    assert stopped.reason == "callback" and stopped.steps == 1
    batched = tf.integrate(
        lambda W, batch: objective(W), start, lr=0.5, steps=9, tol=1e-6, batches=[1, 2]
    )
    assert batched.reason == "batches" and batched.steps == 2
    assert set(tf.integrators.STOP_REASONS) >= {
        "steps",
        "grad_tol",
        "grad_rtol",
        "loss_rtol",
        "max_time",
        "callback",
        "batches",
        "line_search",
        "error",
    }


def test_an_integration_error_says_error(backend):
    objective, start = _fit()
    calls = []

    def failing(W):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("gone")
        return objective(W)

    with pytest.raises(tf.IntegrationError) as info:
        tf.integrate(failing, start, lr=0.5, steps=5, tol=1e-6)
    assert info.value.result.reason == "error"


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"lr": None}, ValueError, "give lr"),
        ({"line_search": "wolfe"}, ValueError, "line_search must be None, 'armijo'"),
        ({"grad_tol": -1.0}, ValueError, "grad_tol must be finite and >= 0"),
        ({"loss_rtol": "x"}, TypeError, "loss_rtol must be a real number"),
        ({"max_time": 0}, ValueError, "max_time must be finite and > 0"),
        ({"method": "rcg", "beta": "dy"}, ValueError, "beta must be one of"),
        (
            {"line_search": "armijo", "state": "m"},
            ValueError,
            "does not combine with an optimizer state",
        ),
        (
            {"line_search": "armijo", "batches": [1]},
            ValueError,
            "do not apply with batches",
        ),
        ({"grad_rtol": 0.1, "batches": [1]}, ValueError, "do not apply with batches"),
    ],
)
def test_bad_search_and_stopping_arguments(kwargs, error, message):
    objective, start = _problem()
    options = {"lr": 0.1, "steps": 1, "tol": 0.1, **kwargs}
    if "batches" in kwargs:
        objective = lambda W, batch: LeastSquares(  # noqa: E731
            tf.random_tucker((8, 9, 10), (3, 3, 3), random_state=0).to_tensor()
        )(W)
    with pytest.raises(error, match=message):
        tf.integrate(objective, start, **options)
