"""Tucker transposed convolutions against ``nn.ConvTranspose1d/2d/3d`` (issue 13.12).

At full rank a Tucker layer is the dense layer with the same weight, so outputs and
input gradients agree to rounding (float64: ~1e-15 measured, 1e-12 asserted), with
groups, stride, padding, output_padding, dilation and ``output_size``; one TDLRT step
at full rank with ``tol=0`` is the dense SGD step ``W - lr G``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv2d,
    TuckerConvTranspose1d,
    TuckerConvTranspose2d,
    TuckerConvTranspose3d,
    add_tucker_adapters,
    compression_report,
    merge_adapters,
    tuckerize,
)

D = torch.float64
PAIRS = {
    1: (TuckerConvTranspose1d, nn.ConvTranspose1d),
    2: (TuckerConvTranspose2d, nn.ConvTranspose2d),
    3: (TuckerConvTranspose3d, nn.ConvTranspose3d),
}
# (in, out, kernel, stride, padding, output_padding, groups, dilation, bias)
CONFIGS = [
    (4, 6, 3, 2, 1, 1, 2, 2, True),
    (3, 5, 2, 1, 0, 0, 1, 1, False),
    (6, 4, 3, 3, 2, 2, 2, 1, True),
]


def _dense(dims, config, dtype=D, seed=0):
    torch.manual_seed(seed)
    cin, cout, k, s, p, op, g, d, bias = config
    return PAIRS[dims][1](
        cin,
        cout,
        k,
        stride=s,
        padding=p,
        output_padding=op,
        groups=g,
        dilation=d,
        bias=bias,
        dtype=dtype,
    )


def _full(dense, **options):
    cls = PAIRS[dense.weight.dim() - 2][0]
    return cls.from_dense(dense, rank=tuple(dense.weight.shape), **options)


def _input(dims, channels, dtype=D, size=4, batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *([size] * dims))
    return torch.randn(shape, generator=generator, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("implementation", ["dense", "factorized"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_full_rank_equals_the_dense_transposed_convolution(
    dims, config, implementation
):
    dense = _dense(dims, config)
    tucker = _full(dense, implementation=implementation)
    assert tucker.rank == tucker.weight_shape == tuple(dense.weight.shape)
    x = _input(dims, config[0])
    expected = dense(x)
    got = tucker(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    probe = torch.randn_like(expected)
    (grad_dense,) = torch.autograd.grad((expected * probe).sum(), x)
    (grad_tucker,) = torch.autograd.grad((got * probe).sum(), x)
    torch.testing.assert_close(grad_tucker, grad_dense, rtol=0, atol=1e-12)
    # output_size picks the output padding, as for the dense layer
    stride = config[3]
    for extra in range(stride):
        size = [n - config[5] + extra for n in expected.shape[2:]]
        torch.testing.assert_close(
            tucker(x, output_size=size), dense(x, output_size=size), rtol=0, atol=1e-12
        )
    # unbatched input
    torch.testing.assert_close(tucker(x[0]), dense(x[0]), rtol=0, atol=1e-12)


def test_float32_and_low_rank_factorized_agree_with_the_dense_path():
    dense = _dense(2, CONFIGS[0], dtype=torch.float32)
    x = _input(2, 4, dtype=torch.float32)
    torch.testing.assert_close(_full(dense)(x), dense(x), rtol=1e-5, atol=1e-5)
    low = TuckerConvTranspose2d.from_dense(dense, rank=2)
    fast = TuckerConvTranspose2d.from_dense(dense, rank=2, implementation="factorized")
    assert low.rank == (2, 2, 3, 3)  # channel modes adapt, kernel modes full
    torch.testing.assert_close(fast(x), low(x), rtol=1e-5, atol=1e-5)


def test_from_dense_round_trip_and_checkpoint():
    dense = _dense(2, CONFIGS[0])
    tucker = _full(dense)
    torch.testing.assert_close(tucker.weight, dense.weight, rtol=0, atol=1e-13)
    torch.testing.assert_close(tucker.bias, dense.bias, rtol=0, atol=0)
    # a tolerance bounds the relative error of the initial weight
    coarse = TuckerConvTranspose2d.from_dense(dense, tol=0.3)
    error = (coarse.weight - dense.weight).norm() / dense.weight.norm()
    assert error <= 0.3 and coarse.rank[2:] == (3, 3)
    # back to a dense layer (merge_adapters' path)
    from tuckerflow.nn.layers import build_like

    back = build_like(nn.ConvTranspose2d, tucker, dtype=D)
    with torch.no_grad():
        back.weight.copy_(tucker.weight)
    x = _input(2, 4)
    torch.testing.assert_close(back(x), dense(x), rtol=0, atol=1e-12)
    assert (back.output_padding, back.dilation, back.groups) == ((1, 1), (2, 2), 2)
    # state_dict into a layer of another rank
    other = TuckerConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2, dtype=D
    )
    other.load_state_dict(coarse.state_dict())
    assert other.rank == coarse.rank
    torch.testing.assert_close(other(x), coarse(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(padding_mode="reflect"), ValueError, "padding_mode='zeros'"),
        (dict(stride=2, output_padding=2), ValueError, "output_padding"),
        (dict(padding="same"), ValueError, "integer padding"),
        (dict(groups=3), ValueError, "groups=3"),
        (dict(implementation="fast"), ValueError, "implementation"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TuckerConvTranspose2d(4, 6, 3, **kwargs)


def test_from_dense_needs_the_matching_transposed_convolution():
    with pytest.raises(TypeError, match="needs a ConvTranspose2d"):
        TuckerConvTranspose2d.from_dense(nn.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match="needs a ConvTranspose1d"):
        TuckerConvTranspose1d.from_dense(nn.ConvTranspose2d(2, 2, 3))
    layer = TuckerConvTranspose2d(2, 2, 3, stride=2)
    with pytest.raises(ValueError, match="valid sizes range"):
        layer(torch.randn(1, 2, 4, 4), output_size=(20, 20))


class _Decoder(nn.Module):
    """A small UNet-like decoder: upsampling by transposed convolutions, a skip
    connection concatenated, convolutions in between."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.conv1 = nn.Conv2d(12, 6, 3, padding=1)
        self.up2 = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, bottom, skip):
        h = torch.relu(self.up1(bottom))
        h = torch.relu(self.conv1(torch.cat([h, skip], dim=1)))
        return self.head(self.up2(h))


