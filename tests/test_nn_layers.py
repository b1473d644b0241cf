"""Tucker layers compute exactly the dense layer built from the same weight."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow.nn import (  # noqa: E402
    TuckerConv1d,
    TuckerConv2d,
    TuckerConv3d,
    TuckerLinear,
)

CONVS = {
    1: (TuckerConv1d, nn.Conv1d),
    2: (TuckerConv2d, nn.Conv2d),
    3: (TuckerConv3d, nn.Conv3d),
}


@st.composite
def conv_configs(draw):
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding_kind = draw(st.sampled_from(["ints", "same", "valid"]))
    if padding_kind == "same" and any(s != 1 for s in stride):
        padding_kind = "ints"
    padding = (
        tuple(draw(st.integers(0, 2)) for _ in range(dims))
        if padding_kind == "ints"
        else padding_kind
    )
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    bias = draw(st.booleans())
    size = tuple(
        draw(st.integers(max(1, (k - 1) * d + 1), 7)) for k, d in zip(kernel, dilation)
    )
    if padding_mode != "zeros" and padding_kind != "valid":
        # reflect needs the padding to be smaller than the input
        pads = (
            padding
            if padding_kind == "ints"
            else tuple(d * (k - 1) for k, d in zip(kernel, dilation))
        )
        size = tuple(max(s, p + 1) for s, p in zip(size, pads))
    return dict(
        dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode,
        size=size,
        seed=draw(st.integers(0, 1000)),
    )


@settings(max_examples=60)
@given(config=conv_configs(), implementation=st.sampled_from(["dense", "factorized"]))
def test_conv_forward_equals_the_dense_convolution(config, implementation):
    config = dict(config)
    dims, size, seed = config.pop("dims"), config.pop("size"), config.pop("seed")
    torch.manual_seed(seed)
    tucker_cls, dense_cls = CONVS[dims]
    layer = tucker_cls(
        config["in_channels"],
        config["out_channels"],
        config["kernel_size"],
        stride=config["stride"],
        padding=config["padding"],
        dilation=config["dilation"],
        groups=config["groups"],
        bias=config["bias"],
        padding_mode=config["padding_mode"],
        implementation=implementation,
        dtype=torch.float64,
    )
    dense = dense_cls(**config, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(layer.weight)
        if config["bias"]:
            dense.bias.copy_(layer.bias)
    x = torch.randn(2, config["in_channels"], *size, dtype=torch.float64)
    expected = dense(x)
    result = layer(x)
    assert result.shape == expected.shape
    scale = expected.abs().max().item() + 1.0
    assert (result - expected).abs().max().item() <= 1e-12 * scale


@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_and_bias_applied_once(implementation, bias):
    torch.manual_seed(0)
    layer = TuckerLinear(7, 5, bias=bias, rank=3, implementation=implementation)
    x = torch.randn(4, 3, 7)
    expected = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    if bias:  # the bias shifts the output exactly once
        with torch.no_grad():
            layer.bias.add_(1.0)
        torch.testing.assert_close(layer(x), expected + 1.0, atol=1e-6, rtol=1e-5)


def test_from_dense_keeps_a_pretrained_layer_up_to_the_tolerance():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    exact = TuckerConv2d.from_dense(conv, rank=(24, 16, 3, 3))
    torch.testing.assert_close(exact.weight, conv.weight, atol=1e-5, rtol=1e-5)
    approx = TuckerConv2d.from_dense(conv, tol=0.3)
    error = (approx.weight - conv.weight).norm() / conv.weight.norm()
    assert error <= 0.3 and approx.rank[2:] == (3, 3)  # kernel modes stay full
    assert approx.rank[0] < 24 or approx.rank[1] < 16
    linear = nn.Linear(30, 20)
    layer = TuckerLinear.from_dense(linear, tol=0.2)
    assert (layer.weight - linear.weight).norm() <= 0.2 * linear.weight.norm()
    torch.testing.assert_close(layer.bias, linear.bias)


def test_factors_are_orthonormal_and_parameter_counts():
    layer = TuckerConv2d(8, 12, 3, rank=(4, 5, 3, 3))
    for factor in layer.factors:
        gram = factor.t() @ factor
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
    assert layer.parameter_count() == tf.parameter_count((12, 8, 3, 3), (4, 5, 3, 3))
    assert layer.dense_parameter_count() == 12 * 8 * 9
    assert layer.min_rank[2:] == layer.max_rank[2:] == (3, 3)  # kernel modes fixed


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"rank": (0, 2, 3, 3)}, ValueError, r"rank\[0\]=0 must lie in \[1, 12\]"),
        ({"rank": (2, 9, 3, 3)}, ValueError, r"rank\[1\]=9 must lie in \[1, 8\]"),
        ({"implementation": "fast"}, ValueError, "implementation must be one of"),
        (
            {"adaptive_modes": (0, 4)},
            ValueError,
            r"adaptive_modes must lie in \[0, 4\)",
        ),
        ({"groups": 3}, ValueError, "groups=3 must divide in_channels=8"),
        ({"padding_mode": "mirror"}, ValueError, "padding_mode must be one of"),
        ({"padding": "same", "stride": 2}, ValueError, "'same' is not supported"),
    ],
)
def test_bad_layer_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TuckerConv2d(8, 12, 3, **kwargs)


def test_weight_gradient_mode_matches_autograd_and_accumulates():
    torch.manual_seed(0)
    layer = TuckerConv2d(4, 6, 3, rank=(3, 2, 3, 3), dtype=torch.float64)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    weight = layer.weight.detach().requires_grad_(True)
    (F.conv2d(x, weight, layer.bias) ** 2).sum().backward()
    layer.gradient_source = "weight"
    (layer(x) ** 2).sum().backward()
    torch.testing.assert_close(layer.weight_gradient(), weight.grad)
    (layer(x) ** 2).sum().backward()  # a second backward accumulates
    torch.testing.assert_close(layer.weight_gradient(), 2 * weight.grad)
    assert layer.core.grad is None  # no wasted factor gradients
    layer.clear_weight_gradient()
    assert layer.weight_gradient() is None


def test_weight_gradient_mode_leaves_no_graph_behind():
    layer = TuckerLinear(6, 4, rank=2)
    layer.gradient_source = "weight"
    with torch.no_grad():
        out = layer(torch.randn(2, 6))
    assert out.grad_fn is None and layer.weight_gradient() is None
    y = layer(torch.randn(2, 6))
    assert y.requires_grad
    del y
    assert np.isfinite(layer.weight.detach().numpy()).all()


# ------------------- issue 13 item 7: fixed modes next to a size-1 channel mode
@pytest.mark.parametrize(
    "make,rank",
    [
        # the kernel mode keeps its 7 although the other ranks multiply to 5 or 4
        (lambda: TuckerConv1d(1, 16, 7, rank=(5, 1, 7)), (5, 1, 7)),
        (lambda: TuckerConv1d(1, 16, 7), (7, 1, 7)),  # default: 16 // 2 capped at 7
        (lambda: TuckerConv1d(8, 8, 7, groups=8), (4, 1, 7)),  # depthwise
        (lambda: TuckerConv2d(1, 16, 3, rank=2), (2, 1, 3, 3)),
        # no weight of shape (1, 1, 7) has a kernel rank above 1
        (lambda: TuckerConv1d(1, 1, 7), (1, 1, 1)),
        # adaptive ranks are still capped at the product of the others
        (lambda: TuckerConv1d(2, 16, 1, rank=(8, 2, 1)), (2, 2, 1)),
        (lambda: TuckerLinear(20, 30, rank=(12, 3)), (3, 3)),
    ],
)
def test_fixed_modes_keep_their_size_and_adaptive_ranks_are_capped(make, rank):
    layer = make()
    assert layer.rank == rank
    for mode, (low, high) in enumerate(zip(layer.min_rank, layer.max_rank)):
        if mode not in layer.adaptive_modes:
            assert low == high == rank[mode]
    for mode in layer.adaptive_modes:
        others = math.prod(rank) // rank[mode]
        assert rank[mode] <= others


def test_a_float_rank_is_named_in_the_error():
    with pytest.raises(TypeError, match=r"rank must be an int or one int per mode"):
        TuckerLinear(6, 5, rank=2.5)
