"""``TDLRT(basis_update_every=k)`` on LeNet-5 / Fashion-MNIST: update time vs accuracy.

The schedule of Schotthöfer et al.'s RobustDLRT code: the bases of every Tucker layer
are augmented every ``k`` steps, the core takes Galerkin steps in the augmented bases
in between, and the layer is truncated every ``k``-th step (``k = 1``: the TDLRT step
in every step). LeNet-5 tuckerized from a random start (half ranks, dense-weight
forward), SGD momentum 0.9, lr 0.05, batch 128, truncation tolerance 0.1, one seed;
the training set is subsampled (``--steps`` batches, a multiple of 8 so every ``k``
ends on a truncation) to keep the run short, and the test accuracy is that of the full
10,000-image test set after this short training.

The ``k`` values train side by side, one model each, on the same batches in the same
order: each step runs every ``k`` once, so a busy machine slows them alike. Times are
wall-clock on the CPU with the threads PyTorch was given (run with
``OMP_NUM_THREADS=1`` on a shared machine): ``update_ms`` is the mean of
``optimizer.step()`` over all steps (what a ``k``-cycle costs per step), with its
median and the means by position in the cycle: the first step, which augments
(``augment_ms``; for ``k = 1`` it also truncates), the Galerkin-only steps
(``galerkin_ms``) and the last, a Galerkin step and the truncation (``truncate_ms``);
``step_ms`` adds forward and backward.
``stored`` is the number of Tucker weights after the last step (ranks as truncated).

Run: ``OMP_NUM_THREADS=1 python benchmarks/basis_update_every.py [--quick]``; writes
``benchmarks/results/basis_update_every.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from _common import save, table

from tuckerflow.datasets import load_fashion_mnist
from tuckerflow.nn import TDLRT, TuckerLayer, compression_report, tuckerize
from tuckerflow.nn.models import LeNet5

EVERY = (1, 2, 4, 8)
BATCH = 128
OPTIONS = {"lr": 0.05, "momentum": 0.9, "tol": 0.1}


def _build(seed: int, every: int):
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # features.0 stores 501 weights for 500 dense
        warnings.simplefilter("ignore", UserWarning)
        model = tuckerize(LeNet5(), init="random", cap_at_dense=False)
    return model, TDLRT(model, basis_update_every=every, **OPTIONS)


def _accuracy(model, images, labels) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 1000):
            logits = model(images[start : start + 1000])
            correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    model.train()
    return correct / len(images)


def _ranks(model) -> dict[str, list[int]]:
    return {
        name: list(module.rank)
        for name, module in model.named_modules()
        if isinstance(module, TuckerLayer)
    }


def run(steps: int, seed: int) -> dict:
    data = load_fashion_mnist()
    train_x, train_y = (torch.from_numpy(a) for a in data["train"])
    test_x, test_y = (torch.from_numpy(a) for a in data["test"])
    # a seeded subsample, one pass (a set smaller than steps * BATCH is repeated)
    order = np.resize(
        np.random.default_rng(seed).permutation(len(train_x)), steps * BATCH
    )
    runs = {every: _build(seed, every) for every in EVERY}
    times = {every: {"update": [], "forward_backward": []} for every in EVERY}
    losses = {every: [] for every in EVERY}
    for step in range(steps):
        index = torch.from_numpy(order[step * BATCH : (step + 1) * BATCH])
        x, y = train_x[index], train_y[index]
        for every, (model, optimizer) in runs.items():
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            middle = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            times[every]["forward_backward"].append(middle - start)
            times[every]["update"].append(end - middle)
            losses[every].append(float(loss.detach()))
    rows = []
    for every, (model, _) in runs.items():
        update = np.array(times[every]["update"]) * 1e3
        forward_backward = np.array(times[every]["forward_backward"]) * 1e3
        position = np.arange(steps) % every
        first, last = position == 0, position == every - 1
        middle = ~first & ~last
        rows.append(
            {
                "k": every,
                "update_ms": float(update.mean()),
                "update_median_ms": float(np.median(update)),
                "augment_ms": float(update[first].mean()),
                "galerkin_ms": float(update[middle].mean()) if middle.any() else None,
                "truncate_ms": None if every == 1 else float(update[last].mean()),
                "step_ms": float((update + forward_backward).mean()),
                "final_loss": statistics.fmean(losses[every][-20:]),
                "test_accuracy": _accuracy(model, test_x, test_y),
                "stored": compression_report(model).compressed,
                "ranks": _ranks(model),
            }
        )
    base = rows[0]
    for row in rows:
        row["update_speedup"] = base["update_ms"] / row["update_ms"]
        row["step_speedup"] = base["step_ms"] / row["step_ms"]
    return {
        "description": __doc__.split("\n\n")[0],
        "protocol": (
            f"LeNet-5 tuckerized from a random start (half ranks), TDLRT with SGD "
            f"momentum 0.9, lr 0.05, tol 0.1, batch {BATCH}, {steps} steps on "
            f"{steps * BATCH} Fashion-MNIST training images (a seeded subsample, "
            f"one pass), test accuracy on all {len(test_x)} test images; one seed "
            f"({seed}); k values trained side by side on the same batches, "
            f"{torch.get_num_threads()} torch thread(s), wall-clock times."
        ),
        "settings": {
            "model": "LeNet5, tuckerize(init='random', cap_at_dense=False)",
            "optimizer": {"name": "TDLRT", **OPTIONS},
            "batch": BATCH,
            "steps": steps,
            "training_images": steps * BATCH,
            "test_images": len(test_x),
            "seed": seed,
            "torch_threads": torch.get_num_threads(),
        },
        "rows": rows,
    }


COLUMNS = [
    ("k", "k", "d"),
    ("update_ms", "update ms", ".1f"),
    ("update_median_ms", "median", ".1f"),
    ("augment_ms", "augment ms", ".1f"),
    ("galerkin_ms", "galerkin ms", ".1f"),
    ("truncate_ms", "truncate ms", ".1f"),
    ("step_ms", "step ms", ".1f"),
    ("update_speedup", "update x", ".2f"),
    ("step_speedup", "step x", ".2f"),
    ("final_loss", "loss", ".3f"),
    ("test_accuracy", "test acc", ".4f"),
    ("stored", "stored", "d"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 steps")
    parser.add_argument("--steps", type=int, default=304, help="multiple of 8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result folder")
    args = parser.parse_args()
    steps = 8 if args.quick else args.steps
    if steps % max(EVERY):
        parser.error(f"--steps must be a multiple of {max(EVERY)}")
    result = run(steps, args.seed)
    print(table(result["rows"], COLUMNS))
    name = "basis_update_every_quick" if args.quick else "basis_update_every"
    print("wrote", save(name, result, args.out))


if __name__ == "__main__":
    main()
