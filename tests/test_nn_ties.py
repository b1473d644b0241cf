"""Tied weights under tuckerize and add_tucker_adapters (issue 13.5).

One module used under two names stays one module: a single Tucker layer (or adapter)
is installed under every name, trains as one and is counted once. Two distinct
modules holding one Parameter cannot stay tied as two Tucker layers: the conversion
refuses before touching the model, naming both and the fix.
"""

from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerLinear,
    add_tucker_adapters,
    compression_report,
    merge_adapters,
    tuckerize,
)

D = torch.float64


class _Shared(nn.Module):
    """One Linear applied twice, registered under two names."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8, dtype=D)
        self.mid = nn.Linear(8, 8, dtype=D)
        self.again = self.mid  # the same module under a second name
        self.out = nn.Linear(8, 3, dtype=D)

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.again(h)))


class _TiedParameter(nn.Module):
    """Two Linears holding one weight Parameter (different biases)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8, dtype=D)
        self.second = nn.Linear(8, 8, dtype=D)
        self.second.weight = self.first.weight

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


class _TiedHead(nn.Module):
    """A language-model style output layer tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6, dtype=D)
        self.body = nn.Linear(6, 6, dtype=D)
        self.head = nn.Linear(6, 10, bias=False, dtype=D)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.body(self.embed(tokens))))


def _batch(step):
    generator = torch.Generator().manual_seed(step)
    return (
        torch.randn(16, 6, generator=generator, dtype=D),
        torch.randn(16, 3, generator=generator, dtype=D),
    )


def test_a_module_under_two_names_becomes_one_tucker_layer_and_stays_tied():
    torch.manual_seed(0)
    control = _Shared()
    model = copy.deepcopy(control)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank stores more than dense
        tuckerize(model, rank=8, min_rank=8, max_rank=8, cap_at_dense=False)
    assert isinstance(model.mid, TuckerLinear) and model.again is model.mid
    report = compression_report(model)
    rows = {row["name"]: row for row in report.rows}
    assert set(rows) == {"inp", "mid", "out"}  # counted once
    assert rows["mid"]["aliases"] == ("again",)
    assert report.dense == 6 * 8 + 8 * 8 + 8 * 3
    assert "shared layers, counted once: mid = again" in str(report)
    start = control.mid.weight.detach().clone()
    runs = [
        (control, torch.optim.SGD(control.parameters(), lr=0.1)),
        (model, TDLRT(model.parameters(), lr=0.1, tol=0.0)),
    ]
    for step in range(3):
        x, y = _batch(step)
        for module, optimizer in runs:
            optimizer.zero_grad()
            F.mse_loss(module(x), y).backward()
            optimizer.step()
    assert model.again is model.mid  # still one layer
    moved = (control.mid.weight - start).norm()
    assert moved > 1e-3 * start.norm()
    # the shared layer took the dense step with the gradient of both uses
    error = (model.mid.weight - control.mid.weight).norm()
    assert error <= 1e-12 * control.mid.weight.norm(), float(error)


def test_skipping_either_name_keeps_the_shared_module_dense():
    model = tuckerize(_Shared(), rank=2, skip=("again", "out"))
    assert type(model.mid) is nn.Linear and model.again is model.mid
    assert isinstance(model.inp, TuckerLinear)


def _snapshot(model):
    return [(name, id(module)) for name, module in model.named_modules()] + [
        (name, id(p)) for name, p in model.named_parameters(remove_duplicate=False)
    ]


@pytest.mark.parametrize(
    "make, names",
    [
        (_TiedParameter, ("first.weight is also second.weight",)),
        (_TiedHead, ("head.weight is also embed.weight",)),
    ],
)
def test_distinct_modules_sharing_a_parameter_are_refused_before_any_change(
    make, names
):
    model = make()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="share a Parameter") as raised:
        tuckerize(model, rank=2)
    message = str(raised.value)
    for name in names:
        assert name in message
    assert "skip=" in message and "untie" in message
    assert _snapshot(model) == before  # nothing replaced, nothing untied
    with pytest.raises(ValueError, match="share a Parameter") as raised:
        add_tucker_adapters(model, [nn.Linear], verbose=False)
    assert "target_modules" in str(raised.value)
    assert _snapshot(model) == before
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen


def test_the_suggested_skip_converts_the_rest():
    with pytest.warns(UserWarning, match="no Linear or Conv module to convert"):
        model = tuckerize(_TiedParameter(), rank=2, skip=("first", "second"))
    assert model.second.weight is model.first.weight
    head = tuckerize(_TiedHead(), rank=2, skip=("head",))
    assert head.head.weight is head.embed.weight
    assert isinstance(head.body, TuckerLinear)


def test_adapters_on_a_shared_module_are_one_adapter_and_merge_under_both_names():
    torch.manual_seed(0)
    model = _Shared()
    x, y = _batch(0)
    before = model(x).detach()
    add_tucker_adapters(model, ["mid"], rank=2, verbose=False)
    assert isinstance(model.mid, TuckerLinear) and model.again is model.mid
    torch.testing.assert_close(model(x), before)
    optimizer = TDLRT(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, tol=0.01
    )
    for step in range(3):
        x, y = _batch(step)
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    assert model.again is model.mid
    adapted = model(x).detach()
    merge_adapters(model)
    assert type(model.mid) is nn.Linear and model.again is model.mid
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-12)
