"""integrate: history, callbacks, mini-batches, autodiff objectives, failures."""

from __future__ import annotations

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
    # six steps + one final evaluation; every gradient of step k used batch k
    assert used == [0, 1, 2, 3, 4, 5, 6] and drawn == used
    used.clear()
    drawn.clear()
    tf.integrate(
        batch_objective, start, method="bug", lr=0.5, steps=3, batches=batches()
    )
    assert used == [0, 0, 1, 1, 2, 2, 3]  # BUG takes its two gradients on one batch


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
        tf.IntegrationError, match="step 3: the gradient is not"
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