def test_tuckerize_converts_a_unet_decoder_and_keeps_its_function():
    torch.manual_seed(0)
    model = _Decoder().to(D)
    bottom, skip = torch.randn(2, 8, 3, 3, dtype=D), torch.randn(2, 6, 6, 6, dtype=D)
    before = model(bottom, skip)
    with pytest.warns(UserWarning, match="store more weights than the dense"):
        tuckerize(model, tol=0.0, cap_at_dense=False)
    assert isinstance(model.up1, TuckerConvTranspose2d)
    assert isinstance(model.up2, TuckerConvTranspose2d)
    assert isinstance(model.conv1, TuckerConv2d)
    assert model.up2.output_padding == (1, 1)
    torch.testing.assert_close(model(bottom, skip), before, rtol=0, atol=1e-12)
    rows = {row["name"]: row for row in compression_report(model).rows}
    assert rows["up1"]["type"] == "TuckerConvTranspose2d"
    assert rows["up2"]["shape"] == (6, 4, 3, 3)
    # with compression the default ranks apply: the channel modes shrink
    small = tuckerize(_Decoder(), rank=2, skip=("head",))
    assert small.up1.rank == (2, 2, 2, 2)


@pytest.mark.parametrize("implementation", ["dense", "factorized"])
def test_one_tdlrt_step_at_full_rank_is_the_dense_sgd_step(implementation):
    dense = _dense(2, CONFIGS[0])
    full = tuple(dense.weight.shape)
    tucker = _full(dense, min_rank=full, max_rank=full, implementation=implementation)
    start = dense.weight.detach().clone()
    x = _input(2, 4).detach()
    target = torch.randn_like(dense(x))
    runs = [
        (dense, torch.optim.SGD(dense.parameters(), lr=0.1)),
        (tucker, TDLRT(tucker.parameters(), lr=0.1, tol=0.0)),
    ]
    for step in range(2):
        for model, optimizer in runs:
            optimizer.zero_grad()
            F.mse_loss(model(x + step), target).backward()
            optimizer.step()
    moved = (dense.weight - start).norm()
    assert moved > 1e-3 * start.norm()
    error = (tucker.weight.detach() - dense.weight.detach()).norm()
    assert error <= 1e-12 * dense.weight.norm(), float(error)
    torch.testing.assert_close(tucker.bias, dense.bias, rtol=0, atol=1e-14)


def test_adapters_on_a_transposed_convolution_start_at_the_base_and_merge_back():
    torch.manual_seed(0)
    model = _Decoder().to(D)
    bottom, skip = torch.randn(2, 8, 3, 3, dtype=D), torch.randn(2, 6, 6, 6, dtype=D)
    before = model(bottom, skip).detach()
    add_tucker_adapters(model, ["up1", "up2"], rank=2, verbose=False)
    assert isinstance(model.up2, TuckerConvTranspose2d)
    assert model.up2.offset is not None and model.up2.rank == (2, 2, 3, 3)
    torch.testing.assert_close(model(bottom, skip), before, rtol=0, atol=1e-12)
    optimizer = TDLRT(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, tol=0.01
    )
    for _ in range(3):
        optimizer.zero_grad()
        model(bottom, skip).pow(2).mean().backward()
        optimizer.step()
    adapted = model(bottom, skip).detach()
    assert (adapted - before).abs().max() > 1e-6
    merge_adapters(model)
    assert type(model.up1) is nn.ConvTranspose2d and type(model.up2) is (
        nn.ConvTranspose2d
    )
    assert model.up2.output_padding == (1, 1)
    torch.testing.assert_close(model(bottom, skip), adapted, rtol=0, atol=1e-12)
