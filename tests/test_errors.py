"""Bad input gets a clear error naming the problem; the inputs are left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from helpers import to_np

import tuckerflow as tf

torch = pytest.importorskip("torch")


def _point():
    return tf.random_tucker((5, 6, 7), (2, 3, 3), random_state=0)


def _dense():
    return tl.tensor(np.random.default_rng(0).standard_normal((5, 6, 7)))


def _with_nan(tensor):
    values = to_np(tensor).copy()
    values.flat[3] = np.nan
    return tl.tensor(values)


def _bad_factor():
    core, factors = _point()
    factors = list(factors)
    factors[1] = factors[1] * 1.5
    return core, factors


def _mismatched():
    core, factors = _point()
    factors = list(factors)
    factors[2] = factors[2][:, :2]
    return core, factors


def _mixed_dtype():
    core, factors = _point()
    return tl.tensor(to_np(core), dtype=np.float32), factors


CASES = {
    # name: (builder returning (function, args, kwargs), error, message pattern)
    "relative tol >= 1": (
        lambda: (tf.hosvd, (_dense(),), {"tol": 1.0}),
        ValueError,
        r"tol must lie in \[0, 1\) when relative=True.*got 1.0",
    ),
    "negative tol": (
        lambda: (tf.truncate, (_point(),), {"tol": -0.1}),
        ValueError,
        r"tol must lie in \[0, 1\).*got -0.1",
    ),
    "negative absolute tol": (
        lambda: (tf.hosvd, (_dense(),), {"tol": -1.0, "relative": False}),
        ValueError,
        r"tol must be >= 0, got -1.0",
    ),
    "nan tol": (
        lambda: (tf.hosvd, (_dense(),), {"tol": float("nan")}),
        ValueError,
        r"tol must be finite",
    ),
    "string tol": (
        lambda: (tf.hosvd, (_dense(),), {"tol": "0.1"}),
        TypeError,
        r"tol must be a real number, got '0.1'",
    ),
    "rank zero": (
        lambda: (tf.hosvd, (_dense(),), {"rank": (0, 2, 2)}),
        ValueError,
        r"rank\[0\] must be >= 1, got 0",
    ),
    "rank above mode size": (
        lambda: (tf.hosvd, (_dense(),), {"rank": (2, 9, 2)}),
        ValueError,
        r"rank\[1\]=9 exceeds the mode size 6 of mode 1 \(shape \(5, 6, 7\)\): a mode "
        r"of size 6 has rank at most 6; ask for rank\[1\] <= 6, or pass an int rank",
    ),
    "random_tucker rank above mode size": (
        lambda: (tf.random_tucker, ((5, 6, 7), (2, 9, 2)), {}),
        ValueError,
        r"rank\[1\]=9 exceeds the mode size 6 of mode 1.*ask for rank\[1\] <= 6",
    ),
    "rank above current rank": (
        lambda: (tf.truncate, (_point(),), {"rank": (2, 3, 4)}),
        ValueError,
        r"rank\[2\]=4 exceeds the current rank 3 of mode 2: truncation cannot "
        r"increase a rank; ask for rank\[2\] <= 3",
    ),
    "step rank above the augmented rank": (
        lambda: (tf.tdlrt_step, (_point(), _dense(), 0.1), {"rank": (2, 3, 7)}),
        ValueError,
        r"rank\[2\]=7 exceeds the augmented rank 6 of mode 2: the truncation after an "
        r"augmented step \(or a retraction\) keeps at most the augmented basis, whose "
        r"size is min\(2\*r_2, n_2\) = min\(2\*3, 7\) = 6 .*one step can at most "
        r"double a rank; ask for rank\[2\] <= 6 in this step",
    ),
    "retraction rank above the augmented rank": (
        lambda: (
            tf.retract,
            (_point(), tf.random_tangent(_point(), random_state=1)),
            {"rank": (5, 3, 3)},
        ),
        ValueError,
        r"rank\[0\]=5 exceeds the augmented rank 4 of mode 0.*min\(2\*2, 5\) = 4",
    ),
    "objective returns only a value": (
        lambda: (
            tf.integrate,
            (lambda W: 0.5, _point()),
            {"lr": 0.1, "steps": 1, "tol": 0.1},
        ),
        TypeError,
        r"objective must return a \(value, grad\) pair -- the objective value and its "
        r"Euclidean gradient .* got float 0.5; to differentiate a scalar function "
        r"automatically instead, pass integrate\(None, \.\.\., value_fn=f\)",
    ),
    "objective returns (grad, value)": (
        lambda: (
            tf.integrate,
            (lambda W: (W, 0.5), _point()),
            {"lr": 0.1, "steps": 1, "tol": 0.1},
        ),
        TypeError,
        r"objective must return \(value, grad\) with value a real scalar .* got "
        r"numpy.ndarray of shape \(5, 6, 7\) as value; check the order",
    ),
    "rank wrong length": (
        lambda: (tf.hosvd, (_dense(),), {"rank": (2, 2)}),
        ValueError,
        r"rank must have one entry per mode \(3\), got 2",
    ),
    "rank not int": (
        lambda: (tf.hosvd, (_dense(),), {"rank": (2, 2.5, 2)}),
        TypeError,
        r"rank\[1\] must be an integer, got 2.5",
    ),
    "rank and tol": (
        lambda: (tf.hosvd, (_dense(),), {"rank": 2, "tol": 0.1}),
        ValueError,
        r"give at most one of rank, tol and budget, got rank and tol",
    ),
    "min above max": (
        lambda: (tf.hosvd, (_dense(),), {"tol": 0.1, "min_rank": 4, "max_rank": 3}),
        ValueError,
        r"min_rank 4 exceeds max_rank 3 in mode 0",
    ),
    "max rank above mode size": (
        lambda: (tf.truncate, (_point(),), {"tol": 0.1, "max_rank": (2, 2, 8)}),
        ValueError,
        r"max_rank\[2\]=8 exceeds the mode size 7",
    ),
    "budget too small": (
        lambda: (tf.truncate, (_point(),), {"budget": 10}),
        ValueError,
        r"budget=10 is smaller than 19, the parameter count of the smallest",
    ),
    "budget not int": (
        lambda: (tf.truncate, (_point(),), {"budget": 100.0}),
        TypeError,
        r"budget must be an int, got 100.0",
    ),
    "non-finite dense tensor": (
        lambda: (tf.hosvd, (_with_nan(_dense()),), {"rank": 2}),
        ValueError,
        r"tensor contains NaN or Inf",
    ),
    "non-finite core": (
        lambda: (tf.truncate, ((_with_nan(_point().core), _point().factors),), {}),
        ValueError,
        r"tucker core contains NaN or Inf",
    ),
    "non-orthonormal factor": (
        lambda: (tf.truncate, (_bad_factor(),), {"rank": 1}),
        ValueError,
        r"tucker factors\[1\] is not orthonormal: max\|U\^T U - I\| = 1.25e\+00",
    ),
    "core/factor shape mismatch": (
        lambda: (tf.truncate, (_mismatched(),), {}),
        ValueError,
        r"tucker factors\[2\] has shape \(7, 2\) but the core has size 3 in mode 2",
    ),
    "wrong number of factors": (
        lambda: (tf.truncate, ((_point().core, _point().factors[:2]),), {}),
        ValueError,
        r"tucker has a core with 3 modes but 2 factors",
    ),
    "mixed dtypes": (
        lambda: (tf.truncate, (_mixed_dtype(),), {}),
        TypeError,
        r"tucker factors\[0\] has dtype float64 but the core has float32",
    ),
    "not a tucker": (
        lambda: (tf.truncate, (_dense(),), {}),
        TypeError,
        r"tucker must be a TuckerTensor or a \(core, factors\) pair",
    ),
    "1-d tensor": (
        lambda: (tf.hosvd, (tl.tensor(np.ones(4)),), {}),
        ValueError,
        r"tensor must have at least 2 modes, got shape \(4,\)",
    ),
    "integer tensor": (
        lambda: (tf.hosvd, (tl.tensor(np.ones((3, 3), dtype=np.int64)),), {}),
        TypeError,
        r"tensor must have a floating-point dtype",
    ),
    "torch tensor while numpy is active": (
        lambda: (tf.hosvd, (torch.ones(3, 4, dtype=torch.float64),), {}),
        TypeError,
        r"tensor must be a tensor of the active TensorLy backend 'numpy', got "
        r"torch.Tensor",
    ),
    "ambient of the wrong shape": (
        lambda: (tf.project, (_point(), tl.tensor(np.ones((5, 6, 8)))), {}),
        ValueError,
        r"ambient has shape \(5, 6, 8\) but the Tucker tensor has shape \(5, 6, 7\)",
    ),
    "ambient from another backend": (
        lambda: (tf.project, (_point(), torch.ones(5, 6, 7, dtype=torch.float64)), {}),
        TypeError,
        r"ambient must be a tensor of the active TensorLy backend 'numpy'",
    ),
    "ambient with nan": (
        lambda: (tf.project, (_point(), _with_nan(tl.tensor(np.ones((5, 6, 7))))), {}),
        ValueError,
        r"ambient contains NaN or Inf",
    ),
    "tangent of the wrong type": (
        lambda: (tf.retract, (_point(), _point()), {}),
        TypeError,
        r"tangent must be a TangentVector",
    ),
    "tangent of another rank": (
        lambda: (
            tf.retract,
            (_point(), tf.random_tangent(tf.random_tucker((5, 6, 7), 2))),
            {},
        ),
        ValueError,
        r"tangent.core has shape \(2, 2, 2\) but the point has rank \(2, 3, 3\)",
    ),
    "not a multilinear rank": (
        lambda: (tf.random_tucker, ((5, 6, 7), (4, 1, 2)), {}),
        ValueError,
        r"rank\[0\]=4 exceeds 2, the product of the other ranks",
    ),
    "singular values of the wrong length": (
        lambda: (tf.random_tucker, ((5, 6, 7), 2), {"singular_values": [1.0]}),
        ValueError,
        r"singular_values must have max\(rank\) = 2 entries, got 1",
    ),
    "non-positive singular values": (
        lambda: (tf.random_tucker, ((5, 6, 7), 2), {"singular_values": [1.0, 0.0]}),
        ValueError,
        r"singular_values must be finite and > 0",
    ),
}


def _snapshot(value):
    """Deep NumPy copy of every tensor reachable from an argument."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().cpu().numpy().copy())
    if isinstance(value, np.ndarray):
        return ("tensor", value.copy())
    if isinstance(value, tf.TangentVector):
        return ("tangent", _snapshot(value.core), [_snapshot(f) for f in value.factors])
    if isinstance(value, (tuple, list, tl.tucker_tensor.TuckerTensor)):
        return ("seq", [_snapshot(v) for v in value])
    if tl.get_backend() == "cupy" and type(value).__module__.startswith("cupy"):
        return ("tensor", tl.to_numpy(value).copy())
    return ("value", value)


