"""Mixed precision (issue 13, items 9 and 10), against the dense layer in the same
precision.

The control is the dense layer (``nn.Linear``, ``nn.ConvNd``, ``nn.ConvTranspose2d``)
under the same ``torch.autocast`` or stored in the same low-precision dtype, trained
with ``torch.optim.SGD``. A Tucker layer at full rank with pinned ranks takes exactly
the dense SGD step under TDLRT (see ``test_nn_training_loops``), so what separates the
two runs is rounding in the low-precision format, with unit roundoff ``eps / 2``
(``eps`` = 2^-8 for bfloat16, 2^-11 ... 2^-10 for float16):

* autocast: the Tucker weight is built in float32 and cast by the convolution/matmul,
  as the dense weight is. Each low-precision rounding on the way to the output costs
  at most ``eps / 2`` relative; the tolerance is (roundings of the Tucker path + of the
  dense path) * eps / 2 on the output, and the same fraction of the distance the
  weights moved for training (the gradients are computed by the same rounded ops).
* float16/bfloat16 storage: each step rounds the dense weight once and the Tucker
  core and ``d`` factors once each (plus ``d`` roundings of the mode products when the
  weight is rebuilt). Independent roundings add in quadrature over the steps: the
  two runs stay within ``(d + 1) eps sqrt(steps + 1) ||W||``.

CUDA cases (float16 and bfloat16) run whenever a GPU is visible.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv1d,
    TuckerConv2d,
    TuckerConv3d,
    TuckerConvTranspose2d,
    TuckerLinear,
    add_tucker_adapters,
    tuckerize,
)

LR = 0.1
TUCKER = {
    nn.Linear: TuckerLinear,
    nn.Conv1d: TuckerConv1d,
    nn.Conv2d: TuckerConv2d,
    nn.Conv3d: TuckerConv3d,
    nn.ConvTranspose2d: TuckerConvTranspose2d,
}
# name -> (dense layer, input shape, target shape)
CASES = {
    "linear": (lambda: nn.Linear(8, 6), (16, 8), (16, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), (4, 3, 7), (4, 4, 7)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), (4, 3, 5, 5), (4, 4, 5, 5)),
    "conv3d": (
        lambda: nn.Conv3d(2, 3, 3, padding=1),
        (2, 2, 4, 4, 4),
        (2, 3, 4, 4, 4),
    ),
    "conv_transpose2d": (
        lambda: nn.ConvTranspose2d(3, 4, 3),
        (4, 3, 5, 5),
        (4, 4, 7, 7),
    ),
}
# low-precision roundings on the way to the output: the dense layer casts its weight
# and rounds its output; a dense Tucker layer does the same with its rebuilt weight; a
# factorized one casts its three pieces and rounds three products
ROUNDINGS = {"dense": 2 + 2, "factorized": 2 + 6}


def _device_dtypes():
    cuda = pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device is visible to torch"
    )
    return [
        pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
        pytest.param("cpu", torch.float16, id="cpu-float16"),
        pytest.param("cuda", torch.float16, id="cuda-float16", marks=cuda),
        pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=cuda),
    ]


def _pair(name, implementation, device="cpu", dtype=torch.float32, seed=0):
    """A dense layer and its full-rank Tucker copy with pinned ranks."""
    torch.manual_seed(seed)
    dense = CASES[name][0]().to(device=device, dtype=dtype)
    full = tuple(dense.weight.shape)
    tucker = TUCKER[type(dense)].from_dense(
        dense, rank=full, min_rank=full, max_rank=full, implementation=implementation
    )
    return dense, tucker


def _batch(name, step, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(1000 + step)
    _, x_shape, y_shape = CASES[name]
    x = torch.randn(x_shape, generator=generator).to(device=device, dtype=dtype)
    y = torch.randn(y_shape, generator=generator).to(device=device, dtype=dtype)
    return x, y


def _relative(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------ item 9: autocast
@pytest.mark.parametrize(("device", "dtype"), _device_dtypes())
@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_under_autocast_matches_the_dense_layer(
    name, implementation, device, dtype
):
    dense, tucker = _pair(name, implementation, device)
    x, _ = _batch(name, 0, device)
    with torch.autocast(device, dtype=dtype):
        expected, got = dense(x), tucker(x)
    assert got.dtype == expected.dtype == dtype
    eps = torch.finfo(dtype).eps
    error = _relative(got, expected)
    assert error <= ROUNDINGS[implementation] * eps / 2, error / eps


@pytest.mark.parametrize(("device", "dtype"), _device_dtypes())
@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("name", ["linear", "conv2d"])
def test_training_under_autocast_follows_the_dense_layer(
    name, implementation, device, dtype
):
    """float32 weights, low-precision forward and backward, GradScaler for float16
    (as torch.amp's recipe): TDLRT follows SGD on the dense layer."""
    dense, tucker = _pair(name, implementation, device)
    start = dense.weight.detach().clone()
    runs = [
        (dense, torch.optim.SGD(dense.parameters(), lr=LR)),
        (tucker, TDLRT(tucker.parameters(), lr=LR, tol=0.0)),
    ]
    scaled = dtype == torch.float16
    scalers = [torch.amp.GradScaler(device, enabled=scaled) for _ in runs]
    for step in range(5):
        x, y = _batch(name, step, device)
        for (model, optimizer), scaler in zip(runs, scalers):
            optimizer.zero_grad()
            with torch.autocast(device, dtype=dtype):
                loss = F.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    assert tucker.core.dtype == torch.float32  # the master weights stay float32
    moved = float((dense.weight.detach() - start).norm())
    assert moved > 0.05 * float(start.norm()), "the control should have moved"
    error = float((tucker.weight.detach() - dense.weight.detach()).norm())
    eps = torch.finfo(dtype).eps
    assert error <= ROUNDINGS[implementation] * eps / 2 * moved, error / moved / eps
    torch.testing.assert_close(
        tucker.bias, dense.bias, rtol=0, atol=ROUNDINGS[implementation] * eps * moved
    )


def test_a_step_called_inside_autocast_is_the_step_outside():
    _, tucker = _pair("conv2d", "dense")
    twin = _pair("conv2d", "dense")[1]
    optimizers = [TDLRT(m.parameters(), lr=LR, tol=0.05) for m in (tucker, twin)]
    x, y = _batch("conv2d", 0)
    for model, optimizer, inside in zip((tucker, twin), optimizers, (False, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if inside:
                optimizer.step()
        if not inside:
            optimizer.step()
    assert tucker.rank == twin.rank
    torch.testing.assert_close(tucker.weight, twin.weight, rtol=0, atol=0)


# ------------------------------------------- item 10: float16/bfloat16 storage
LOW = [
    pytest.param(torch.bfloat16, id="bfloat16"),
    pytest.param(torch.float16, id="float16"),
]


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_layers_are_built_and_stored_in_their_dtype(dtype):
    eps = torch.finfo(dtype).eps
    for layer in (
        TuckerLinear(8, 6, dtype=dtype),
        TuckerConv2d(3, 4, 3, rank=(2, 2, 3, 3), dtype=dtype),
    ):
        assert {p.dtype for p in layer.parameters()} == {dtype}
        assert max(layer.orthonormality_error()) <= 10 * eps
    for name in ("linear", "conv2d"):
        dense, tucker = _pair(name, "dense", dtype=dtype)
        assert {p.dtype for p in tucker.parameters()} == {dtype}
        # float32 HOSVD, then the core and d factors rounded, and d mode products
        d = tucker.core.dim()
        error = _relative(tucker.weight, dense.weight)
        assert error <= (2 * d + 1) * eps / 2, error / eps
        truncated = TUCKER[type(dense)].from_dense(dense, tol=0.3)
        assert truncated.core.dtype == dtype
        error = _relative(truncated.weight, dense.weight)
        assert error <= 0.3 + (2 * d + 1) * eps / 2, error


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("name", ["linear", "conv2d"])
def test_low_precision_training_tracks_the_dense_layer(name, implementation, dtype):
    dense, tucker = _pair(name, implementation, dtype=dtype)
    start = dense.weight.detach().clone()
    # heavy-ball momentum at full rank is dense momentum SGD for the dense
    # implementation's TDLRT step (the factorized parallel step's is not, also in
    # float64)
    momentum = 0.5 if implementation == "dense" else 0.0
    runs = [
        (dense, torch.optim.SGD(dense.parameters(), lr=LR, momentum=momentum)),
        (tucker, TDLRT(tucker.parameters(), lr=LR, tol=0.0, momentum=momentum)),
    ]
    steps = 10
    for step in range(steps):
        x, y = _batch(name, step, dtype=dtype)
        for model, optimizer in runs:
            optimizer.zero_grad()
            F.mse_loss(model(x).float(), y.float()).backward()
            optimizer.step()
    assert {p.dtype for p in tucker.parameters()} == {dtype}
    if momentum:
        state = runs[1][1].state[tucker.core]["tucker_state"]
        assert state["core"].dtype == torch.float32  # the step's state stays float32
    assert _relative(dense.weight, start) > 0.1, "the control should have moved"
    d = tucker.core.dim()
    eps = torch.finfo(dtype).eps
    error = _relative(tucker.weight, dense.weight)
    assert error <= (d + 1) * eps * math.sqrt(steps + 1), error / eps


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("rule", ["momentum", "adam", "every2"])
def test_a_low_precision_checkpoint_resumes_exactly(dtype, rule):
    # the TDLRT state of a float16/bfloat16 layer is float32 (its compute dtype);
    # torch.optim's load_state_dict casts state tensors to the parameter's dtype,
    # which rounded it: the resumed run then left the uninterrupted one
    options = {
        "momentum": {"momentum": 0.9},
        "adam": {"adam": True},
        "every2": {"momentum": 0.9, "basis_update_every": 2},
    }[rule]
    _, model = _pair("conv2d", "dense", dtype=dtype)
    optimizer = TDLRT(model.parameters(), lr=LR, tol=0.1, **options)

    def train(model, optimizer, steps):
        for step in steps:
            x, y = _batch("conv2d", step, dtype=dtype)
            optimizer.zero_grad()
            F.mse_loss(model(x).float(), y.float()).backward()
            optimizer.step()

    train(model, optimizer, range(3))
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    _, resumed = _pair("conv2d", "dense", dtype=dtype)
    resumed.load_state_dict(saved_model)
    again = TDLRT(resumed.parameters(), lr=LR, tol=0.1, **options)
    again.load_state_dict(saved_optimizer)
    state = again.state[resumed.core]["tucker_state"]
    assert {t.dtype for t in _tensors_of(state)} == {torch.float32}
    train(model, optimizer, range(3, 7))
    train(resumed, again, range(3, 7))
    assert resumed.rank == model.rank
    assert torch.equal(resumed.weight, model.weight)


def _tensors_of(value):
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_of(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_of(v)]
    return []


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 5 * 5, 6),
    )


@pytest.mark.parametrize("dtype", LOW)
def test_tuckerize_and_adapters_on_a_low_precision_model(dtype):
    x = torch.randn(4, 3, 5, 5).to(dtype)
    y = torch.randn(4, 6).to(dtype)
    model = tuckerize(_small_model().to(dtype))  # the default ranks
    assert {p.dtype for p in model.parameters()} == {dtype}
    # float32 spectra for the dense-size cap, the tolerance and the budget
    for options in ({}, {"tol": 0.2}, {"budget": 40}):
        with warnings.catch_warnings():  # tol: "capped the ranks" at the dense size
            warnings.filterwarnings("ignore", "tuckerize: capped", UserWarning)
            small = tuckerize(nn.Sequential(nn.Linear(8, 6)).to(dtype), **options)
        assert small[0].core.dtype == dtype
        assert small[0].parameter_count() <= 48
    base = _small_model().to(dtype)
    expected = base(x)
    adapted = add_tucker_adapters(base, ["0", "3"], rank=2, verbose=False)
    assert {b.dtype for b in adapted.buffers()} == {dtype}
    # a zero core: the adapted model starts as the base model, to the bit
    torch.testing.assert_close(adapted(x), expected, rtol=0, atol=0)
    for trained in (model, adapted):
        optimizer = TDLRT(
            [p for p in trained.parameters() if p.requires_grad], lr=0.05, tol=0.05
        )
        losses = []
        for _ in range(5):
            optimizer.zero_grad()
            loss = F.mse_loss(trained(x).float(), y.float())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
        assert {p.dtype for p in trained.parameters()} == {dtype}
