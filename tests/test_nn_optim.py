"""The TDLRT optimizer: it calls the core steps (it does not re-derive them), keeps
parameters, optimizer state and schedulers consistent through rank changes, and
skips non-finite steps without touching anything."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow.nn import TDLRT, TuckerConv2d, TuckerLinear  # noqa: E402


def _problem(implementation="dense", seed=0):
    torch.manual_seed(seed)
    layer = TuckerConv2d(
        6,
        8,
        3,
        padding=1,
        rank=(3, 3, 3, 3),
        implementation=implementation,
        dtype=torch.float64,
    )
    x = torch.randn(4, 6, 7, 7, dtype=torch.float64)
    target = torch.randn(4, 8, 7, 7, dtype=torch.float64)
    return layer, x, target


def _dense(tucker):
    with tf.use_backend("pytorch"):
        return tucker.to_tensor()


def _dense_gradient(layer, x, target):
    weight = layer.weight.detach().requires_grad_(True)
    loss = F.mse_loss(F.conv2d(x, weight, layer.bias, padding=1), target)
    (grad,) = torch.autograd.grad(loss, weight)
    return grad


def test_one_step_is_the_core_tdlrt_step_on_the_autograd_weight_gradient():
    layer, x, target = _problem()
    grad = _dense_gradient(layer, x, target)
    with tf.use_backend("pytorch"):
        expected, _ = tf.tdlrt_step(
            layer.tucker(),
            grad,
            0.5,
            tol=0.05,
            min_rank=layer.min_rank,
            max_rank=layer.max_rank,
        )
    optimizer = TDLRT(layer.parameters(), lr=0.5, tol=0.05)
    F.mse_loss(layer(x), target).backward()
    optimizer.step()
    assert layer.rank == expected.rank
    torch.testing.assert_close(
        layer.weight.detach(), _dense(expected), atol=1e-12, rtol=0
    )


def test_factorized_layers_take_the_parallel_step_from_one_backward_pass():
    layer, x, target = _problem("factorized")
    grad = _dense_gradient(layer, x, target)
    with tf.use_backend("pytorch"):
        expected, _ = tf.parallel_bug_step(
            layer.tucker(),
            grad,
            0.5,
            tol=0.05,
            min_rank=layer.min_rank,
            max_rank=layer.max_rank,
        )
    optimizer = TDLRT(layer.parameters(), lr=0.5, tol=0.05)
    assert layer.gradient_source == "factors"
    F.mse_loss(layer(x), target).backward()
    optimizer.step()
    assert layer.rank == expected.rank
    # the K-gradients come from a k x k solve: exact up to cond(S) * eps
    torch.testing.assert_close(
        layer.weight.detach(), _dense(expected), atol=1e-10, rtol=0
    )


def test_weight_decay_acts_on_the_represented_weight():
    layer, x, target = _problem()
    grad = _dense_gradient(layer, x, target)
    with tf.use_backend("pytorch"):
        expected, _ = tf.tdlrt_step(
            layer.tucker(),
            grad + 0.1 * layer.weight.detach(),
            0.5,
            tol=0.05,
            min_rank=layer.min_rank,
            max_rank=layer.max_rank,
        )
    optimizer = TDLRT(layer.parameters(), lr=0.5, tol=0.05, weight_decay=0.1)
    F.mse_loss(layer(x), target).backward()
    optimizer.step()
    torch.testing.assert_close(
        layer.weight.detach(), _dense(expected), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"adam": True}])
def test_rank_changes_keep_parameters_state_and_scheduler_consistent(options):
    torch.manual_seed(0)
    model = nn.Sequential(
        TuckerLinear(20, 30, rank=2, max_rank=12), nn.ReLU(), nn.Linear(30, 3)
    )
    # tol small enough that one step's new directions survive: the rank grows
    optimizer = TDLRT(model.parameters(), lr=0.2, tol=0.002, **options)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    layer = model[0]
    parameter_ids = [id(p) for p in model.parameters()]
    ranks, lrs = [layer.rank], []
    for _ in range(15):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        ranks.append(layer.rank)
        lrs.append(optimizer.param_groups[0]["lr"])
        assert tuple(layer.core.shape) == layer.rank
        assert [tuple(f.shape) for f in layer.factors] == [
            (30, layer.rank[0]),
            (20, layer.rank[1]),
        ]
        assert layer.core.grad is None
        # dL/dW stays after the step, like nn.Linear.weight.grad after SGD's
        assert layer.weight_gradient() is layer.weight_delta.grad is not None
        assert layer.core.is_leaf and layer.core.grad_fn is None  # no graph kept
        packed = optimizer.state[layer.core].get("tucker_state")
        if options:
            from tuckerflow.nn.optim import _unpack

            with tf.use_backend("pytorch"):
                _unpack(packed).check(
                    layer.core.detach(), [f.detach() for f in layer.factors]
                )
    assert len(set(ranks)) > 1, "the rank should have changed"
    assert lrs[4] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.05)
    assert [id(p) for p in model.parameters()] == parameter_ids
    state = optimizer.state_dict()
    assert len(state["state"]) >= 1


def test_non_finite_loss_or_gradient_skips_the_step_and_changes_nothing():
    layer, x, target = _problem()
    optimizer = TDLRT(layer.parameters(), lr=0.5, tol=0.05, momentum=0.9)
    F.mse_loss(layer(x), target).backward()
    optimizer.step()  # build some state
    before = layer.weight.detach().clone()
    state_before = {
        k: v for k, v in optimizer.state[layer.core]["tucker_state"].items()
    }
    optimizer.zero_grad()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    F.mse_loss(layer(bad), target).backward()
    with pytest.warns(RuntimeWarning, match="not finite.*step was skipped"):
        optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), before)
    after = optimizer.state[layer.core]["tucker_state"]
    assert after["core"] is state_before["core"]

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(layer(x), target) * float("inf")
        loss.backward()
        return loss

    with pytest.warns(RuntimeWarning, match="the loss is inf"):
        optimizer.step(closure)
    torch.testing.assert_close(layer.weight.detach(), before)


def test_closure_and_vanilla_method():
    layer, x, target = _problem()
    optimizer = TDLRT(layer.parameters(), lr=0.1, method="vanilla", momentum=0.5)
    assert layer.gradient_source == "factors"

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        return loss

    first = optimizer.step(closure).item()
    for _ in range(20):
        last = optimizer.step(closure).item()
    assert last < first and layer.rank == (3, 3, 3, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"tol": 1.0}, r"tol must lie in \[0, 1\)"),
        ({"tol": -0.1}, r"tol must lie in \[0, 1\)"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"lr": True}, "lr must be a finite number > 0"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
        ({"betas": (0.9,)}, r"betas must be two numbers in \[0, 1\)"),
        ({"eps": 0.0}, "eps must be finite and > 0"),
        ({"momentum": 1.0}, r"momentum must lie in \[0, 1\)"),
        ({"method": "sgd"}, "method must be one of"),
        ({"nesterov": True}, "nesterov needs momentum"),
    ],
)
def test_bad_optimizer_arguments(kwargs, message):
    layer = TuckerLinear(5, 4, rank=2)
    options = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        TDLRT(layer.parameters(), **options)


def test_tdlrt_method_on_a_factorized_layer_is_refused():
    layer = TuckerLinear(5, 4, rank=2, implementation="factorized")
    with pytest.raises(
        ValueError, match="method='tdlrt' needs the dense weight gradient"
    ):
        TDLRT(layer.parameters(), lr=0.1, method="tdlrt")


def test_a_layer_split_across_parameter_groups_is_refused():
    layer = TuckerLinear(5, 4, rank=2)
    with pytest.raises(ValueError, match="must be in the same parameter group"):
        TDLRT([{"params": [layer.core]}, {"params": list(layer.factors)}], lr=0.1)


@pytest.mark.filterwarnings("ignore:TDLRT. none of the parameters belongs")
def test_ordinary_parameters_get_plain_sgd_and_adam():
    torch.manual_seed(0)
    reference = nn.Linear(4, 3)
    ours = nn.Linear(4, 3)
    ours.load_state_dict(reference.state_dict())
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    for ours_options, torch_cls, torch_options in (
        (
            {"momentum": 0.9, "weight_decay": 0.01},
            torch.optim.SGD,
            {"momentum": 0.9, "weight_decay": 0.01},
        ),
        ({"adam": True}, torch.optim.Adam, {}),
    ):
        ours.load_state_dict(reference.state_dict())
        mirror = nn.Linear(4, 3)
        mirror.load_state_dict(reference.state_dict())
        a = TDLRT(ours.parameters(), lr=0.05, **ours_options)
        b = torch_cls(mirror.parameters(), lr=0.05, **torch_options)
        for _ in range(5):
            for model, optimizer in ((ours, a), (mirror, b)):
                optimizer.zero_grad()
                F.mse_loss(model(x), y).backward()
                optimizer.step()
        torch.testing.assert_close(ours.weight, mirror.weight, atol=1e-6, rtol=1e-5)


def test_no_warning_on_a_normal_step():
    layer, x, target = _problem()
    optimizer = TDLRT(layer.parameters(), lr=0.1)
    F.mse_loss(layer(x), target).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()


def test_a_deep_copied_model_trains_its_own_layers():
    import copy

    original, x, target = _problem()
    clone = copy.deepcopy(original)
    before = original.weight.detach().clone()
    optimizer = TDLRT(clone.parameters(), lr=0.5, tol=0.05)
    F.mse_loss(clone(x), target).backward()
    optimizer.step()
    torch.testing.assert_close(original.weight.detach(), before)  # untouched
    assert not torch.allclose(clone.weight.detach(), before)


@pytest.mark.filterwarnings("ignore:TDLRT. none of the parameters belongs")
@pytest.mark.parametrize(
    "ours, torch_cls, theirs",
    [
        ({}, torch.optim.SGD, {}),
        (
            {"momentum": 0.9, "weight_decay": 0.01},
            torch.optim.SGD,
            {"momentum": 0.9, "weight_decay": 0.01},
        ),
        (
            {"momentum": 0.8, "nesterov": True},
            torch.optim.SGD,
            {"momentum": 0.8, "nesterov": True},
        ),
        (
            {"adam": True, "weight_decay": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
            torch.optim.Adam,
            {"weight_decay": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
        ),
    ],
)
def test_ordinary_parameters_take_torch_optims_multi_tensor_step(
    ours, torch_cls, theirs
):
    # biases, BatchNorm and dense layers go through torch.optim's functional
    # sgd/adam with foreach=True, all of a group's parameters at once: the
    # iterates and the state (torch.optim's keys) of SGD/Adam(foreach=True)
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    mirror = copy.deepcopy(model)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    a = TDLRT(model.parameters(), lr=0.05, **ours)
    b = torch_cls(mirror.parameters(), lr=0.05, foreach=True, **theirs)
    for _ in range(5):
        for net, optimizer in ((model, a), (mirror, b)):
            optimizer.zero_grad()
            F.mse_loss(net(x), y).backward()
            optimizer.step()
    for p, q in zip(model.parameters(), mirror.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    torch.testing.assert_close(
        a.state_dict()["state"], b.state_dict()["state"], atol=0, rtol=0
    )


@pytest.mark.filterwarnings("ignore:TDLRT. none of the parameters belongs")
def test_an_older_adam_state_of_ordinary_parameters_still_loads():
    # before the foreach path the step counters were float64 tensors: such a
    # checkpoint resumes as torch.optim.Adam resumes it
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    optimizer = TDLRT(model.parameters(), lr=0.05, adam=True)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    for state in saved["state"].values():
        state["step"] = state["step"].to(torch.float64)  # the old format
    mirror = copy.deepcopy(model)
    a = TDLRT(model.parameters(), lr=0.05, adam=True)
    a.load_state_dict(saved)
    b = torch.optim.Adam(mirror.parameters(), lr=0.05, foreach=True)
    b.load_state_dict(  # (its own copy: loading keeps the tensors of a dict)
        {
            "state": copy.deepcopy(saved["state"]),
            "param_groups": b.state_dict()["param_groups"],
        }
    )
    for _ in range(3):
        for net, opt in ((model, a), (mirror, b)):
            opt.zero_grad()
            F.mse_loss(net(x), y).backward()
            opt.step()
    for p, q in zip(model.parameters(), mirror.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert float(a.state[next(model.parameters())]["step"]) == 6


@pytest.mark.filterwarnings("ignore:TDLRT. none of the parameters belongs")
def test_a_sparse_gradient_takes_plain_sgd():
    # nn.Embedding(sparse=True): the foreach path is told (has_sparse_grad)
    import copy

    torch.manual_seed(0)
    ours = nn.Embedding(10, 4, sparse=True)
    mirror = copy.deepcopy(ours)
    a = TDLRT(ours.parameters(), lr=0.1)
    b = torch.optim.SGD(mirror.parameters(), lr=0.1)
    for _ in range(2):
        for net, optimizer in ((ours, a), (mirror, b)):
            optimizer.zero_grad()
            net(torch.tensor([1, 2, 2])).sum().backward()
            optimizer.step()
    torch.testing.assert_close(ours.weight, mirror.weight, atol=0, rtol=0)


def test_an_optimizer_built_before_conversion_says_so():
    # new-user trial: TDLRT(model) then tuckerize(model) trained nothing, silently
    from tuckerflow.nn import tuckerize
    from tuckerflow.nn.models import LeNet5

    model = LeNet5()
    with pytest.warns(UserWarning, match="none of the parameters belongs to a Tucker"):
        optimizer = TDLRT(model, lr=0.05)
    tuckerize(model, rank=4)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with pytest.warns(UserWarning, match="build it after converting") as record:
        for _ in range(2):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert len([w for w in record if "build it after" in str(w.message)]) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # built after the conversion: no warning, and the model trains
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = TDLRT(model, lr=0.05)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