def _same(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "tensor":
        return a[1].shape == b[1].shape and np.array_equal(a[1], b[1], equal_nan=True)
    if a[0] == "tangent":
        return _same(a[1], b[1]) and all(_same(x, y) for x, y in zip(a[2], b[2]))
    if a[0] == "seq":
        return len(a[1]) == len(b[1]) and all(_same(x, y) for x, y in zip(a[1], b[1]))
    return a[1] == b[1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_a_clear_error_and_changes_nothing(case):
    build, error, pattern = CASES[case]
    function, args, kwargs = build()
    before = [_snapshot(a) for a in args]
    with pytest.raises(error, match=pattern):
        function(*args, **kwargs)
    after = [_snapshot(a) for a in args]
    assert all(_same(x, y) for x, y in zip(before, after))


def test_valid_inputs_are_never_modified_in_place(backend):
    Y = tf.random_tucker((5, 6, 7), (2, 3, 3), random_state=0)
    Z = tl.tensor(np.random.default_rng(1).standard_normal((5, 6, 7)))
    xi = tf.random_tangent(Y, random_state=2)
    before = [_snapshot(Y), _snapshot(Z), _snapshot(xi)]
    tf.truncate(Y, rank=1)
    tf.truncate(Y, tol=0.3)
    tf.project(Y, Z)
    tf.retract(Y, xi)
    tf.retract(Y, xi, tol=0.1)
    tf.inner(Y, xi, xi)
    tf.tangent_to_tensor(Y, xi)
    tf.hosvd(Z, rank=2)
    after = [_snapshot(Y), _snapshot(Z), _snapshot(xi)]
    assert all(_same(x, y) for x, y in zip(before, after))


def test_numpy_array_while_pytorch_is_active():
    with tf.use_backend("pytorch"):
        with pytest.raises(
            TypeError, match=r"active TensorLy backend 'pytorch'.*numpy"
        ):
            tf.hosvd(np.ones((3, 4)))


def test_numpy_gradient_while_pytorch_is_active():
    """The driver names the wrong array type, as the steps do (not "not finite")."""

    def numpy_objective(W):
        return 0.0, np.zeros(tuple(W.shape))

    with tf.use_backend("pytorch"):
        with pytest.raises(
            TypeError,
            match=r"the gradient returned by objective must be a tensor of the active "
            r"TensorLy backend 'pytorch', got numpy.ndarray; convert it with "
            r"tl.tensor\(...\)",
        ):
            tf.integrate(numpy_objective, _point(), lr=0.1, steps=1, tol=0.1)
