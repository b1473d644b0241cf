"""One host transfer per ``TDLRT.step()`` (issue 14, item 3).

Every rank decision and the non-finite check read the device once: the gradient
sums, the loss, every singular value and norm the rules need go to the host in one
vector (``tuckerflow.integrators.multi.to_host``); the ranks are decided there and
the truncation runs on the device, indexed by Python ints. The CPU test counts the
Python-level calls that read a tensor's values on the host; the CUDA test runs the
step under ``torch.cuda.set_sync_debug_mode("error")`` apart from that transfer.
The multi-tensor step of a mixed model is also compared with the single-tensor
core steps, over rank changes.
"""

from __future__ import annotations

import collections
import contextlib
import copy

import pytest
import tensorly as tl
from tensorly.tucker_tensor import TuckerTensor

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow.integrators import multi  # noqa: E402
from tuckerflow.nn import TDLRT, TuckerConv2d, TuckerLinear  # noqa: E402

# the methods through which Python code reads a tensor's values on the host (on a
# GPU each is a device-to-host copy and a synchronization)
READS = (
    "item",
    "cpu",
    "tolist",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__array__",
)

LR = 1.0  # large enough for the ranks to change in the first steps
OPTIONS = [
    pytest.param({"tol": 0.01, "momentum": 0.9}, id="tol-momentum"),
    pytest.param({"tol": 0.01, "adam": True}, id="tol-adam"),
    pytest.param({"budget": 1600, "momentum": 0.9}, id="budget-momentum"),
    pytest.param(
        {"budget": 1600, "adam": True, "budget_criterion": "energy"},
        id="budget-adam",
    ),
    pytest.param({"tol": 0.01, "weight_decay": 1e-3}, id="tol-plain-decay"),
]


