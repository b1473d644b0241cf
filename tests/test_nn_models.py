"""Reference networks of tuckerflow.nn.models: shapes and parameter counts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.nn import TDLRT, tuckerize  # noqa: E402
from tuckerflow.nn.models import ResNet  # noqa: E402


def test_resnet20_shapes_and_parameter_count():
    model = ResNet()
    # He et al. 2016, Table 6: ResNet-20 (option A shortcuts) has 0.27M parameters
    assert sum(p.numel() for p in model.parameters()) == 269_722
    weighted = [
        m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert len(weighted) == 20
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_fashion_mnist_input_and_width():
    model = ResNet(num_classes=7, in_channels=1, blocks=1, width=8)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)


def test_resnet_trains_with_tdlrt():
    torch.manual_seed(0)
    model = tuckerize(ResNet(blocks=1, width=8), init="random")
    optimizer = TDLRT(model, lr=0.05, momentum=0.9, tol=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert torch.isfinite(model(x)).all()
