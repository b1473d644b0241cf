"""tuckerize, compression_report and Tucker adapters."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv2d,
    TuckerLayer,
    TuckerLinear,
    add_tucker_adapters,
    compression_report,
    merge_adapters,
    trainable_parameters,
    tuckerize,
)
from tuckerflow.nn.models import LeNet5, SmallVGG  # noqa: E402

DENSE_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def test_tuckerize_replaces_in_place_and_keeps_the_function():
    torch.manual_seed(0)
    model = LeNet5()
    x = torch.randn(5, 1, 28, 28)
    before = model(x)
    with pytest.warns(UserWarning, match="store more weights than the dense"):
        same = tuckerize(model, tol=0.0, cap_at_dense=False)  # full HOSVD: exact
    assert same is model
    assert all(
        isinstance(m, TuckerLayer)
        for m in (
            model.features[0],
            model.features[3],
            model.classifier[1],
            model.classifier[3],
        )
    )
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)


def test_tuckerize_skip_by_name_and_type_and_typos():
    model = tuckerize(LeNet5(), rank=4, skip=("features.0", nn.Linear))
    assert type(model.features[0]) is nn.Conv2d
    assert isinstance(model.features[3], TuckerConv2d)
    assert type(model.classifier[1]) is nn.Linear
    with pytest.raises(ValueError, match=r"skip entry 'featurez\.0' matches no module"):
        tuckerize(LeNet5(), skip=("featurez.0",))
    with pytest.raises(ValueError, match="init must be one of"):
        tuckerize(LeNet5(), init="zeros")


def test_random_init_gives_the_requested_ranks():
    model = tuckerize(LeNet5(), init="random", rank=3)
    assert model.features[3].rank == (3, 3, 5, 5)
    assert model.classifier[1].rank == (3, 3)


def test_compression_report_counts_and_prints():
    model = tuckerize(LeNet5(), rank=4, skip=(nn.Linear,))
    report = compression_report(model)
    assert [row["name"] for row in report.rows] == ["features.0", "features.3"]
    conv = model.features[3]
    assert report.rows[1]["parameters"] == 4 * 4 * 25 + 50 * 4 + 20 * 4 + 25 + 25
    assert report.dense == 500 + 25000
    assert report.compression == pytest.approx(1 - report.compressed / report.dense)
    text = str(report)
    assert "features.3" in text and f"{report.compression:.2%}" in text
    assert conv.rank == (4, 4, 5, 5)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.query = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))
        return self.head(torch.relu(self.query(h) + self.value(h)))


def test_adapters_start_at_the_base_model_and_train_only_the_delta(capsys):
    torch.manual_seed(0)
    model = _Tiny()
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 2, (16,))
    before = model(x).detach()
    base_head = model.head.weight.detach().clone()
    add_tucker_adapters(model, ["conv", "query", "value"], rank=2)
    assert "trainable params:" in capsys.readouterr().out
    torch.testing.assert_close(model(x), before)  # dW = 0 at the start
    assert isinstance(model.conv, TuckerConv2d) and model.conv.rank[2:] == (3, 3)
    trainable, total = trainable_parameters(model)
    assert total > trainable
    assert trainable == sum(
        m.core.numel() + sum(f.numel() for f in m.factors)
        for m in (model.conv, model.query, model.value)
    )
    optimizer = TDLRT(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, tol=0.01
    )
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    torch.testing.assert_close(model.head.weight, base_head)  # frozen
    adapted = model(x).detach()
    merge_adapters(model)
    assert type(model.conv) is nn.Conv2d and type(model.query) is nn.Linear
    torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=1e-5)


def test_adapter_targets_must_match():
    with pytest.raises(ValueError, match="entry 'attention' matches no module"):
        add_tucker_adapters(_Tiny(), ["attention"], verbose=False)


def test_factorized_adapter_equals_dense_adapter():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    dense = TuckerLinear(6, 4, rank=2, offset=base.weight, zero_core=False)
    fact = TuckerLinear(6, 4, rank=2, offset=base.weight, implementation="factorized")
    fact.load_state_dict(dense.state_dict())
    fact.implementation = "factorized"
    x = torch.randn(3, 6)
    torch.testing.assert_close(fact(x), dense(x))


# ---------------------------------------------------------------- skip = subtrees
class _Outer(nn.Module):
    """LeNet-5 one level down, next to a layer of its own."""

    def __init__(self):
        super().__init__()
        self.backbone = LeNet5()
        self.head = nn.Linear(10, 3)


def _convertible(model):
    return [n for n, m in model.named_modules() if type(m) in DENSE_KINDS]


def _under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize(
    "make, skip, kept",
    [
        (LeNet5, "classifier", "classifier"),  # the README's call
        (SmallVGG, "features", "features"),
        (_Outer, "classifier", "backbone.classifier"),  # dotted suffix of a container
        (_Outer, "backbone.feat*", "backbone.features"),  # glob on a container
        (_Outer, "backbone", "backbone"),
        (_Outer, LeNet5, "backbone"),  # a type: all layers of every such block
    ],
)
def test_skipping_a_container_keeps_every_layer_inside_it_dense(make, skip, kept):
    torch.manual_seed(0)
    model = make()
    names = _convertible(model)
    inside = [n for n in names if _under(n, kept)]
    assert inside and len(inside) < len(names)  # the case is not trivial
    tuckerize(model, rank=2, skip=(skip,))
    for name in names:
        module = model.get_submodule(name)
        if name in inside:
            assert type(module) in DENSE_KINDS, name
        else:
            assert isinstance(module, TuckerLayer), name


def test_skip_selects_subtrees_by_whole_name_parts_not_by_string_prefix():
    model = SmallVGG()  # features.1 is a BatchNorm, features.10 a convolution
    tuckerize(model, rank=2, skip=("features.1",))
    assert isinstance(model.features[10], TuckerConv2d)
    assert type(model.features[1]) is nn.BatchNorm2d


def test_skip_errors_leave_the_model_untouched():
    model = LeNet5()
    before = list(model.named_modules())
    with pytest.raises(TypeError, match="skip entries must be module names or types"):
        tuckerize(model, skip=(3,))
    with pytest.raises(ValueError, match=r"skip entry 'clasifier' matches no module"):
        tuckerize(model, skip=("clasifier",))
    with pytest.raises(TypeError, match="cap_at_dense must be True or False"):
        tuckerize(model, cap_at_dense="yes")
    # the linear layers reject a 4-mode rank after the convolutions accepted it
    with pytest.raises(ValueError, match="rank must have one entry per mode"):
        tuckerize(model, rank=(4, 1, 5, 5))
    assert list(model.named_modules()) == before


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.norm(self.block(x)))


def test_an_adapter_target_naming_a_container_adapts_every_layer_inside():
    torch.manual_seed(0)
    model = _Blocks()
    x = torch.randn(4, 6)
    before = model(x).detach()
    add_tucker_adapters(model, ["block"], rank=2, verbose=False)
    assert isinstance(model.block[0], TuckerLinear)
    assert isinstance(model.block[2], TuckerLinear)
    assert type(model.out) is nn.Linear
    torch.testing.assert_close(model(x), before)
    # overlapping entries are fine: each selects something
    add_tucker_adapters(_Blocks(), ["out", "o*"], verbose=False)


def test_adapter_targets_that_adapt_nothing_are_errors_and_change_nothing():
    model = _Blocks()
    before = list(model.named_modules())
    with pytest.raises(ValueError, match=r"\['norm'\] select no Linear/Conv module"):
        add_tucker_adapters(model, ["out", "norm"], verbose=False)
    with pytest.raises(ValueError, match="entry 'blok' matches no module"):
        add_tucker_adapters(model, ["out", "blok"], verbose=False)
    with pytest.raises(TypeError, match="target_modules entries must be"):
        add_tucker_adapters(model, [None], verbose=False)
    # the third target rejects the rank after the first two accepted it
    with pytest.raises(ValueError, match="rank must have one entry per mode"):
        add_tucker_adapters(
            nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Conv2d(4, 4, 3)),
            [nn.Linear, nn.Conv2d],
            rank=(2, 2),
            verbose=False,
        )
    assert list(model.named_modules()) == before
    assert all(p.requires_grad for p in model.parameters())


def test_adapter_errors_leave_even_the_accepted_layers_untouched():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="rank must have one entry per mode"):
        add_tucker_adapters(model, ["0", "1"], rank=(2, 2), verbose=False)
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Conv2d
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------- never larger than dense
def _np_hosvd_error(weight, rank):
    """Relative error of the truncated HOSVD at ``rank``, in float64 NumPy."""
    w = np.asarray(weight, dtype=np.float64)
    approx = w
    for mode, r in enumerate(rank):
        unfolding = np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)
        basis = np.linalg.svd(unfolding, full_matrices=False)[0][:, :r]
        projected = np.tensordot(basis @ basis.T, approx, axes=([1], [mode]))
        approx = np.moveaxis(projected, 0, mode)
    return np.linalg.norm(w - approx) / np.linalg.norm(w)


def _stored(shape, rank):
    return math.prod(rank) + sum(n * r for n, r in zip(shape, rank))


def _error(layer, weight):
    with torch.no_grad():
        return float((layer.weight - weight).norm() / weight.norm())


def _dense_layers(model):
    return {n: m for n, m in model.named_modules() if type(m) in DENSE_KINDS}


def test_the_readme_call_never_stores_more_than_the_dense_model():
    torch.manual_seed(0)
    model = LeNet5()
    dense = {n: m.weight.detach().clone() for n, m in _dense_layers(model).items()}
    uncapped = {
        n: (TuckerConv2d if m.weight.dim() == 4 else TuckerLinear).from_dense(
            m, tol=0.1
        )
        for n, m in _dense_layers(model).items()
        if not n.startswith("classifier")
    }
    # without the cap both convolutions would grow
    too_big = [n for n, t in uncapped.items() if t.parameter_count() > dense[n].numel()]
    assert too_big == ["features.0", "features.3"]
    with pytest.warns(UserWarning, match="capped the ranks of 2 layer") as record:
        tuckerize(model, tol=0.1, skip=("classifier",))
    report = compression_report(model)
    assert [row["name"] for row in report.rows] == ["features.0", "features.3"]
    message = str(record[0].message)
    for row in report.rows:
        name, rank = row["name"], row["rank"]
        assert row["parameters"] == _stored(row["shape"], rank)
        assert row["parameters"] <= row["dense_parameters"] == dense[name].numel()
        assert rank[2:] == (5, 5)  # the kernel modes stay full
        before = uncapped[name]
        assert f"{name}: rank {before.rank} -> {rank}" in message
        assert f"{before.parameter_count():,} -> {row['parameters']:,}" in message
        # the capped layer is the truncated HOSVD of the dense weight at its ranks
        layer = model.get_submodule(name)
        error = _error(layer, dense[name])
        expected = _np_hosvd_error(dense[name].numpy(), rank)
        assert error == pytest.approx(expected, rel=1e-4)
        assert f"relative error {_error(before, dense[name]):.3g} -> " in message
        assert f"-> {error:.3g}" in message
    assert report.compressed <= report.dense and "no compression" not in str(report)


def test_the_cap_keeps_the_ranks_of_least_hosvd_error():
    # exhaustive search over every pair of channel ranks that fits the dense size
    torch.manual_seed(0)
    model = LeNet5()
    weights = {
        n: m.weight.detach().numpy().copy() for n, m in _dense_layers(model).items()
    }
    with pytest.warns(UserWarning, match="capped the ranks"):
        tuckerize(model, tol=0.1)
    for name in ("features.0", "features.3"):
        w = weights[name]
        candidates = [
            (a, b, *w.shape[2:])
            for a in range(1, w.shape[0] + 1)
            for b in range(1, w.shape[1] + 1)
            if _stored(w.shape, (a, b, *w.shape[2:])) <= w.size
        ]
        best = min(_np_hosvd_error(w, r) for r in candidates)
        got = _np_hosvd_error(w, model.get_submodule(name).rank)
        assert got <= best * (1 + 1e-6), (name, got, best)
    for name in ("classifier.1", "classifier.3"):
        # a matrix: equal ranks (Eckart-Young), the largest that fits
        r0, r1 = model.get_submodule(name).rank
        shape = weights[name].shape
        assert r0 == r1
        assert _stored(shape, (r0, r0)) <= weights[name].size
        assert _stored(shape, (r0 + 1, r0 + 1)) > weights[name].size


@pytest.mark.parametrize(
    "how",
    [{"tol": 0.1}, {"rank": 16}, {}, {"budget": 10**7}, {"tol": 0.0, "init": "random"}],
)
def test_every_way_of_choosing_ranks_is_capped_at_the_dense_size(how):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = tuckerize(LeNet5(), **how)
    rows = compression_report(model).rows
    assert len(rows) == 4
    for row in rows:
        assert row["parameters"] <= row["dense_parameters"], row


def test_opting_out_keeps_the_old_ranks_and_warns_with_the_numbers():
    torch.manual_seed(0)
    model = LeNet5()
    reference = {
        n: (TuckerConv2d if m.weight.dim() == 4 else TuckerLinear).from_dense(
            m, tol=0.1
        )
        for n, m in _dense_layers(model).items()
    }
    with pytest.warns(UserWarning, match="store more weights than the dense") as record:
        tuckerize(model, tol=0.1, cap_at_dense=False)
    assert len(record) == 1
    message = str(record[0].message)
    report = compression_report(model)
    for row in report.rows:
        ref = reference[row["name"]]
        layer = model.get_submodule(row["name"])
        assert layer.rank == ref.rank
        torch.testing.assert_close(layer.weight, ref.weight)
        if ref.parameter_count() > ref.dense_parameter_count():
            assert (
                f"{row['name']}: rank {ref.rank} stores {ref.parameter_count():,} "
                f"weights, the dense weight {ref.dense_parameter_count():,}"
            ) in message
    total = sum(r.parameter_count() for r in reference.values())
    assert report.compressed == total > report.dense
    text = str(report)
    assert report.compression < 0
    assert f"no compression: {total / report.dense:.2f} times the dense" in text
    assert f"{-report.compression:.2%} more" in text
    for name, ref in reference.items():
        count, dense = ref.parameter_count(), ref.dense_parameter_count()
        assert (f"{name} ({count:,} > {dense:,})" in text) == (count > dense)


def test_a_layer_too_thin_to_compress_is_converted_and_reported():
    model = nn.Sequential(nn.Linear(1, 8), nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="1 Tucker layer") as record:
        tuckerize(model, rank=1)
    smallest = _stored((8, 1), (1, 1))
    assert smallest > 8
    assert model[0].rank == (1, 1)
    message = str(record[0].message)
    assert f"0: rank (1, 1) stores {smallest:,} weights, the dense weight 8" in message
    assert "no ranks fit" in message and "skip=" in message
    assert "\n  1: " not in message  # the 8 x 8 layer fits


def test_no_warning_when_nothing_exceeds_the_dense_size():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tuckerize(LeNet5(), rank=4)
    report = compression_report(model)
    assert all(r["parameters"] <= r["dense_parameters"] for r in report.rows)
    assert "store more weights" not in str(report)


def test_the_default_half_ranks_are_capped_quietly():
    # no rank asked for: the cap is part of the default, not a surprise to report
    torch.manual_seed(0)
    model = LeNet5()
    first = model.features[0]
    half = TuckerConv2d.from_dense(first)
    assert half.parameter_count() > half.dense_parameter_count()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuckerize(model, init="random")
    layer = model.get_submodule("features.0")
    assert layer.parameter_count() <= layer.dense_parameter_count()
    assert layer.rank[0] < half.rank[0]


def test_parameter_counts_do_not_include_the_tdlrt_gradient_carrier():
    # TDLRT gives dense-forward layers a zero weight_delta of the dense weight's shape
    # (one stored element): the reported counts must not change when it appears
    from tuckerflow.nn import TDLRT, add_tucker_adapters, trainable_parameters

    torch.manual_seed(0)
    model = tuckerize(LeNet5(), rank=4)
    before = compression_report(model).total_parameters
    TDLRT(model, lr=0.1)
    assert any(
        m.weight_delta is not None
        for m in model.modules()
        if hasattr(m, "weight_delta")
    )
    assert compression_report(model).total_parameters == before
    adapted = add_tucker_adapters(
        nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), ["0"], rank=2, verbose=False
    )
    counts = trainable_parameters(adapted)
    TDLRT(adapted, lr=0.1)
    assert trainable_parameters(adapted) == counts
