"""tuckerize, compression_report and Tucker adapters."""

from __future__ import annotations

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
from tuckerflow.nn.models import LeNet5  # noqa: E402


def test_tuckerize_replaces_in_place_and_keeps_the_function():
    torch.manual_seed(0)
    model = LeNet5()
    x = torch.randn(5, 1, 28, 28)
    before = model(x)
    same = tuckerize(model, tol=0.0)  # full HOSVD: exact
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
    with pytest.raises(ValueError, match="match no Linear/Conv module"):
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
