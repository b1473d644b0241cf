"""The conversion registry: isinstance dispatch, the left-dense warning, and
``register_tucker_layer`` (issue 13.12)."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TuckerConv2d,
    TuckerConvTranspose2d,
    TuckerLinear,
    TuckerMultiheadAttention,
    add_tucker_adapters,
    register_tucker_layer,
    registered_tucker_layers,
    tuckerize,
)
from tuckerflow.nn import registry as registry_module  # noqa: E402


@pytest.fixture
def fresh_registry(monkeypatch):
    """Registrations made by a test disappear after it."""
    entries = list(registry_module._REGISTRY)
    monkeypatch.setattr(registry_module, "_REGISTRY", entries)


class PlainSubclass(nn.Linear):
    """A subclass that adds nothing to what the layer computes."""


class ScaledLinear(nn.Linear):
    """A subclass with its own forward: converting it would change the model."""

    def forward(self, x):
        return 2 * super().forward(x)


class Conv1D(nn.Module):
    """transformers' GPT-2 style ``Conv1D``: a Linear with a transposed weight."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class _Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = PlainSubclass(8, 8)
        self.scaled = ScaledLinear(8, 8)
        self.quantizable = NonDynamicallyQuantizableLinear(8, 8)
        self.bilinear = nn.Bilinear(4, 4, 4)
        self.gpt = Conv1D(8, 8)
        self.lazy = nn.LazyLinear(8)
        self.normed = nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.embed = nn.Embedding(10, 8)  # not Linear-like: never listed


def test_dispatch_is_by_isinstance_and_every_linear_left_dense_is_listed():
    model = _Zoo()
    with pytest.warns(UserWarning, match="left dense") as caught:
        tuckerize(model, rank=2)
    assert isinstance(model.plain, TuckerLinear)
    assert isinstance(model.quantizable, TuckerLinear)
    assert isinstance(model.up, TuckerConvTranspose2d)
    for name in ("scaled", "bilinear", "gpt", "lazy", "normed"):
        assert not isinstance(getattr(model, name), TuckerLinear), name
    (message,) = [str(w.message) for w in caught if "left dense" in str(w.message)]
    assert "5 Linear/Conv-like module(s) left dense" in message
    assert "scaled (ScaledLinear: ScaledLinear subclasses Linear and overrides " in (
        message
    )
    assert "bilinear (Bilinear: no Tucker layer is registered for Bilinear)" in message
    assert "gpt (Conv1D: no Tucker layer is registered for Conv1D)" in message
    assert "lazy (LazyLinear: a lazy module not initialized yet" in message
    assert "normed (ParametrizedLinear: its weight is parametrized" in message
    assert "register_tucker_layer" in message and "skip=" in message
    assert "embed" not in message


def test_skipped_modules_are_not_warned_about():
    model = _Zoo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuckerize(
            model,
            rank=2,
            skip=("scaled", "bilinear", "gpt", "lazy", "normed", "quantizable"),
        )
    # a type in skip covers subclasses: out_proj of an attention module is a Linear
    attention = nn.MultiheadAttention(8, 2)
    holder = nn.Sequential(attention)
    tuckerize(holder, rank=2, skip=(nn.Linear,))
    assert isinstance(holder[0], TuckerMultiheadAttention)
    assert type(holder[0].out_proj) is NonDynamicallyQuantizableLinear


def test_old_style_weight_norm_keeps_the_layer_dense():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated API
        nn.utils.weight_norm(model[1])
    with pytest.warns(UserWarning, match=r"\['weight_g', 'weight_v'\]"):
        tuckerize(model, rank=2)
    assert isinstance(model[0], TuckerLinear) and type(model[1]) is nn.Linear


def test_register_tucker_layer_converts_a_subclass_and_keeps_the_order(
    fresh_registry,
):
    register_tucker_layer(ScaledLinear, TuckerLinear)
    order = [dense for dense, _ in registered_tucker_layers()]
    assert order.index(ScaledLinear) < order.index(nn.Linear)
    model = nn.Sequential(ScaledLinear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuckerize(model, rank=2)
    assert isinstance(model[0], TuckerLinear)
    # re-registering replaces the entry; an unrelated type goes last
    register_tucker_layer(ScaledLinear, TuckerLinear)
    assert [d for d, _ in registered_tucker_layers()].count(ScaledLinear) == 1
    register_tucker_layer(Conv1D, TuckerConv2d)
    assert registered_tucker_layers()[-1] == (Conv1D, TuckerConv2d)


def test_register_tucker_layer_checks_its_arguments():
    with pytest.raises(TypeError, match=r"dense_type must be an nn\.Module class"):
        register_tucker_layer("Linear", TuckerLinear)
    with pytest.raises(TypeError, match="TuckerLayer subclass"):
        register_tucker_layer(nn.Bilinear, nn.Linear)


def test_the_model_itself_is_not_replaced_but_reported():
    layer = nn.Linear(8, 8)
    with pytest.warns(UserWarning) as caught:
        assert tuckerize(layer, rank=2) is layer
    assert type(layer) is nn.Linear
    messages = [str(w.message) for w in caught]
    assert "tuckerize: no Linear or Conv module to convert" in messages
    assert any("TuckerLinear.from_dense(model)" in m for m in messages)


def test_adapters_reach_subclasses_and_report_targets_they_cannot_adapt():
    with pytest.raises(ValueError, match=r"\['lazy'\] are lazy modules"):
        add_tucker_adapters(_Zoo(), [nn.Linear], verbose=False)
    model = _Zoo()
    del model.lazy
    with pytest.warns(UserWarning, match="get no adapter") as caught:
        add_tucker_adapters(model, [nn.Linear, "up"], verbose=False)
    assert isinstance(model.quantizable, TuckerLinear)
    assert model.quantizable.offset is not None
    assert isinstance(model.plain, TuckerLinear)
    assert isinstance(model.up, TuckerConvTranspose2d)
    assert type(model.scaled) is ScaledLinear
    (message,) = [str(w.message) for w in caught]
    assert "2 Linear/Conv-like module(s) left dense" in message
    for name in ("scaled (ScaledLinear", "normed (Parametrized"):
        assert name in message
    # an entry that adapts nothing is an error, with the reasons
    with pytest.raises(ValueError, match="selected but not convertible") as raised:
        add_tucker_adapters(_Zoo(), ["bilinear", "plain"], verbose=False)
    assert "no Tucker layer is registered for Bilinear" in str(raised.value)