class _Mixed(nn.Module):
    """Tucker layers of several shapes (two alike, to form a group), biases."""

    def __init__(self, dtype=torch.float64, device=None, implementation="dense"):
        super().__init__()
        kwargs = dict(dtype=dtype, device=device, implementation=implementation)
        self.conv1 = TuckerConv2d(3, 8, 3, padding=1, rank=(3, 2, 3, 3), **kwargs)
        self.conv2 = TuckerConv2d(8, 8, 3, padding=1, rank=(3, 3, 3, 3), **kwargs)
        self.conv3 = TuckerConv2d(8, 8, 3, padding=1, rank=(3, 3, 3, 3), **kwargs)
        self.fc1 = TuckerLinear(8 * 16, 20, rank=4, **kwargs)
        self.fc2 = TuckerLinear(20, 5, rank=2, **kwargs)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = F.avg_pool2d(torch.relu(self.conv3(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _data(dtype=torch.float64, device=None):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, generator=generator, dtype=dtype)
    y = torch.randint(0, 5, (6,), generator=generator)
    return x.to(device), y.to(device)


def _backward(model, optimizer, x, y):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()


@contextlib.contextmanager
def _host_reads(monkeypatch, exempt=lambda tensor: False):
    """Count the calls of READS on tensors (but ``exempt`` ones)."""
    counts: collections.Counter = collections.Counter()
    copies = set()  # tensors .cpu() returned: their .numpy() is the same transfer
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _name=name, _original=original, **kwargs):
            if not exempt(self) and id(self) not in copies:
                counts[_name] += 1
            out = _original(self, *args, **kwargs)
            if _name == "cpu":
                copies.add(id(out))
            return out

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    try:
        yield counts
    finally:
        monkeypatch.undo()


def _host_state(optimizer):
    """The tensors torch.optim keeps on the host whatever the parameters' device
    (Adam's ``step`` counts): reading them moves nothing off a device."""
    kept = set()
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            kept.add(id(step))
    return kept


@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("options", OPTIONS)
def test_one_host_transfer_per_step(monkeypatch, options, implementation):
    # dense layers take the multi-tensor TDLRT step; factorized ones the parallel
    # BUG step from their core and factor gradients, layer by layer
    torch.manual_seed(0)
    model = _Mixed(implementation=implementation)
    optimizer = TDLRT(model, lr=LR, **options)
    x, y = _data()
    ranks = {name: m.rank for name, m in model.named_children()}
    _backward(model, optimizer, x, y)
    optimizer.step()  # the first step checks every factor (one read each)
    for _ in range(3):
        _backward(model, optimizer, x, y)
        host = _host_state(optimizer)
        with _host_reads(monkeypatch, lambda t, host=host: id(t) in host) as counts:
            optimizer.step()
        assert sum(counts.values()) == 1, dict(counts)
        assert counts["cpu"] == 1  # the one to_host copy (tl.to_numpy)
    if implementation == "dense":  # (the factorized runs keep some ranks here)
        assert {name: m.rank for name, m in model.named_children()} != ranks


def test_a_skipped_step_reads_the_device_once_and_changes_nothing(monkeypatch):
    torch.manual_seed(0)
    model = _Mixed()
    optimizer = TDLRT(model, lr=LR, tol=0.01, momentum=0.9)
    x, y = _data()
    _backward(model, optimizer, x, y)
    optimizer.step()
    _backward(model, optimizer, x, y)
    model.conv2.weight_delta.grad[0, 0, 0, 0] = float("nan")
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    with _host_reads(monkeypatch) as counts:
        with pytest.warns(RuntimeWarning, match="not finite"):
            optimizer.step()
    assert sum(counts.values()) == 1, dict(counts)
    torch.testing.assert_close(model.state_dict(), weights, atol=0, rtol=0)
    after = optimizer.state_dict()
    assert after["tdlrt_steps"] == state["tdlrt_steps"]

    def tensors(saved):  # (assert_close compares no str: the packed rule names)
        return {
            index: {
                key: (
                    {k: v for k, v in value.items() if k != "rule"}
                    if key == "tucker_state"
                    else value
                )
                for key, value in entry.items()
            }
            for index, entry in saved.items()
        }

    torch.testing.assert_close(
        tensors(after["state"]), tensors(state["state"]), atol=0, rtol=0
    )
    assert [e.get("tucker_state", {}).get("rule") for e in after["state"].values()] == [
        e.get("tucker_state", {}).get("rule") for e in state["state"].values()
    ]


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"adam": True}])
def test_a_mixed_model_takes_the_single_tensor_core_steps(options):
    # the batched step (augmentation, SVDs, truncation and state transport per
    # group of equal shapes) against tuckerflow.tdlrt_step layer by layer, over
    # steps with rank changes
    torch.manual_seed(0)
    model = _Mixed()
    reference = {n: m.tucker() for n, m in model.named_children()}
    reference = {
        n: TuckerTensor((t.core.clone(), [f.clone() for f in t.factors]))
        for n, t in reference.items()
    }
    layers = dict(model.named_children())
    states = {}
    with tf.use_backend("pytorch"):
        for name, tucker in reference.items():
            if options.get("momentum"):
                states[name] = tf.Momentum.init(tucker, options["momentum"])
            elif options.get("adam"):
                states[name] = tf.Adam.init(tucker)
    optimizer = TDLRT(model, lr=LR, tol=0.01, **options)
    x, y = _data()
    changed = False
    for _ in range(4):
        _backward(model, optimizer, x, y)
        grads = {n: m.weight_gradient().clone() for n, m in layers.items()}
        # rounding (float64, 1e-16 relative to the largest gradient entry) moves a
        # step by lr * eps * max|G|; Adam divides by sqrt(v) + adam_eps, which
        # magnifies an absolute perturbation of a near-zero entry up to 1/adam_eps
        scale = max(float(g.abs().max()) for g in grads.values())
        atol = 1e-12 if not options.get("adam") else 10 * LR * 2e-16 * scale / 1e-8
        optimizer.step()
        with tf.use_backend("pytorch"):
            for name, layer in layers.items():
                out, state = tf.tdlrt_step(
                    reference[name],
                    grads[name],
                    LR,
                    tol=0.01,
                    min_rank=layer.min_rank,
                    max_rank=layer.max_rank,
                    state=states.get(name),
                )
                if name in states:
                    states[name] = state
                changed |= out.rank != reference[name].rank
                reference[name] = out
                assert layer.rank == out.rank
                torch.testing.assert_close(
                    layer.weight.detach(), out.to_tensor(), atol=atol, rtol=0
                )
        # the optimizer's layers go on from their own weights: same points
        for name, layer in layers.items():
            reference[name] = TuckerTensor(
                (
                    layer.core.detach().clone(),
                    [f.detach().clone() for f in layer.factors],
                )
            )
    assert changed


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device is visible to torch: the step's synchronizations can "
    "only be checked on a GPU",
)
@pytest.mark.parametrize("options", OPTIONS)
def test_a_cuda_step_synchronizes_only_for_its_one_transfer(monkeypatch, options):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = _Mixed(device=device)
    optimizer = TDLRT(model, lr=0.3, **options)
    x, y = _data(device=device)
    _backward(model, optimizer, x, y)
    optimizer.step()  # the first step checks every factor
    _backward(model, optimizer, x, y)
    torch.cuda.synchronize()
    calls = collections.Counter()
    original = multi.to_host

    def allowed(name, function):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(mode)

        return wrapped

    monkeypatch.setattr(multi, "to_host", allowed("to_host", original))
    # torch.linalg.svd synchronizes on CUDA by design (its documentation: it checks
    # convergence on the host); the batched SVDs are allowed, and counted
    backend = tl.backend.BackendManager._loaded_backends["pytorch"]
    monkeypatch.setitem(backend.__dict__, "svd", allowed("svd", backend.svd))
    torch.cuda.set_sync_debug_mode("error")
    try:
        optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert calls["to_host"] == 1
    # one batched SVD per group of equal augmented shapes and mode (not per layer)
    assert calls["svd"] <= 8
